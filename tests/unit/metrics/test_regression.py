"""Regression metrics against two-pass numpy and scipy references, streamed in random batches."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from transformer_cli.metrics import RegressionMetrics, average_ranks


def _assert_same_metrics(a: dict[str, float], b: dict[str, float], rel: float = 1e-12) -> None:
    """Same keys, values equal to within rel (counts exactly)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12), key


def _numpy_regression(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Two-pass float64 reference values."""
    err = p - t
    sst = ((t - t.mean()) ** 2).sum()
    return {
        "mse": float((err**2).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1 - (err**2).sum() / sst),
        "pearson": float(stats.pearsonr(p, t).statistic),
        "spearman": float(stats.spearmanr(p, t).statistic),
        "count": len(p),
    }


def _streamed_regression(p: np.ndarray, t: np.ndarray, random_splits: Callable, seed: int) -> dict[str, float]:
    """RegressionMetrics fed in random batches (cut by the random_splits fixture)."""
    m = RegressionMetrics()
    pt, tt = torch.from_numpy(p), torch.from_numpy(t)
    for part in random_splits(len(p), np.random.default_rng(seed)):
        m.update(pt[part], tt[part])
    return m.compute()


def test_regression_matches_numpy_and_scipy_with_ties(random_splits: Callable) -> None:
    rng = np.random.default_rng(1)
    t = np.round(rng.normal(size=800) * 3)  # integers: plenty of ties for Spearman
    p = np.round(t + rng.normal(size=800) * 2)
    _assert_same_metrics(_streamed_regression(p, t, random_splits, seed=2), _numpy_regression(p, t), rel=1e-10)


def test_regression_streaming_equals_one_shot(random_splits: Callable) -> None:
    rng = np.random.default_rng(3)
    t, p = rng.normal(size=500), rng.normal(size=500)
    whole = RegressionMetrics()
    whole.update(torch.from_numpy(p), torch.from_numpy(t))
    _assert_same_metrics(_streamed_regression(p, t, random_splits, seed=4), whole.compute())


def test_regression_keeps_precision_at_large_offset(random_splits: Callable) -> None:
    rng = np.random.default_rng(5)
    t = 1e6 + rng.normal(size=2000) * 1e-2
    p = t + rng.normal(size=2000) * 5e-3
    reference = _numpy_regression(p, t)
    # The test has teeth: the one-pass textbook variance E[t^2] - E[t]^2 is badly off here.
    naive_var = (t**2).mean() - t.mean() ** 2
    assert abs(naive_var - t.var()) > 1e-3 * t.var()
    _assert_same_metrics(_streamed_regression(p, t, random_splits, seed=6), reference, rel=1e-8)


def test_regression_constant_inputs_give_zero_not_nan() -> None:
    m = RegressionMetrics()
    for _ in range(3):  # 0.1 is not exact in binary: a variance tolerance would be fragile
        m.update(torch.full((7,), 0.1), torch.tensor([1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0]))
    out = m.compute()
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0
    assert out["r2"] < 0  # constant predictions, varied targets: R2 is defined

    m = RegressionMetrics()
    m.update(torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 0.1))
    m.update(torch.tensor([4.0]), torch.full((1,), 0.1))
    out = m.compute()
    assert out["r2"] == 0.0 and out["pearson"] == 0.0 and out["spearman"] == 0.0
    assert not any(math.isnan(v) for v in out.values())


def test_regression_empty_and_shapes() -> None:
    m = RegressionMetrics()
    out = m.compute()
    assert out["count"] == 0 and math.isnan(out["mse"])
    m.update(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]]))  # (N, 1) squeezed
    assert m.compute()["mae"] == pytest.approx(0.5)
    assert m.details() == {}
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 3), torch.zeros(2, 3))
    m.reset()
    assert m.compute()["count"] == 0


def test_average_ranks_matches_scipy() -> None:
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    expected = stats.rankdata(x.numpy(), method="average")
    assert average_ranks(x).tolist() == expected.tolist()  # [5, 1.5, 5, 3, 5, 1.5]
