"""Regression metrics, streamed: MSE, RMSE, MAE, R2, Pearson and Spearman correlations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from transformer_cli.metrics.common import check_same_shape, on_cpu


@dataclass
class _Moments:
    """Count, means, centred second moments and co-moment of (p, t) pairs, merged Chan-style.

    Centred sums avoid the cancellation of sum(x^2) - n*mean^2, so targets like 1e6 + small noise
    keep their precision.
    """

    n: int = 0
    mean_p: float = 0.0
    mean_t: float = 0.0
    m2_p: float = 0.0  # sum (p - mean_p)^2
    m2_t: float = 0.0  # sum (t - mean_t)^2
    c_pt: float = 0.0  # sum (p - mean_p)(t - mean_t)

    @classmethod
    def of(cls, p: Tensor, t: Tensor) -> _Moments:
        """Moments of one batch, two-pass around the batch means; p, t (n,) float64."""
        if p.numel() == 0:
            return cls()
        mean_p, mean_t = _careful_mean(p), _careful_mean(t)
        dp, dt = p - mean_p, t - mean_t  # (n,)
        return cls(p.numel(), mean_p, mean_t, float(dp @ dp), float(dt @ dt), float(dp @ dt))

    def merge(self, other: _Moments) -> _Moments:
        """The moments of both sets together (Chan, Golub & LeVeque's pairwise update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        dp, dt = other.mean_p - self.mean_p, other.mean_t - self.mean_t
        w = self.n * other.n / n
        return _Moments(
            n=n,
            mean_p=self.mean_p + dp * other.n / n,
            mean_t=self.mean_t + dt * other.n / n,
            m2_p=self.m2_p + other.m2_p + dp * dp * w,
            m2_t=self.m2_t + other.m2_t + dt * dt * w,
            c_pt=self.c_pt + other.c_pt + dp * dt * w,
        )


def _careful_mean(x: Tensor) -> float:
    """Mean of (n,) float64 plus one correction pass, which removes most of the summation error."""
    m = x.mean()
    return float(m + (x - m).mean())


def _correlation(m: _Moments, constant: bool) -> float:
    """Pearson r from moments; 0.0 when either side is constant (r is undefined there)."""
    if constant or m.m2_p <= 0 or m.m2_t <= 0:
        return 0.0
    r = m.c_pt / math.sqrt(m.m2_p * m.m2_t)
    return min(1.0, max(-1.0, r))  # rounding may step a hair outside [-1, 1]


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N of (N,) values, ties sharing their mean rank (scipy's rankdata 'average')."""
    n = x.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    sorted_x, order = torch.sort(x, stable=True)  # (N,), (N,)
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sorted_x[1:] != sorted_x[:-1]  # (N,) True where a tie group begins
    group = torch.cumsum(starts, dim=0) - 1  # (N,) tie group of each sorted position
    sizes = torch.bincount(group).to(torch.float64)  # (G,)
    last = torch.cumsum(sizes, dim=0)  # (G,) 1-based rank of each group's last member
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (last - (sizes - 1) / 2)[group]  # mean of ranks last-size+1 .. last
    return ranks


class RegressionMetrics:
    """MSE, RMSE, MAE, R2, Pearson and Spearman of one real-valued output.

    All but Spearman come from running float64 sums. Spearman needs global ranks, so the (N,)
    predictions and targets are kept: one float each per example, never logits.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.moments = _Moments()
        self.sum_sq_err = 0.0  # sum (p - t)^2: errors are small even when p, t sit at 1e6
        self.sum_abs_err = 0.0  # sum |p - t|
        self.range_p = (math.inf, -math.inf)  # (min, max): exact constancy test for correlations
        self.range_t = (math.inf, -math.inf)
        self._kept_p: list[Tensor] = []  # (n_i,) float64 per batch, for Spearman
        self._kept_t: list[Tensor] = []

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch of (N,) predictions and targets ((N, 1) is accepted and squeezed)."""
        check_same_shape(preds, targets)
        if preds.dim() == 2 and preds.shape[1] == 1:
            preds, targets = preds[:, 0], targets[:, 0]
        if preds.dim() != 1:
            raise ValueError(f"RegressionMetrics takes (N,) values, got {tuple(preds.shape)}")
        p, t = on_cpu(preds, torch.float64), on_cpu(targets, torch.float64)  # (N,) each
        if p.numel() == 0:
            return
        err = p - t  # (N,)
        self.sum_sq_err += float(err @ err)
        self.sum_abs_err += float(err.abs().sum())
        self.moments = self.moments.merge(_Moments.of(p, t))
        self.range_p = _widen(self.range_p, p)
        self.range_t = _widen(self.range_t, t)
        self._kept_p.append(p)
        self._kept_t.append(t)

    def compute(self) -> dict[str, float]:
        """mse, rmse, mae, r2, pearson, spearman and count; see the module notes for 0.0 / NaN."""
        m = self.moments
        if m.n == 0:
            names = ("mse", "rmse", "mae", "r2", "pearson", "spearman")
            return {**{k: math.nan for k in names}, "count": 0}
        mse = self.sum_sq_err / m.n
        constant = _is_constant(self.range_p) or _is_constant(self.range_t)
        return {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": self.sum_abs_err / m.n,
            "r2": 0.0 if _is_constant(self.range_t) else 1.0 - self.sum_sq_err / m.m2_t,
            "pearson": _correlation(m, constant),
            "spearman": self._spearman(constant),
            "count": m.n,
        }

    def _spearman(self, constant: bool) -> float:
        """Pearson r of the average ranks of everything kept."""
        rank_p = average_ranks(torch.cat(self._kept_p))  # (N,)
        rank_t = average_ranks(torch.cat(self._kept_t))  # (N,)
        return _correlation(_Moments.of(rank_p, rank_t), constant)

    def details(self) -> dict[str, Any]:
        """Nothing beyond the scalars for regression."""
        return {}


def _widen(bounds: tuple[float, float], x: Tensor) -> tuple[float, float]:
    """(min, max) extended by the values of (n,) x."""
    return min(bounds[0], float(x.min())), max(bounds[1], float(x.max()))


def _is_constant(bounds: tuple[float, float]) -> bool:
    """True when every value seen was equal (decided exactly, not by a variance tolerance)."""
    return bounds[0] == bounds[1]
