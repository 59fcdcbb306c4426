"""The loss contract shared by every loss: a summed value and the weight it covers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

# What a loss expects to receive, by name:
#   "index":      outputs (N, C) logits, targets (N,) int64 class indices (ignore_index allowed)
#   "binary":     outputs (N,) logits,   targets (N,) float in {0, 1}
#   "multilabel": outputs (N, L) logits, targets (N, L) float in {0, 1}
#   "real":       outputs (N,) or (N, K) real values, targets of the same shape, float
#   "span":       outputs (N, T) logits over the positions of a sequence, those that cannot be the target already
#                 at the most negative float; targets (N,) int64 positions (question answering's start and end).
#                 Class weights and label smoothing do not apply (there are no classes; smoothing would put mass
#                 on the excluded positions): validate.py refuses them.
TARGET_KINDS = ("index", "binary", "multilabel", "real", "span")


@dataclass
class LossValue:
    """A loss summed over the items it counts, and how much those items weigh.

    ``total / weight`` equals the value torch's ``reduction="mean"`` would report; keeping both lets
    the loop normalise exactly across gradient-accumulation micro-batches.
    """

    total: Tensor  # () float
    weight: Tensor  # () float, > 0 when any item counted

    @property
    def mean(self) -> Tensor:
        """The mean loss over counted items (0 when nothing was counted)."""
        return self.total / self.weight.clamp_min(torch.finfo(self.total.dtype).tiny)


class Loss(Protocol):
    """Any callable turning model outputs and targets into a LossValue."""

    def __call__(self, outputs: Tensor, targets: Tensor) -> LossValue: ...


@dataclass
class LossContext:
    """What a loss may need from the data to build itself (e.g. ``auto`` class weights)."""

    num_outputs: int  # C classes, L labels, or K regression targets
    # "index": (C,) training examples per class; "binary": (2,) [n_negative, n_positive];
    # "multilabel": (L,) positives per label, with num_examples the number of rows.
    label_counts: Tensor | None = None
    num_examples: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As JSON (a checkpoint's task.json keeps it, so `auto` weights are the same at eval time)."""
        counts = None if self.label_counts is None else [int(c) for c in self.label_counts.tolist()]
        return {"num_outputs": self.num_outputs, "label_counts": counts, "num_examples": self.num_examples}

    @staticmethod
    def from_json(data: dict[str, Any]) -> LossContext:
        """The inverse of to_json."""
        counts = data.get("label_counts")
        return LossContext(num_outputs=int(data.get("num_outputs", 1)),
                           label_counts=None if counts is None else torch.tensor(counts),
                           num_examples=data.get("num_examples"))


@dataclass(frozen=True)
class LossSpec:
    """One entry of the loss table: its config schema, its builder, the targets it accepts."""

    schema: type
    build: Callable[[object, LossContext], Loss]
    targets: tuple[str, ...]
    summary: str
