"""What every metric family shares: the protocol the loop uses, zero-safe ratios, per-name tables.

Every metric object keeps small float64 / int64 state on the CPU and never holds an epoch's logits:
the task turns outputs into predictions (argmax, threshold, squeeze) and calls ``update`` per batch.

Conventions shared by every metric family:
  * ``compute()`` returns flat scalars (``name -> float``, plus an int ``count``), ready to log;
    ``details()`` returns the larger, JSON-serialisable breakdown (per class, confusion matrix).
  * A ratio whose denominator is zero (precision of a class never predicted, a correlation of a
    constant input, R2 of constant targets) is 0.0, as scikit-learn's ``zero_division=0``.
  * With nothing counted (``count == 0``) every metric is NaN: "nothing measured" must never look
    like a perfect score to a checkpoint monitor (NaN never compares better than anything).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class Metrics(Protocol):
    """What the loop needs from any metric object."""

    def update(self, preds: Tensor, targets: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def details(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def safe_div(num: float, den: float) -> float:
    """num / den, or 0.0 when den is zero (the zero_division=0 convention)."""
    return num / den if den != 0 else 0.0


def on_cpu(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached CPU copy in dtype: state lives on the CPU, whatever device the batch came from."""
    return x.detach().to(device="cpu", dtype=dtype)


def check_same_shape(preds: Tensor, targets: Tensor) -> None:
    """Fail loudly on mismatched shapes rather than silently broadcasting."""
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ")


def f1_from_counts(tp: Tensor, n_pred: Tensor, n_true: Tensor) -> Tensor:
    """Per-entry F1 = 2tp / (n_pred + n_true), 0.0 where both are zero; all args (K,) -> (K,)."""
    den = (n_pred + n_true).to(torch.float64)
    return torch.where(den > 0, 2 * tp.to(torch.float64) / den.clamp_min(1), 0.0)


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """Element-wise num / den in float64, 0.0 where den is zero; (K,) -> (K,)."""
    den = den.to(torch.float64)
    return torch.where(den > 0, num.to(torch.float64) / den.clamp_min(1), 0.0)


def prf_table(
    names: list[str], tp: Tensor, n_pred: Tensor, n_true: Tensor
) -> dict[str, dict[str, float]]:
    """Per-name precision / recall / F1 / support from (K,) counts, as plain Python numbers."""
    precision, recall = ratio(tp, n_pred), ratio(tp, n_true)
    f1 = f1_from_counts(tp, n_pred, n_true)
    return {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(n_true[k]),
        }
        for k, name in enumerate(names)
    }


def check_names(names: list[str], expected: int, what: str) -> list[str]:
    """Validate that there is one distinct name per class / label."""
    if expected < 1:
        raise ValueError(f"need at least one {what}, got {expected}")
    if len(names) != expected or len(set(names)) != expected:
        raise ValueError(f"need {expected} distinct {what} names, got {names!r}")
    return list(names)
