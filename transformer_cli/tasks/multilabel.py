"""Multi-label classification: L independent logits, per-label BCE, micro/macro F1."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import MultiLabelMetrics
from transformer_cli.model import SequenceModel
from transformer_cli.tasks.common import (
    Rows,
    encode_rows,
    one_per_row,
    Where,
    check_label_set,
    is_missing,
    label_key,
    sequence_forward,
    sequence_model,
    sorted_labels,
    top_k_records,
    unknown_label,
)
from transformer_cli.tasks.protocol import Readout

# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "micro_f1": "max", "macro_f1": "max", "subset_accuracy": "max", "hamming_loss": "min"}
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"labels": list[str]}


@dataclass
class MultiLabelConfig:
    """Settings of the multi-label task."""

    name: str = "multilabel"
    pooling: str = "cls"  # cls (first token) | mean (over real tokens)
    head_dropout: float = 0.1
    separator: str = ","  # splits a label cell like "sports,politics"; a list or JSON list cell needs none
    threshold: float = 0.5  # probability above which a label is predicted


def split_labels(value: Any, separator: str) -> list[str]:
    """One cell -> its label names: a list, a JSON list string, or a separated string ('' = none)."""
    if is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [label_key(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return [label_key(v) for v in json.loads(text)]
        except json.JSONDecodeError:
            pass
    return [label_key(v) for v in text.split(separator) if v.strip()]


class MultiLabelTask:
    """Maps label lists to (N, L) 0/1 rows; predicts every label whose probability passes the threshold."""

    loss_kind = "multilabel"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.labels: list[str] = list(state["labels"])
        self.index = {name: i for i, name in enumerate(self.labels)}
        if not 0.0 < cfg.threshold < 1.0:
            raise TformerError(f"task.threshold must be in (0, 1), got {cfg.threshold}")

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """The label set: data.labels if given, else every label seen in training, sorted."""
        if fixed:
            return {"labels": check_label_set(list(fixed), source)}
        seen = {name for v in values for name in split_labels(v, cfg.separator)}
        return {"labels": check_label_set(sorted_labels(seen), source)}

    def build_model(self, model_cfg: Any, vocab_size: int) -> SequenceModel:
        """The encoder and one logit per label."""
        return sequence_model(model_cfg, vocab_size, len(self.labels), self.cfg, squeeze=False)

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """One input per row and its target (see encode_targets)."""
        return encode_rows(rows, tokenizer, labelled, self.encode_targets)

    def encode_targets(self, values: Sequence[Any], where: Where) -> Tensor:
        """Label cells -> (N, L) float 0/1; an unknown label is an error."""
        out = torch.zeros(len(values), len(self.labels))
        for i, v in enumerate(values):
            for name in split_labels(v, self.cfg.separator):
                if name not in self.index:
                    raise unknown_label(name, where, i, self.labels)
                out[i, self.index[name]] = 1.0
        return out

    def loss_context(self, targets: Tensor) -> LossContext:
        """Positives per label and the row count, for `auto` pos_weight."""
        return LossContext(num_outputs=len(self.labels), label_counts=targets.sum(0).long(),
                           num_examples=len(targets))

    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) logits and (B, L) 0/1 targets."""
        return outputs.float(), targets.float()

    def probabilities(self, outputs: Tensor) -> Tensor:
        """(B, L) independent label probabilities."""
        return torch.sigmoid(outputs.float())

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """(B, L) logits."""
        return sequence_forward(model, batch)

    def decide(self, outputs: Tensor) -> Tensor:
        """(B, L) 0/1 decisions."""
        return (self.probabilities(outputs) > self.cfg.threshold).long()

    def new_metrics(self, side: Sequence[Any] | None = None) -> MultiLabelMetrics:
        """Fresh streaming metrics."""
        return MultiLabelMetrics(len(self.labels), self.labels)

    def observe(self, metrics: MultiLabelMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Add one batch of decisions."""
        metrics.update(self.decide(outputs).cpu(), batch.targets.long().cpu())

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """One record per example: the labels past the threshold, every label's probability, the k most probable."""
        return self.records(self.forward(model, batch), top_k)

    def records(self, outputs: Tensor, top_k: int) -> list[dict[str, Any]]:
        """Prediction records from raw outputs (see predict)."""
        probs = self.probabilities(outputs).cpu()  # (B, L)
        chosen = self.decide(outputs).cpu().tolist()
        best = top_k_records(probs, self.labels, top_k)
        records = []
        for row, flags, top in zip(probs.tolist(), chosen, best):
            record: dict[str, Any] = {"labels": [name for name, on in zip(self.labels, flags) if on],
                                      "probabilities": dict(zip(self.labels, row))}
            if top_k:
                record["top_k"] = top
            records.append(record)
        return records

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One input per row: the records as they are."""
        return one_per_row(records, encoded)

    def readout(self) -> Readout:
        """Exported outputs: the logits and the independent label probabilities."""
        return Readout(("logits", "probabilities"), lambda out: (out, self.probabilities(out)),
                       {"labels": list(self.labels), "threshold": float(self.cfg.threshold)})

    def final_decoding(self) -> None:
        """Nothing to switch: every evaluation scores every example."""

    def describe(self) -> str:
        """Labels, threshold and pooling, for `tformer plan`."""
        shown = ", ".join(self.labels[:8]) + (", ..." if len(self.labels) > 8 else "")
        return (f"{len(self.labels)} labels ({shown}), each predicted when its probability passes "
                f"{self.cfg.threshold:g}; {self.cfg.pooling} pooling")

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"labels": self.labels}
