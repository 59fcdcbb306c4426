"""The run card end to end: running its command again reproduces the run; the logged files agree."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.writers import read_jsonl


@pytest.mark.slow
def test_card_command_reproduces_the_run(tmp_path: Path, tiny: list[str], run_cli: Callable, read_csv: Callable,
                                         scalars: Callable) -> None:
    """The card lists exactly the overrides given; running its command again gives the same final metrics.

    The run logs to TensorBoard too (one training run serves both checks): its events, read with TensorBoard's
    own reader, hold the same scalars as metrics.jsonl, and metrics.csv holds every record."""
    pytest.importorskip("tensorboard")
    overrides = [*tiny, "seed=3", "trainer.max_steps=12", "optim.lr=2e-3", "logger=tensorboard"]
    first = tmp_path / "first"
    proc = run_cli(["train", *overrides, f"hydra.run.dir={first}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_logged_files(first, read_csv, scalars)
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


def check_logged_files(run_dir: Path, read_csv: Callable, scalars: Callable) -> None:
    """TensorBoard scalars and metrics.csv rows agree with metrics.jsonl (read with the conftest readers)."""
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
