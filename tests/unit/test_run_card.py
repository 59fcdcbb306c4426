"""The run card (README.md in each run directory): exact overrides that reproduce the run, data hashes, code."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.run_card import (
    data_fingerprints,
    git_state,
    reproduce_args,
    reproduce_command,
    write_run_card,
)


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


def test_data_fingerprints_are_sha256_of_local_files(tmp_path: Path, compose_train: Callable) -> None:
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


def test_card_sections_from_a_summary(tmp_path: Path, compose_train: Callable) -> None:
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
