"""Cross-entropy over classes, with label smoothing, class weights and ignore_index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext, LossValue


@dataclass
class CrossEntropyConfig:
    """Settings of the ``ce`` loss."""

    name: str = "ce"  # the loss table key; selects this schema
    label_smoothing: float = 0.0  # in [0, 1): mass spread uniformly over all classes
    class_weights: Any = None  # None, "auto" (balanced from training counts), or a list of C floats
    ignore_index: int = -100  # targets equal to this value count for nothing


class CrossEntropyLoss(nn.Module):
    """Summed cross-entropy and the (class-weighted) number of counted targets."""

    def __init__(self, class_weights: Tensor | None, label_smoothing: float, ignore_index: int) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, outputs: Tensor, targets: Tensor) -> LossValue:
        """outputs (N, C) logits, targets (N,) class indices; extra trailing dims (N, C, d...) also work."""
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        w = None if self.class_weights is None else self.class_weights.to(outputs)  # (C,)
        total = F.cross_entropy(
            outputs, targets, weight=w, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, reduction="sum",
        )
        # torch's mean divides both the NLL and the smoothing term by sum_i w[y_i] over kept items.
        return LossValue(total, counted_weight(targets, self.ignore_index, w, outputs.dtype))


def counted_weight(targets: Tensor, ignore_index: int, weights: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The denominator of torch's weighted mean: sum of w[y_i] over non-ignored targets (count if no w)."""
    keep = targets != ignore_index  # (N,)
    if weights is None:
        return keep.sum().to(dtype)
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # ignored targets may be out of range
    return torch.where(keep, weights[safe], weights.new_zeros(())).sum()


def build_cross_entropy(cfg: CrossEntropyConfig, ctx: LossContext) -> CrossEntropyLoss:
    """Check the ``ce`` settings against the task and build the loss."""
    smoothing = float(cfg.label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise TformerError(
            f"loss.label_smoothing is {smoothing} but must be in [0, 1)",
            hint="typical values are 0.0 (off) to 0.1",
        )
    weights = resolve_class_weights(cfg.class_weights, ctx, "loss.class_weights")
    return CrossEntropyLoss(weights, smoothing, int(cfg.ignore_index))


def resolve_class_weights(value: Any, ctx: LossContext, field: str) -> Tensor | None:
    """Turn None, "auto" or a list of C floats into a (C,) float32 tensor (or None)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise TformerError(
                f'{field} is "{value}"; use null, "auto" or a list of {ctx.num_outputs} numbers'
            )
        return balanced_weights(class_counts(ctx, field))
    weights = float_list(value, field)
    if len(weights) != ctx.num_outputs:
        raise TformerError(
            f"{field} has {len(weights)} values but the task has {ctx.num_outputs} classes",
            hint=f'give one weight per class, or use {field}="auto"',
        )
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise TformerError(f"{field} must be >= 0 with at least one value > 0; got {weights}")
    return torch.tensor(weights, dtype=torch.float32)


def class_counts(ctx: LossContext, field: str) -> Tensor:
    """The (C,) training examples per class that "auto" needs, checked against the task."""
    if ctx.label_counts is None:
        raise TformerError(
            f'{field}="auto" needs the training label counts, but none were given for this task',
            hint=f"give {field} as a list of {ctx.num_outputs} numbers instead",
        )
    counts = ctx.label_counts.detach().to("cpu", torch.float64).flatten()  # (C,)
    if counts.numel() != ctx.num_outputs or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise TformerError(
            f'{field}="auto": label counts {counts.tolist()} do not fit a task with {ctx.num_outputs} classes'
        )
    return counts


def balanced_weights(counts: Tensor) -> Tensor:
    """sklearn's "balanced" weights w_c = N / (C * n_c); a class never seen in training gets 0.0.

    A zero-count class has no finite balanced weight; 0.0 means any such target met later (e.g. in
    validation) counts for nothing, neither in the loss nor in its weight.
    """
    n, c = counts.sum(), counts.numel()  # (), int
    weights = torch.where(counts > 0, n / (c * counts.clamp_min(1.0)), torch.zeros_like(counts))  # (C,)
    return weights.to(torch.float32)


def float_list(value: Any, field: str) -> list[float]:
    """A list (or ListConfig, tuple) of finite numbers, or a TformerError naming the field."""
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise TformerError(f"{field} must be a list of numbers; got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise TformerError(f"{field} must hold finite numbers; got {numbers}")
    return numbers
