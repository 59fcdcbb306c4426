"""A learning test on real data: a small encoder beats the majority class clearly on Rotten Tomatoes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_train

from transformer_cli.run import train

pytestmark = pytest.mark.slow

MAJORITY = 0.578  # share of "fresh" snippets (DATASETS.md); our test split has 725 / 1307 = 0.555


def test_small_encoder_learns_rotten_tomatoes(tmp_path: Path) -> None:
    """2,000 training snippets, 5 epochs of the small model: test accuracy well above the majority class."""
    cfg = compose_train(["data.max_train_examples=2000", "trainer.max_epochs=5", "trainer.progress=false"])
    best = train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    test = summary["final"]["test"]
    print(f"validation accuracy {best:.4f}, test {test}")
    assert test["accuracy"] > MAJORITY + 0.05  # measured about 0.69 on 2 CPU cores in ~25 s
    assert test["mcc"] > 0.2
    losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "train"]
    assert losses[-1] < losses[0] - 0.1  # training loss goes down
