"""`tformer predict` end to end on tiny trained checkpoints: files, stdin, ids, labels, probabilities, the original
regression scale, agreement with `eval`, and malformed input that writes nothing."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig

from transformer_cli.predict import predict


def train_tiny(tmp: Path, cfg: DictConfig) -> Path:
    """Train a tiny model in-process on a composed config; returns its run directory."""
    from transformer_cli.run import train

    run_dir = tmp / "run"
    run_dir.mkdir(parents=True)
    train(cfg, run_dir)
    return run_dir


@pytest.fixture
def run_predict(repo: Path) -> Callable[..., subprocess.CompletedProcess]:
    """run_predict(args, cwd, stdin=None): `python -m transformer_cli predict ...` as a user runs it, optionally
    fed on stdin."""
    def run_predict(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "transformer_cli", "predict", *args], cwd=cwd, input=stdin,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(repo)})

    return run_predict


@pytest.fixture
def predict_file(compose_predict: Callable) -> Callable[..., list[dict[str, Any]]]:
    """predict_file(ckpt, input_path, output, *extra): run predict in-process on a file and read the JSON Lines
    back."""
    def predict_file(ckpt: Path, input_path: Path, output: Path, *extra: str) -> list[dict[str, Any]]:
        predict(compose_predict([f"ckpt={ckpt}", f"input={input_path}", f"output={output}", *extra]))
        return [json.loads(line) for line in output.read_text().splitlines()]

    return predict_file


def summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory, tiny: list[str], compose_train: Callable) -> Path:
    """Rotten Tomatoes, the `tiny` settings."""
    return train_tiny(tmp_path_factory.mktemp("classify"), compose_train(tiny))


@pytest.fixture(scope="module")
def regress_run(tmp_path_factory: pytest.TempPathFactory, compose_train: Callable) -> Path:
    """Prices in the hundreds from a local CSV: far from 0, so the original scale shows."""
    tmp = tmp_path_factory.mktemp("regress")
    words = ["cheap", "plain", "fine", "good", "grand", "luxury"]
    rows = [("text", "price")] + [(f"{words[i % 6]} item {i}", str(200 + 40 * (i % 6) + i % 7)) for i in range(300)]
    for name, part in (("train.csv", rows[:241]), ("test.csv", rows[:1] + rows[241:])):
        with open(tmp / name, "w", newline="") as f:
            csv.writer(f).writerows(part)
    return train_tiny(tmp, compose_train(["task=regress", "data=local", f"data.train={tmp / 'train.csv'}",
                                          f"data.test={tmp / 'test.csv'}", "data.label_column=price", "model=tiny",
                                          "trainer=debug", "trainer.max_steps=40", "trainer.eval_every=20",
                                          "optim.lr=3e-3"]))


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory, compose_train: Callable) -> Path:
    """Topics from a local JSON Lines file."""
    tmp = tmp_path_factory.mktemp("multilabel")
    topics = ["sport", "money", "music"]
    lines = []
    for i in range(200):
        labels = [t for j, t in enumerate(topics) if (i >> j) & 1]
        lines.append(json.dumps({"text": " ".join(labels) + f" item {i}", "label": labels}))
    (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    return train_tiny(tmp, compose_train(["task=multilabel", "data=local", f"data.train={tmp / 'train.jsonl'}",
                                          "model=tiny", "trainer=debug"]))


@pytest.mark.slow
def test_classify_file_matches_eval(classify_run: Path, tmp_path: Path, predict_file: Callable) -> None:
    """Predictions on the test rows reproduce the accuracy `train` reported for its best checkpoint."""
    from transformer_cli.data.builtin import prepare_builtin

    with open(prepare_builtin("rotten_tomatoes")["test"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:200]  # tiny: data.max_eval_examples=200, the rows eval scored
    subset = tmp_path / "first200.csv"
    with open(subset, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    records = predict_file(classify_run, subset, tmp_path / "p.jsonl", "top_k=1")
    assert [r["id"] for r in records] == list(range(2, 202))  # line numbers: the header is line 1
    for r in records:
        assert r["label"] in {"fresh", "rotten"} and set(r["probabilities"]) == {"fresh", "rotten"}
        assert math.isclose(sum(r["probabilities"].values()), 1.0, rel_tol=1e-6)
        assert r["top_k"] == [{"label": r["label"], "probability": r["probability"]}]
    # same rows, same batches as eval: the same accuracy, exactly
    accuracy = sum(r["label"] == row["label"] for r, row in zip(records, rows)) / len(rows)
    assert accuracy == summary(classify_run)["final"]["test"]["accuracy"]


@pytest.mark.slow
def test_classify_stdin_to_stdout_and_malformed_input(classify_run: Path, tmp_path: Path, write_input: Callable,
                                                      predict_file: Callable, run_predict: Callable) -> None:
    proc = run_predict([f"ckpt={classify_run}", "top_k=2", f"hydra.run.dir={tmp_path / 'log'}"], tmp_path,
                       stdin="A moving, funny film.\n\nTedious and flat.\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds nothing else
    assert [r["id"] for r in records] == [1, 3] and all(len(r["top_k"]) == 2 for r in records)
    assert "2 predictions" in proc.stderr and (tmp_path / "log" / "predict.log").is_file()
    same = predict_file(classify_run,
                        Path(write_input(tmp_path / "in.txt", "A moving, funny film.\n\nTedious and flat.\n")),
                        tmp_path / "same.jsonl", "top_k=2")
    assert same == records

    bad = write_input(tmp_path / "bad.jsonl", '{"id": "a", "text": "fine"}\n{"id": "b", "txt": "typo"}\n')
    proc = run_predict([f"ckpt={classify_run}", f"input={bad}", "output=out.jsonl",
                        f"hydra.run.dir={tmp_path / 'log2'}"], tmp_path)
    assert proc.returncode == 2 and "bad.jsonl line 2" in proc.stderr and "has no 'text'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.slow
def test_regress_values_on_original_scale_match_eval(regress_run: Path, tmp_path: Path, predict_file: Callable,
                                                     run_predict: Callable) -> None:
    test_csv = regress_run.parent / "test.csv"
    with open(test_csv, newline="") as f:
        targets = [float(r["price"]) for r in csv.DictReader(f)]
    records = predict_file(regress_run, test_csv, tmp_path / "p.jsonl")
    values = [r["value"] for r in records]
    assert set(records[0]) == {"id", "value"} and len(values) == len(targets) == 60
    assert 150 < sum(values) / len(values) < 450  # the prices' scale, not the standardised one
    final = summary(regress_run)["final"]["test"]
    mse = sum((v - t) ** 2 for v, t in zip(values, targets)) / len(values)
    mae = sum(abs(v - t) for v, t in zip(values, targets)) / len(values)
    # eval's targets went through float32 standardisation, hence 1e-6 and not exact
    assert mse == pytest.approx(final["mse"], rel=1e-6) and mae == pytest.approx(final["mae"], rel=1e-6)
    # CSV on stdin, to a file
    proc = run_predict([f"ckpt={regress_run}", "input=-", "format=csv", "output=out.jsonl",
                        f"hydra.run.dir={tmp_path / 'log'}"], tmp_path, stdin=test_csv.read_text())
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr[-3000:]
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == records


@pytest.mark.slow
def test_multilabel_records(multilabel_run: Path, tmp_path: Path, write_input: Callable,
                            predict_file: Callable) -> None:
    lines = [json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(["sport item 1", "music money", "nothing"])]
    records = predict_file(multilabel_run, Path(write_input(tmp_path / "in.jsonl", "\n".join(lines) + "\n")),
                           tmp_path / "p.jsonl", "top_k=3")
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    for r in records:
        probs = r["probabilities"]
        assert set(probs) == {"sport", "money", "music"} and all(0.0 <= p <= 1.0 for p in probs.values())
        assert r["labels"] == [name for name in ("money", "music", "sport") if probs[name] > 0.5]
        assert [t["probability"] for t in r["top_k"]] == sorted(probs.values(), reverse=True)
