"""`tformer plan`: the checks it makes before any compute, and numbers that agree with what training does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, compose_train, run_cli

from transformer_cli.errors import TformerError
from transformer_cli.plan import count_evaluations, lr_chart, make_plan, memory_estimate


def test_wrong_monitor_and_misfit_loss_fail_before_reading_data() -> None:
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


def test_memory_estimate_counts_adamw_state() -> None:
    """fp32 weights + gradients + two AdamW moments = 16 bytes a parameter, before activations."""
    cfg = compose_train(["model=tiny"])
    mem = memory_estimate(cfg, params=1000, longest=10, precision="fp32")
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == (4000, 4000, 8000)
    assert mem["total"] == 16000 + mem["activations"] and mem["activations"] > 0
    sgd = memory_estimate(compose_train(["model=tiny", "optim=sgd", "optim.momentum=0"]), 1000, 10, "fp32")
    assert sgd["optimizer"] == 0
    assert memory_estimate(cfg, 1000, 10, "bf16")["activations"] == mem["activations"] // 2


@pytest.mark.slow
def test_plan_step_counts_and_schedule_agree_with_training(tmp_path: Path) -> None:
    """Steps per epoch, total and warmup steps, and the lr of every logged step are what training then does."""
    from transformer_cli.run import train

    cfg = compose_train([*TINY, "data.max_train_examples=200", "data.max_eval_examples=100", "trainer.threads=1",
                         "trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.batch_size=16",
                         "trainer.grad_accum=3", "trainer.eval_every=0", "trainer.log_every=1",
                         "schedule.warmup_ratio=0.2"])
    plan = make_plan(cfg)
    assert (plan.steps_per_epoch, plan.total_steps) == (5, 10)  # 200 examples / 16 = 13 batches, 3 per step
    assert plan.warmup_steps == 2 and plan.effective_batch == 48 and plan.processes == 1
    assert plan.examples["train"] == 200 and plan.tokens_per_epoch > 200
    assert plan.train_tokens.real == 2 * plan.tokens_per_epoch  # two whole epochs
    assert plan.train_tokens.padded >= plan.train_tokens.real
    assert plan.train_flops > 6 * (plan.parameters - plan.embedding_parameters) * plan.train_tokens.real
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == plan.total_steps and summary["epochs"] == plan.epochs == 2.0
    assert summary["parameters"] == plan.parameters
    assert summary["examples"] == plan.examples
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {e["step"]: e["lr"] for e in events if e["event"] == "train"}
    assert sorted(logged) == list(range(1, 11))
    for step, lr in logged.items():  # the lr recorded after `step` updates drives update step + 1
        if step < plan.total_steps:
            assert lr == pytest.approx(plan.lr[step], rel=1e-12)
    assert plan.lr[plan.warmup_steps - 1] == pytest.approx(cfg.optim.lr)  # the peak, at the end of warmup


@pytest.mark.slow
def test_plan_cli_prints_the_numbers_and_fails_clearly(tmp_path: Path) -> None:
    """`tformer plan` prints counts and the schedule (exit 0); a missing column exits 2 (bad monitors and
    misfit losses: test_wrong_monitor_and_misfit_loss_fail_before_reading_data)."""
    proc = run_cli(["plan", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("parameters", "steps per epoch", "total steps", "warmup steps", "effective batch",
                   "training FLOPs", "memory (estimate)", "learning rate", "█"):
        assert needle in proc.stdout, needle
    assert list(tmp_path.iterdir()) == []  # plan writes nothing
    proc = run_cli(["plan", *TINY, "data.text_column=review"], cwd=tmp_path)
    assert proc.returncode == 2 and "column 'review'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_token_budget_training_matches_the_plan(tmp_path: Path) -> None:
    """trainer.max_tokens: the plan's step count is what training does, and batches hardly pad."""
    from transformer_cli.run import train

    cfg = compose_train([*TINY, "data.max_train_examples=300", "data.max_eval_examples=64", "trainer.threads=1",
                         "trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.batch_size=64",
                         "trainer.max_tokens=400", "trainer.eval_every=0", "trainer.log_every=1"])
    plan = make_plan(cfg)
    per_epoch = plan.steps_per_epoch
    assert plan.total_steps == 2 * per_epoch and per_epoch > 300 * 10 // 400  # at least a batch per 400 tokens
    assert plan.train_tokens.real == 2 * plan.tokens_per_epoch
    assert plan.train_tokens.padded <= 400 * plan.total_steps and plan.train_tokens.padded < 1.03 * plan.train_tokens.real
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == plan.total_steps and summary["epochs"] == 2.0
