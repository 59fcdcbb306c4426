"""The regression task: standardised targets, the original scale in metrics, and bad targets named by row."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.regress import RegressConfig, RegressTask

TRAIN = Where(split="train", source="train.csv")


def regress(values: list[Any], standardize: bool = True) -> RegressTask:
    """A regression task fitted on `values`."""
    cfg = OmegaConf.merge(OmegaConf.structured(RegressConfig), {"standardize": standardize})
    return RegressTask(cfg, "real", RegressTask.fit_state(values, cfg, None, "train.csv"))


def test_standardisation_round_trip() -> None:
    """Targets are trained standardised, and predict() maps them back to the original scale."""
    ys = [10.0, 20.0, 30.0, 45.5, -3.25]
    task = regress(ys)
    t = torch.tensor(ys, dtype=torch.float64)
    assert task.mean == pytest.approx(float(t.mean())) and task.std == pytest.approx(float(t.std()))
    encoded = task.encode_targets(ys, TRAIN)
    assert encoded.dtype == torch.float32
    assert float(encoded.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(encoded.std()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(task.original_scale(encoded), t, rtol=0, atol=1e-5)


def test_string_targets_and_no_standardisation() -> None:
    """Numeric strings are numbers; with standardize off the targets pass through unchanged."""
    task = regress(["1.5", " 2 ", 3], standardize=False)
    assert (task.mean, task.std) == (0.0, 1.0)
    assert task.encode_targets(["1.5", " 2 ", 3], TRAIN).tolist() == [1.5, 2.0, 3.0]


def test_constant_targets_keep_unit_scale() -> None:
    """A constant target has std 0: the scale stays 1 rather than dividing by zero."""
    task = regress([4.0, 4.0, 4.0])
    assert task.std == 1.0 and task.encode_targets([4.0, 5.0], TRAIN).tolist() == [0.0, 1.0]


def test_regression_metrics_on_the_original_scale(observe: Callable) -> None:
    """Metrics compare predictions and targets in the data's units, not standardised ones."""
    ys = [0.0, 100.0, 200.0, 300.0]
    task = regress(ys)
    assert task.std > 50  # so a standardised-scale error would be far smaller than 2
    preds = [y + 2.0 for y in ys]
    metrics = task.new_metrics()
    observe(task, metrics, task.encode_targets(preds, TRAIN), task.encode_targets(ys, TRAIN))
    scalars = metrics.compute()
    assert scalars["mae"] == pytest.approx(2.0, rel=1e-4)
    assert scalars["rmse"] == pytest.approx(2.0, rel=1e-4)
    assert scalars["mse"] == pytest.approx(4.0, rel=1e-3)


@pytest.mark.parametrize("bad", ["abc", float("nan"), None, "", "inf", float("-inf"), True, [1.0]])
def test_bad_regression_target_names_the_row(bad: Any) -> None:
    """A missing, non-numeric or non-finite target is an error at its row and file."""
    task = regress([1.0, 2.0, 3.0])
    where = Where(split="validation", source="data/val.csv", rows=[2, 5, 8])
    with pytest.raises(TformerError) as err:
        task.encode_targets([1.0, 2.0, bad], where)
    msg = str(err.value)
    assert "row 8 " in msg and "data/val.csv" in msg and "validation" in msg


def test_fit_state_skips_bad_targets() -> None:
    """fit_state uses the finite numbers only (encode_targets reports the rest)."""
    task = regress([1.0, "x", None, float("nan"), 3.0])
    assert task.mean == pytest.approx(2.0)
