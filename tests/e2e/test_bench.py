"""The benchmark script's smoke run, so it cannot rot (no timing assertions).

scripts/ is run from the repository root, not installed: pyproject.toml's pytest `pythonpath` puts the root on
sys.path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench import runner


def _finite_numbers(tree: object) -> bool:
    """Every number in a JSON tree is finite (None only where a value is absent)."""
    if isinstance(tree, dict):
        return all(_finite_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite_numbers(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


@pytest.mark.slow
def test_smoke_run_writes_the_expected_json(tmp_path: Path, repo: Path) -> None:
    """One smoke run with every optional row: cheaper than one run per flag."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "scripts.bench", "--smoke", "--what-if", "--full-epoch", "--commands", "--finetune",
           "--trained-decoding", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"meta", "matmul_peak", "contenders", "ratios", "padding", "memory", "sweep", "goals"} <= set(results)
    assert _finite_numbers(results)
    has_hf = "transformers" in results["meta"]["versions"]
    expected = set(runner.CONTENDERS) if has_hf else {n for n, s in runner.CONTENDERS.items() if not s.needs_hf}
    assert set(runner.WHAT_IF) <= expected  # --what-if adds every proposed change
    assert set(results["contenders"]) == expected
    if not has_hf:
        assert "Hugging Face rows skipped" in proc.stderr
    assert set(results["ratios"]) == expected - {runner.REFERENCE}
    for name, ratio in results["ratios"].items():
        for key, reference in runner.RATIO_REFERENCES.items():
            if reference != name:
                assert math.isfinite(ratio[key]["median"]) and ratio[key]["median"] > 0, (name, key)
    if has_hf:
        assert results["padded_pair"]["mfu_real"]["median"] > 0
    for c in results["contenders"].values():
        assert {"step_ms", "real_tokens_per_s", "epoch_s", "mfu_real", "mfu_padded", "epoch"} <= set(c)
        assert c["differs"] and c["mfu_peak"] in results["mfu_peaks"]
    assert all(p["rows"] > 0 and p["gflops"] > 0 for p in results["mfu_peaks"].values())
    assert set(results["padding"]) == {"rotten_tomatoes", "vader"}
    assert all(m["peak_rss_mib"] > 0 for m in results["memory"].values())
    goals = {g["goal"]: g for g in results["goals"]}
    memory_goal = goals["peak RSS while training vs the lowest contender, same batches"]
    assert memory_goal["measured"] > 0  # met or not is the benchmark's verdict, not the test's
    sweep = results["sweep"]
    assert sweep["baseline"] in sweep["rows"] and len(sweep["rows"]) == 3
    assert sweep["one_thread_over_one_job"]["median"] > 0 and sweep["one_thread_over_fighting"]["median"] > 0
    assert "Goals" in proc.stdout
    full = results["full_epoch"][runner.REFERENCE]
    assert full["epoch_s"] > 0 and full["measured_over_estimated"]["median"] > 0
    assert "full epoch: ours" in proc.stdout
    if has_hf:  # whole commands: `tformer train` against the Trainer script, on the same clock
        commands = results["commands"]
        assert len(commands["reps"]) == 1 and commands["differences"]
        for side in ("tformer", "trainer"):
            rep = commands["reps"][0][side]
            assert rep["wall_s"] > 0 and [e["epoch"] for e in rep["epochs"]] == [1, 2]
            assert 0 < rep["epochs"][0]["elapsed_s"] < rep["wall_s"] and 0 <= rep["test_accuracy"] <= 1
        assert commands["paired"]["time_to_target_ratio"]["median"] > 0
        assert "Whole commands" in proc.stdout
        finetune = results["finetune"]  # MiniLM: tformer, the plain loop and Trainer on the same weights
        assert set(finetune["sides"]) == {"tformer", "hf", "trainer"} and finetune["differences"]
        for side in ("hf", "trainer"):
            assert finetune["ratios"][side]["examples_per_s"]["median"] > 0
        assert all(goals[g]["measured"] is not None for g in goals if g.startswith("MiniLM fine-tuning"))
        assert "MiniLM fine-tuning" in proc.stdout
        decoding = results["trained_decoding"]  # a tiny G2P model trained with the CLI, decoded by both sides
        assert decoding["logits_gap"] < 1e-3 and decoding["mode"] == "smoke"
        assert set(decoding["speedup"]) == {"greedy, EOS", "greedy, full", "beam 4, EOS", "beam 4, full"}
        decoding_goals = [g for g in goals if "trained model" in g]
        assert len(decoding_goals) == 4 and all(goals[g]["measured"] > 0 for g in decoding_goals)
        assert "Decoding a trained G2P model" in proc.stdout


@pytest.mark.slow
def test_trainer_script_trains_from_scratch_and_prints_epochs_and_test_accuracy(tmp_path: Path, repo: Path) -> None:
    """The Hugging Face Trainer side of the whole-command comparison, at smoke size."""
    pytest.importorskip("transformers")
    from transformer_cli.data.builtin import prepare_builtin

    splits = prepare_builtin("rotten_tomatoes")
    cmd = [sys.executable, "-m", "scripts.bench.hf_trainer_glue", *(str(splits[s]) for s in ("train", "validation",
           "test")), "--d-model=32", "--layers=1", "--heads=2", "--d-ff=64", "--vocab-size=300", "--epochs=2",
           "--max-examples=96", f"--output-dir={tmp_path / 'trainer'}"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [e["epoch"] for e in out["epochs"]] == [1.0, 2.0]
    assert out["epochs"][0]["elapsed_s"] < out["epochs"][1]["elapsed_s"] < out["wall_seconds"]
    assert 0 <= out["metrics"]["test"]["accuracy"] <= 1 and out["train_examples"] == 2 * 96
    assert out["tokenizer_seconds"] > 0 and out["vocab_size"] <= 300
    assert 0 < out["fit_seconds"] <= out["train_seconds"]  # without loading the best checkpoint at the end
    assert len(list((tmp_path / "trainer").glob("checkpoint-*"))) == 2  # one per epoch
