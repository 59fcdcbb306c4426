"""Single-label classification: C logits (or one logit with a binary loss), accuracy/F1/MCC."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import ClassificationMetrics
from transformer_cli.model import SequenceModel
from transformer_cli.tasks.common import (
    Rows,
    encode_rows,
    one_per_row,
    Where,
    check_label_set,
    is_missing,
    label_key,
    odd_labels,
    sequence_forward,
    sequence_model,
    sorted_labels,
    top_k_records,
    unknown_label,
)
from transformer_cli.tasks.protocol import Readout

log = logging.getLogger(__name__)

# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "accuracy": "max", "macro_f1": "max", "mcc": "max"}
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"labels": list[str]}


@dataclass
class ClassifyConfig:
    """Settings of the classification task."""

    name: str = "classify"
    pooling: str = "cls"  # cls (first token) | mean (over real tokens)
    head_dropout: float = 0.1


class ClassifyTask:
    """Maps label names to class indices, builds the head, turns logits into predictions."""

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.loss_kind = loss_kind  # "index" (C logits) or "binary" (one logit)
        self.labels: list[str] = list(state["labels"])
        self.index = {name: i for i, name in enumerate(self.labels)}
        if loss_kind == "binary" and len(self.labels) != 2:
            raise TformerError(
                f"a binary loss needs exactly 2 classes, the data has {len(self.labels)}",
                hint="use loss=ce or loss=focal for more classes, or task=multilabel",
            )

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """The label set: data.labels if given, else every distinct training label, sorted (warning of labels
        that look like mistakes: each becomes a class of its own)."""
        labels = list(fixed) if fixed else sorted_labels({label_key(v) for v in values if not is_missing(v)})
        odd = {} if fixed else odd_labels(values)
        if odd:
            log.warning("training labels that look like mistakes (%s): %s; each is a class of its own. Fix those "
                        "rows, or list the labels in data.labels=[...] to make any other label an error", source,
                        "; ".join(f"{name!r} ({why})" for name, why in odd.items()))
        return {"labels": check_label_set(labels, source)}

    @property
    def num_outputs(self) -> int:
        """Width of the head: one logit for a binary loss, else one per class."""
        return 1 if self.loss_kind == "binary" else len(self.labels)

    def build_model(self, model_cfg: Any, vocab_size: int) -> SequenceModel:
        """The encoder and a classification head."""
        return sequence_model(model_cfg, vocab_size, self.num_outputs, self.cfg, squeeze=self.loss_kind == "binary")

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """One input per row and its target (see encode_targets)."""
        return encode_rows(rows, tokenizer, labelled, self.encode_targets)

    def encode_targets(self, values: Sequence[Any], where: Where) -> Tensor:
        """Label values -> (N,) int64 class indices; an unknown or missing label is an error."""
        out = torch.empty(len(values), dtype=torch.int64)
        for i, v in enumerate(values):
            idx = None if is_missing(v) else self.index.get(label_key(v))
            if idx is None:
                raise unknown_label(v, where, i, self.labels)
            out[i] = idx
        return out

    def loss_context(self, targets: Tensor) -> LossContext:
        """Training label counts, for `auto` class weights or pos_weight."""
        counts = torch.bincount(targets, minlength=len(self.labels))
        return LossContext(num_outputs=self.num_outputs, label_counts=counts, num_examples=len(targets))

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """(B, C) logits, or (B,) with a binary loss."""
        return sequence_forward(model, batch)

    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """What the loss sees: (B, C) logits and indices, or (B,) logits and 0/1 floats."""
        if self.loss_kind == "binary":
            return outputs.float(), targets.float()
        return outputs.float(), targets

    def probabilities(self, outputs: Tensor) -> Tensor:
        """(B, C) class probabilities from either head width."""
        if self.loss_kind == "binary":
            p = torch.sigmoid(outputs.float())  # (B,)
            return torch.stack([1 - p, p], dim=-1)
        return torch.softmax(outputs.float(), dim=-1)

    def decide(self, outputs: Tensor) -> Tensor:
        """(B,) predicted class indices."""
        if self.loss_kind == "binary":
            return (outputs > 0).long()
        return outputs.argmax(-1)

    def new_metrics(self, side: Sequence[Any] | None = None) -> ClassificationMetrics:
        """Fresh streaming metrics."""
        return ClassificationMetrics(len(self.labels), self.labels)

    def observe(self, metrics: ClassificationMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Add one batch of predicted classes."""
        metrics.update(self.decide(outputs).cpu(), batch.targets.cpu())

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """One record per example: the label, every label's probability, the k most probable."""
        return self.records(self.forward(model, batch), top_k)

    def records(self, outputs: Tensor, top_k: int) -> list[dict[str, Any]]:
        """Prediction records from raw outputs (see predict)."""
        probs = self.probabilities(outputs).cpu()  # (B, C)
        chosen = self.decide(outputs).cpu().tolist()
        best = top_k_records(probs, self.labels, top_k)
        records = []
        for row, label, top in zip(probs.tolist(), chosen, best):
            record = {"label": self.labels[label], "probability": row[label],
                      "probabilities": dict(zip(self.labels, row))}
            if top_k:
                record["top_k"] = top
            records.append(record)
        return records

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One input per row: the records as they are."""
        return one_per_row(records, encoded)

    def readout(self) -> Readout:
        """Exported outputs: the logits and the class probabilities."""
        return Readout(("logits", "probabilities"), lambda out: (out, self.probabilities(out)),
                       {"labels": list(self.labels)})

    def final_decoding(self) -> None:
        """Nothing to switch: every evaluation scores every example."""

    def describe(self) -> str:
        """Classes, pooling and head width, for `tformer plan`."""
        shown = ", ".join(self.labels[:8]) + (", ..." if len(self.labels) > 8 else "")
        width = "one logit (binary loss)" if self.loss_kind == "binary" else f"{self.num_outputs} logits"
        return f"{len(self.labels)} classes ({shown}); {self.cfg.pooling} pooling, {width}"

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"labels": self.labels}
