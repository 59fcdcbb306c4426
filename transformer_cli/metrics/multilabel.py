"""Multi-label metrics: micro and macro F1, subset accuracy, Hamming loss, per-label table."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from transformer_cli.errors import TformerError
from transformer_cli.metrics.common import (
    check_names,
    check_same_shape,
    f1_from_counts,
    prf_table,
)


class MultiLabelMetrics:
    """Micro / macro F1, subset accuracy and Hamming loss of (N, L) 0/1 predictions."""

    def __init__(self, num_labels: int, label_names: list[str]) -> None:
        self.num_labels = num_labels
        self.label_names = check_names(label_names, num_labels, "label")
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        z = torch.zeros(self.num_labels, dtype=torch.int64)
        self.tp, self.n_pred, self.n_true = z.clone(), z.clone(), z.clone()  # (L,) each
        self.rows = 0
        self.exact_rows = 0  # rows whose every label was right
        self.wrong_cells = 0  # (row, label) cells predicted wrong

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch of (N, L) 0/1 (or bool) predictions and targets."""
        check_same_shape(preds, targets)
        if preds.dim() != 2 or preds.shape[1] != self.num_labels:
            raise ValueError(f"expected (N, {self.num_labels}) values, got {tuple(preds.shape)}")
        p, t = _as_binary(preds, "predictions"), _as_binary(targets, "targets")  # (N, L) bool each
        wrong = p != t  # (N, L)
        self.tp += (p & t).sum(dim=0)
        self.n_pred += p.sum(dim=0)
        self.n_true += t.sum(dim=0)
        self.rows += p.shape[0]
        self.exact_rows += int((~wrong.any(dim=1)).sum())
        self.wrong_cells += int(wrong.sum())

    def compute(self) -> dict[str, float]:
        """micro_f1, macro_f1 (over all L labels), subset_accuracy, hamming_loss and count."""
        if self.rows == 0:
            names = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
            return {**{k: math.nan for k in names}, "count": 0}
        micro = f1_from_counts(self.tp.sum(), self.n_pred.sum(), self.n_true.sum())
        return {
            "micro_f1": float(micro),
            "macro_f1": float(f1_from_counts(self.tp, self.n_pred, self.n_true).mean()),
            "subset_accuracy": self.exact_rows / self.rows,
            "hamming_loss": self.wrong_cells / (self.rows * self.num_labels),
            "count": self.rows,
        }

    def details(self) -> dict[str, Any]:
        """Per-label precision / recall / F1 / support (support = rows where the label is 1)."""
        return {"per_label": prf_table(self.label_names, self.tp, self.n_pred, self.n_true)}


def _as_binary(x: Tensor, what: str) -> Tensor:
    """(N, L) 0/1 values as a CPU bool tensor; anything else is a mistake, not a threshold."""
    x = x.detach().cpu()
    if x.dtype != torch.bool:
        if ((x != 0) & (x != 1)).any():
            raise TformerError(
                f"multi-label {what} must be 0 or 1",
                hint="threshold the logits (e.g. logits > 0) before updating the metrics",
            )
        x = x != 0
    return x
