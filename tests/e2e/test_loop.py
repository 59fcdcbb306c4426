"""The loop end to end: torch.compile trains like eager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest


@pytest.mark.slow
def test_compiled_training_agrees_with_eager(tmp_path: Path, tiny: list[str], compose_train: Callable) -> None:
    """trainer.compile=true (torch.compile, dynamic shapes) trains to the same losses as eager, within float
    tolerance, over batches of different lengths; checkpoints keep plain parameter names."""
    from safetensors.torch import load_file

    from transformer_cli.run import train

    base = [*tiny, "model.dropout=0.0", "task.head_dropout=0.0", "trainer.max_steps=6", "trainer.eval_every=3",
            "trainer.log_every=1", "trainer.threads=1"]
    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / f"compiled-{compiled}"
        run_dir.mkdir()
        train(compose_train([*base, f"trainer.compile={str(compiled).lower()}"]), run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [r["loss"] for r in rows if r["event"] in ("train", "eval")]
        names = set(load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors")))
        assert not any("_orig_mod" in n for n in names)
    assert len(losses[True]) == len(losses[False]) == 6 + 2
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
