"""`tformer plan` end to end: its numbers agree with what training then does, and the CLI prints them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.plan import make_plan


@pytest.mark.slow
def test_plan_step_counts_and_schedule_agree_with_training(tmp_path: Path, tiny: list[str],
                                                           compose_train: Callable) -> None:
    """Steps per epoch, total and warmup steps, and the lr of every logged step are what training then does."""
    from transformer_cli.run import train

    cfg = compose_train([*tiny, "data.max_train_examples=200", "data.max_eval_examples=100", "trainer.threads=1",
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
def test_plan_cli_prints_the_numbers_and_fails_clearly(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """`tformer plan` prints counts and the schedule (exit 0); a missing column exits 2 (bad monitors and
    misfit losses: test_wrong_monitor_and_misfit_loss_fail_before_reading_data)."""
    proc = run_cli(["plan", *tiny], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("parameters", "steps per epoch", "total steps", "warmup steps", "effective batch",
                   "training FLOPs", "memory (estimate)", "learning rate", "█"):
        assert needle in proc.stdout, needle
    assert list(tmp_path.iterdir()) == []  # plan writes nothing
    proc = run_cli(["plan", *tiny, "data.text_column=review"], cwd=tmp_path)
    assert proc.returncode == 2 and "column 'review'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_token_budget_training_matches_the_plan(tmp_path: Path, tiny: list[str], compose_train: Callable) -> None:
    """trainer.max_tokens: the plan's step count is what training does, and batches hardly pad."""
    from transformer_cli.run import train

    cfg = compose_train([*tiny, "data.max_train_examples=300", "data.max_eval_examples=64", "trainer.threads=1",
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
