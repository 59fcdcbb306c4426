"""The run card (README.md in each run directory): exact overrides that reproduce the run, data hashes, code."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, compose_train, run_cli

from transformer_cli.run_card import (
    data_fingerprints,
    git_state,
    reproduce_args,
    reproduce_command,
    write_run_card,
)
from transformer_cli.writers import read_jsonl


def test_reproduce_args_keep_every_override_and_the_config_dirs() -> None:
    """User config dirs come first, then hydra.searchpath, then the task overrides verbatim, minus resume."""
    hydra = {
        "task": ["model=tiny", "data.labels=[a,b]", "+extra=1", "resume=auto", "seed=3"],
        "hydra": ["hydra.run.dir=/x", "hydra.searchpath=[file:///y]"],
        "sources": [{"provider": "main", "path": "/conf"}, {"provider": "tformer --config-dir", "path": "/mine"}],
    }
    assert reproduce_args(hydra) == ["--config-dir", "/mine", "hydra.searchpath=[file:///y]", "model=tiny",
                                     "data.labels=[a,b]", "+extra=1", "seed=3"]
    command = reproduce_command(hydra)
    assert shlex.split(command)[2:] == reproduce_args(hydra)  # quoted so that a shell gives the same words


def test_data_fingerprints_are_sha256_of_local_files(tmp_path: Path) -> None:
    """Each local split file is listed with its size and sha256; hub data has no files to hash."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,x\nb,y\n")
    cfg = compose_train(["data=local", f"data.train={train}"])
    ((split, path, size, digest),) = data_fingerprints(cfg.data)
    assert (split, path, size) == ("train", str(train), train.stat().st_size)
    assert digest == hashlib.sha256(train.read_bytes()).hexdigest()
    assert data_fingerprints(compose_train(["data=hub", "data.name=imdb"]).data) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_names_the_commit_and_uncommitted_changes(tmp_path: Path) -> None:
    """A clean checkout gives its commit; a changed tracked file adds a note; outside a repo, None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    assert git_state(tmp_path) is None
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == head
    assert git_state(tmp_path, must_track=tmp_path / "b.py") is None  # untracked code is not this commit
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == f"{head} (with uncommitted changes)"


def test_card_sections_from_a_summary(tmp_path: Path) -> None:
    """Without Hydra's record the card still describes the run and says the overrides are unknown."""
    cfg = compose_train(["data=local", "data.train=nowhere.csv", "model=tiny"])
    summary = {"monitor": "accuracy", "best_value": 0.75, "best_step": 10, "steps": 20, "stop_reason": "completed",
               "examples": {"train": 90, "validation": 10}, "parameters": 1234, "vocab_size": 99, "epochs": 2.0,
               "train_seconds": 1.5, "final": {"validation": {"loss": 0.5, "accuracy": 0.75, "count": 10}},
               "environment": {"tformer": "0", "torch": "2"}, "device": "cpu", "precision": "fp32"}
    text = write_run_card(tmp_path, cfg, summary).read_text()
    for needle in ("# Run card", "## What was trained", "1 layer,", "1,234 parameters", "overrides are unknown",
                   "| validation | 0.5000 | 0.7500 | 10 |", "## Environment", "tformer source"):
        assert needle in text, needle


@pytest.mark.slow
def test_card_command_reproduces_the_run(tmp_path: Path) -> None:
    """The card lists exactly the overrides given; running its command again gives the same final metrics.

    The run logs to TensorBoard too (one training run serves both checks): its events, read with TensorBoard's
    own reader, hold the same scalars as metrics.jsonl, and metrics.csv holds every record."""
    pytest.importorskip("tensorboard")
    overrides = [*TINY, "seed=3", "trainer.max_steps=12", "optim.lr=2e-3", "logger=tensorboard"]
    first = tmp_path / "first"
    proc = run_cli(["train", *overrides, f"hydra.run.dir={first}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_logged_files(first)
    card = (first / "README.md").read_text()
    command = re.search(r"```bash\n(tformer train .*)\n```", card).group(1)
    args = shlex.split(command)[2:]
    assert args == overrides
    assert "![training and validation curves](curves.png)" in card and "sha256" in card
    second = tmp_path / "second"
    proc = run_cli(["train", *args, f"hydra.run.dir={second}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, second))
    assert a["final"] == b["final"] and a["best_step"] == b["best_step"]
    second_card = (second / "README.md").read_text()
    assert second_card.count(command) == 1
    assert data_section(second_card) == data_section(card)  # the same files, the same hashes


def data_section(card: str) -> str:
    """The '## Data' section of a run card."""
    return card.split("## Data", 1)[1].split("\n## ", 1)[0]


def check_logged_files(run_dir: Path) -> None:
    """TensorBoard scalars and metrics.csv rows agree with metrics.jsonl."""
    from test_logging import read_csv, scalars

    records = read_jsonl(run_dir / "metrics.jsonl")
    got = scalars(run_dir / "tensorboard")
    for event, prefix in (("train", "train"), ("eval", "validation")):
        expected = [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if r["event"] == event]
        assert got[f"{prefix}/loss"] == expected, event
    final = next(r for r in records if r["event"] == "final" and r["split"] == "test")
    assert got["final/test/accuracy"] == [(final["step"], pytest.approx(final["accuracy"], rel=1e-6))]
    rows = read_csv(run_dir / "metrics.csv")
    assert [(r["event"], int(r["step"]), float(r["loss"])) for r in rows] == \
        [(r["event"], r["step"], r["loss"]) for r in records]
