"""Single-label classification metrics: accuracy, macro F1, MCC, per-class table, confusion matrix."""

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
    on_cpu,
    prf_table,
)


class ClassificationMetrics:
    """Accuracy, macro-F1 and multi-class MCC from a streaming (C, C) confusion matrix."""

    def __init__(self, num_classes: int, label_names: list[str]) -> None:
        self.num_classes = num_classes
        self.label_names = check_names(label_names, num_classes, "class")
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64)  # (C, C) rows true, cols predicted

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch; targets < 0 (e.g. ignore_index -100) are skipped.

        preds and targets share any shape, (N,) or (B, T) for token tasks; each element counts once.
        """
        check_same_shape(preds, targets)
        preds = on_cpu(preds, torch.int64).reshape(-1)  # (N,)
        targets = on_cpu(targets, torch.int64).reshape(-1)  # (N,)
        keep = targets >= 0
        preds, targets = preds[keep], targets[keep]  # (n,) counted items only
        self._check_range(preds, "predicted")
        self._check_range(targets, "target")
        c = self.num_classes
        counts = torch.bincount(targets * c + preds, minlength=c * c)  # (C*C,)
        self.confusion += counts.reshape(c, c)

    def _check_range(self, classes: Tensor, what: str) -> None:
        """Reject class indices outside [0, C): bincount would silently misfile them."""
        outside = classes[(classes < 0) | (classes >= self.num_classes)]
        if outside.numel():
            raise TformerError(
                f"{what} class {int(outside[0])} is outside [0, {self.num_classes})",
                hint="check that the task's num_classes matches the labels in the data",
            )

    def compute(self) -> dict[str, float]:
        """accuracy, macro_f1 (over all C classes), mcc (Gorodkin's R_K) and count."""
        cm = self.confusion
        count = int(cm.sum())
        if count == 0:
            return {"accuracy": math.nan, "macro_f1": math.nan, "mcc": math.nan, "count": 0}
        tp, n_pred, n_true = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)  # (C,) each
        return {
            "accuracy": int(tp.sum()) / count,
            "macro_f1": float(f1_from_counts(tp, n_pred, n_true).mean()),
            "mcc": _multiclass_mcc(cm),
            "count": count,
        }

    def details(self) -> dict[str, Any]:
        """Per-class precision / recall / F1 / support and the confusion matrix (rows = true)."""
        cm = self.confusion
        tp, n_pred, n_true = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)  # (C,) each
        return {
            "per_class": prf_table(self.label_names, tp, n_pred, n_true),
            "confusion_matrix": cm.tolist(),
        }


def _multiclass_mcc(confusion: Tensor) -> float:
    """Gorodkin's R_K from a (C, C) confusion matrix; equals the binary MCC for C = 2.

    R_K = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), with c correct,
    s total, p_k predicted and t_k true counts of class k. 0.0 when undefined (a constant side).
    """
    cm = confusion.to(torch.float64)  # float64: s^2 overflows int64 beyond ~3e9 items
    s, c = cm.sum(), cm.diagonal().sum()
    p, t = cm.sum(dim=0), cm.sum(dim=1)  # (C,) predicted, true
    cov_pt = c * s - (p * t).sum()
    cov_pp, cov_tt = s * s - (p * p).sum(), s * s - (t * t).sum()
    if cov_pp <= 0 or cov_tt <= 0:
        return 0.0
    return float(cov_pt / torch.sqrt(cov_pp * cov_tt))
