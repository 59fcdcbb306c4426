"""`tformer plan`: the checks it makes before any compute, the evaluation count, the lr chart and the memory
estimate (its numbers against a real training: tests/e2e/test_plan.py)."""

from __future__ import annotations

from typing import Callable

import pytest

from transformer_cli.errors import TformerError
from transformer_cli.plan import count_evaluations, lr_chart, make_plan, memory_estimate


def test_wrong_monitor_and_misfit_loss_fail_before_reading_data(compose_train: Callable) -> None:
    """A monitor the task does not produce, or a loss that does not fit it, is refused by name."""
    with pytest.raises(TformerError, match="trainer.monitor='rmse' is not a metric of task 'classify'"):
        make_plan(compose_train(["trainer.monitor=rmse", "data=local", "data.train=absent.csv"]))
    with pytest.raises(TformerError, match="loss 'mse' does not fit task 'classify'"):
        make_plan(compose_train(["loss=mse", "data=local", "data.train=absent.csv"]))


def test_evaluations_follow_the_loop() -> None:
    """Each epoch (or every eval_every steps), the final weights if not just evaluated, and the best checkpoint."""
    assert count_evaluations(per_epoch=13, total=13, eval_every=0) == 2
    assert count_evaluations(per_epoch=13, total=26, eval_every=0) == 3
    assert count_evaluations(per_epoch=13, total=13, eval_every=10) == 3  # steps 10 and 13, then the best
    assert count_evaluations(per_epoch=13, total=20, eval_every=10) == 3  # steps 10 and 20, then the best
    assert count_evaluations(per_epoch=13, total=5, eval_every=10) == 2


def test_lr_chart_draws_the_schedule() -> None:
    """Warmup then decay: the peak column is full height, the last is nearly empty; labels on the axis."""
    lr = [min((s + 1) / 10, 1.0) * (1 - s / 100) * 1e-3 for s in range(100)]
    lines = lr_chart(lr, width=50, height=6)
    assert len(lines) == 8 and f"{max(lr):.2e}" in lines[0] and "step 100" in lines[-1]
    bars = [line.split("│")[1] for line in lines[:6]]
    assert all(len(b) == 50 for b in bars)
    assert set(bars[0][:10]) & set("▇█") and bars[0][-1] == " "  # the peak reaches the top; the end does not
    assert bars[-1][0] != " " and bars[-1][-1] != " "  # the first and last steps are drawn
    assert lr_chart([]) == ["(no steps)"]


def test_memory_estimate_counts_adamw_state(compose_train: Callable) -> None:
    """fp32 weights + gradients + two AdamW moments = 16 bytes a parameter, before activations."""
    cfg = compose_train(["model=tiny"])
    mem = memory_estimate(cfg, params=1000, longest=10, precision="fp32")
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == (4000, 4000, 8000)
    assert mem["total"] == 16000 + mem["activations"] and mem["activations"] > 0
    sgd = memory_estimate(compose_train(["model=tiny", "optim=sgd", "optim.momentum=0"]), 1000, 10, "fp32")
    assert sgd["optimizer"] == 0
    assert memory_estimate(cfg, 1000, 10, "bf16")["activations"] == mem["activations"] // 2
