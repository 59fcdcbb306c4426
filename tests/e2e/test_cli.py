"""End to end: the real CLI on tiny configs of real data, in a temporary directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow


def read_json(path: Path) -> dict:
    """Load a JSON file."""
    return json.loads(path.read_text())


def assert_complete_run(run_dir: Path) -> dict:
    """A run directory holds every promised file; returns its summary."""
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", ".hydra/config.yaml", "curves.png"):
        assert (run_dir / name).is_file(), f"{run_dir}/{name} missing"
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ckpt in ("best", "last"):
        for name in ("model.safetensors", "config.yaml", "tokenizer.json", "task.json", "meta.json", "manifest.json"):
            assert (run_dir / "checkpoints" / ckpt / name).is_file(), f"{ckpt}/{name} missing"
    summary = read_json(run_dir / "summary.json")
    for key in ("monitor", "best_value", "best_step", "final", "checkpoints", "parameters", "wall_seconds"):
        assert key in summary, key
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} >= {"train", "eval", "final"}
    assert all({"step", "split"} <= set(e) for e in events)
    return summary


def test_train_then_eval_reproduces_metrics(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """`tformer eval` on the best checkpoint reports exactly the test and validation metrics of training."""
    run_dir = tmp_path / "run"
    proc = run_cli(["train", *tiny, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = assert_complete_run(run_dir)
    assert summary["task"] == "classify" and summary["loss"] == "ce"
    for split in ("test", "validation"):
        out = tmp_path / f"eval_{split}"
        proc = run_cli(["eval", f"ckpt={run_dir}", f"split={split}", f"hydra.run.dir={out}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = read_json(out / "eval.json")["metrics"]
        assert got == summary["final"][split], split
    assert "accuracy" in proc.stdout  # the rich table


def test_regression_run_on_vader(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """task=regress trains on VADER with MSE and reports regression metrics on the original scale."""
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "task=regress", *tiny, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = assert_complete_run(run_dir)
    assert summary["loss"] == "mse" and summary["monitor"] == "rmse"
    test = summary["final"]["test"]
    assert {"mse", "rmse", "mae", "r2", "pearson", "spearman"} <= set(test)
    assert math.isclose(test["rmse"] ** 2, test["mse"], rel_tol=1e-9)
    assert 0.5 < test["rmse"] < 3.0  # scores lie in -4..4: the scale is the original one


def test_multirun_over_two_losses(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """`-m loss=ce,focal` makes two complete run directories."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "loss=ce,focal", *tiny, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(runs) == 2
    assert sorted(assert_complete_run(r)["loss"] for r in runs) == ["ce", "focal"]


def test_local_files_with_sentence_pairs(tmp_path: Path, run_cli: Callable) -> None:
    """data=local trains from CSV files with a second text column; validation is carved from train."""
    rows = ["premise,hypothesis,label"]
    for i in range(240):
        a, b = f"the cat number {i} sits", f"a cat {i} is sitting" if i % 2 else f"dogs run {i} fast"
        rows.append(f"{a},{b},{'entail' if i % 2 else 'other'}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(rows[:41]) + "\n")
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "data=local", "data.train=train.csv", "data.test=test.csv",
                    "data.text_column=premise", "data.text_pair_column=hypothesis", "model=tiny",
                    "trainer=debug", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = assert_complete_run(run_dir)
    assert summary["examples"] == {"train": 216, "validation": 24, "test": 40}


def test_multilabel_from_jsonl(tmp_path: Path, run_cli: Callable) -> None:
    """task=multilabel reads label lists from JSON Lines and trains with per-label BCE."""
    topics = ["sport", "money", "music"]
    lines = []
    for i in range(200):
        labels = [t for j, t in enumerate(topics) if (i >> j) & 1]
        lines.append(json.dumps({"text": " ".join(labels) + f" item {i}", "label": labels}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "task=multilabel", "data.train=train.jsonl", "loss.pos_weight=auto", "model=tiny",
                    "trainer=debug", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = assert_complete_run(run_dir)
    assert {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"} <= set(summary["final"]["validation"])


@pytest.mark.parametrize(("args", "needles"), [
    (["train", "trainer.max_stepz=3"], ["max_stepz"]),
    (["train", "loss=mse"], ["does not fit", "loss=ce"]),
    (["train", "data=local", "data.train=missing.csv"], ["missing.csv", "does not exist"]),
    (["eval", "ckpt=nowhere"], ["nowhere", "does not exist"]),
    (["trian"], ["unknown command", "train"]),
])
def test_user_mistakes_exit_nonzero_without_traceback(tmp_path: Path, args: list[str], needles: list[str],
                                                      run_cli: Callable) -> None:
    """Bad input gets a message naming the problem, a non-zero exit, and no Python traceback."""
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"] if args[0] in ("train", "eval") else args,
                   cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
    assert "Traceback" not in err


def test_corrupt_checkpoint_is_refused(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """A checkpoint whose weights changed after saving is refused with a hash mismatch, exit 2."""
    run_dir = tmp_path / "run"
    proc = run_cli(["train", *tiny, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = run_dir / "checkpoints" / "best" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = run_cli(["eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'ev'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_help_cfg_and_module_entry(tmp_path: Path, run_cli: Callable) -> None:
    """`--help` lists the groups, `--cfg job` prints the composed config, `python -m` is the same CLI."""
    proc = run_cli(["train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "loss: " in proc.stdout and "task: " in proc.stdout
    proc = run_cli(["train", "task=regress", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0 and "name: mse" in proc.stdout and "name: vader" in proc.stdout
    proc = run_cli([], cwd=tmp_path)
    assert proc.returncode == 2 and "usage: tformer" in proc.stdout
