"""`tformer predict`: input parsing and its errors (fast), each task's records (fast, from made-up outputs),
and end to end on tiny trained checkpoints (slow): files, stdin, ids, labels, probabilities, the original
regression scale, agreement with `eval`, and malformed input that writes nothing."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, TINY, compose_train
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError
from transformer_cli.predict import Columns, predict, read_inputs, write_lines
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask
from transformer_cli.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from transformer_cli.tasks.regress import RegressConfig, RegressTask
from transformer_cli.validate import register_schemas

TEXT = Columns("text", None)
PAIRS = Columns("premise", "hypothesis")


def compose_predict(overrides: list[str]) -> DictConfig:
    """The real `tformer predict` config with overrides."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("predict", overrides=overrides)


def write(path: Path, data: str | bytes) -> str:
    """Write a small input file; returns its path as a string."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


# --- reading inputs (fast) ------------------------------------------------------------------


def test_txt_one_text_per_line(tmp_path: Path) -> None:
    got = read_inputs(write(tmp_path / "a.txt", "\ufefffirst line\r\n\n   \nthird, with comma\n"), "auto", TEXT)
    assert got.ids == [1, 4] and got.texts == ["first line", "third, with comma"] and got.pairs is None


def test_csv_with_and_without_ids(tmp_path: Path) -> None:
    data = 'text,id,label\n"a, quoted\nmulti-line text",x1,pos\n\nplain,x2,\n'
    got = read_inputs(write(tmp_path / "a.csv", data), "auto", TEXT)
    assert got.ids == ["x1", "x2"] and got.texts == ["a, quoted\nmulti-line text", "plain"]
    got = read_inputs(write(tmp_path / "b.tsv", "label\ttext\npos\tone\nneg\ttwo\n"), "auto", TEXT)
    assert got.ids == [2, 3] and got.texts == ["one", "two"]  # line numbers: the header is line 1


def test_jsonl_pairs_ids_and_compression(tmp_path: Path) -> None:
    lines = ['{"premise": "p1", "hypothesis": "h1", "id": 7}', "", '{"premise": 3, "hypothesis": "h2"}']
    data = ("\n".join(lines) + "\n").encode()
    for name, blob in (("a.jsonl", data), ("a.jsonl.gz", gzip.compress(data)), ("a.json.bz2", bz2.compress(data))):
        got = read_inputs(write(tmp_path / name, blob), "auto", PAIRS)
        assert got.ids == [7, 3] and got.texts == ["p1", "3"] and got.pairs == ["h1", "h2"]


def test_stdin_is_txt_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        def __init__(self, data: bytes) -> None:
            import io

            self.buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin(b"one\ntwo\n"))
    assert read_inputs("-", "auto", TEXT).texts == ["one", "two"]
    monkeypatch.setattr(sys, "stdin", Stdin(b'{"text": "j"}\n'))
    assert read_inputs("-", "jsonl", TEXT).texts == ["j"]


@pytest.mark.parametrize(("name", "data", "needles"), [
    ("a.jsonl", '{"text": "ok"}\n{"text": "ok"\n', ["a.jsonl line 2", "not valid JSON"]),
    ("a.jsonl", '{"text": "ok"}\n\n["text"]\n', ["line 3", "a JSON list, not an object"]),
    ("a.jsonl", '{"text": "ok"}\n{"txt": "typo"}\n', ["line 2", "has no 'text'"]),
    ("a.jsonl", '{"text": null}\n', ["line 1", "empty (null) 'text'"]),
    ("a.jsonl", '{"text": {"nested": 1}}\n', ["line 1", "'text' is a dict, not text"]),
    ("a.txt", b"fine\nbad \xff byte\n", ["a.txt line 2", "not UTF-8", "0xff", "column 5"]),
    ("a.csv", "text,id\nok,1\nextra,2,cell\n", ["a.csv line 3", "3 cells, the header has 2"]),
    ("a.csv", 'text\n"ok"\n"multi\nline" x\nshort,row\n', ["a.csv line 5", "2 cells, the header has 1"]),
    ("a.csv", "review,id\nok,1\n", ["a.csv line 1", "no column 'text'", "review, id"]),
])
def test_malformed_input_names_file_and_line(tmp_path: Path, name: str, data: str | bytes,
                                             needles: list[str]) -> None:
    with pytest.raises(TformerError) as err:
        read_inputs(write(tmp_path / name, data), "auto", TEXT)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "nothing was written" in msg or "header" in msg


def test_format_and_pair_problems(tmp_path: Path) -> None:
    with pytest.raises(TformerError, match="cannot tell the format"):
        read_inputs(write(tmp_path / "a.parquet", "x"), "auto", TEXT)
    with pytest.raises(TformerError, match="format='xml' is not supported"):
        read_inputs(write(tmp_path / "a.txt", "x"), "xml", TEXT)
    with pytest.raises(TformerError, match="sentence pairs"):
        read_inputs(write(tmp_path / "a.txt", "x"), "auto", PAIRS)
    with pytest.raises(TformerError, match="does not exist"):
        read_inputs(str(tmp_path / "missing.txt"), "auto", TEXT)
    assert read_inputs(write(tmp_path / "empty.csv", ""), "auto", TEXT).texts == []


def test_output_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "deep" / "out.jsonl"
    write_lines(['{"id": 1}\n', '{"id": 2}\n'], out)
    assert out.read_text() == '{"id": 1}\n{"id": 2}\n'

    class Boom(Exception):
        pass

    def fail(*args: Any) -> None:
        raise Boom

    monkeypatch.setattr("transformer_cli.predict.os.replace", fail)
    with pytest.raises(Boom):
        write_lines(['{"id": 3}\n'], out)
    assert out.read_text() == '{"id": 1}\n{"id": 2}\n'  # the old file untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no temporary left behind


def test_predict_config_composes() -> None:
    cfg = compose_predict(["ckpt=some/run", "input=in.csv", "top_k=2"])
    assert cfg.output == "-" and cfg.format == "auto" and cfg.top_k == 2 and cfg.batch_size is None
    with pytest.raises(Exception, match="top_kk"):
        compose_predict(["ckpt=x", "top_kk=2"])


# --- records of each task (fast, from made-up outputs) --------------------------------------


def test_classify_records() -> None:
    task = ClassifyTask(OmegaConf.structured(ClassifyConfig), "index", {"labels": ["a", "b", "c"]})
    records = task.records(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), top_k=2)
    assert [r["label"] for r in records] == ["b", "a"]
    for r in records:
        assert math.isclose(sum(r["probabilities"].values()), 1.0, rel_tol=1e-6)
        assert [t["label"] for t in r["top_k"]][0] == r["label"] and len(r["top_k"]) == 2
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
    assert [t["label"] for t in records[0]["top_k"]] == ["b", "c"]
    assert "top_k" not in task.records(torch.zeros(1, 3), top_k=0)[0]
    binary = ClassifyTask(OmegaConf.structured(ClassifyConfig), "binary", {"labels": ["neg", "pos"]})
    rec = binary.records(torch.tensor([2.0]), top_k=5)[0]  # one logit
    assert rec["label"] == "pos" and rec["probability"] == pytest.approx(1 / (1 + math.exp(-2)))
    assert len(rec["top_k"]) == 2 and math.isclose(sum(rec["probabilities"].values()), 1.0, rel_tol=1e-6)


def test_regress_and_multilabel_records() -> None:
    task = RegressTask(OmegaConf.structured(RegressConfig), "real", {"mean": 10.0, "std": 4.0})
    assert task.records(torch.tensor([0.0, 1.5]), top_k=3) == [{"value": 10.0}, {"value": 16.0}]
    ml = MultiLabelTask(OmegaConf.structured(MultiLabelConfig), "multilabel", {"labels": ["x", "y", "z"]})
    rec = ml.records(torch.tensor([[2.0, -1.0, 0.5]]), top_k=1)[0]
    assert rec["labels"] == ["x", "z"] and [t["label"] for t in rec["top_k"]] == ["x"]
    assert rec["probabilities"]["y"] == pytest.approx(1 / (1 + math.e))


# --- end to end on tiny checkpoints (slow) --------------------------------------------------


def train_tiny(tmp: Path, overrides: list[str]) -> Path:
    """Train a tiny model in-process; returns its run directory."""
    from transformer_cli.run import train

    run_dir = tmp / "run"
    run_dir.mkdir(parents=True)
    train(compose_train(overrides), run_dir)
    return run_dir


def run_predict(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m transformer_cli predict ...` as a user runs it, optionally fed on stdin."""
    return subprocess.run([sys.executable, "-m", "transformer_cli", "predict", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def predict_file(ckpt: Path, input_path: Path, output: Path, *extra: str) -> list[dict[str, Any]]:
    """Run predict in-process on a file and read the JSON Lines back."""
    predict(compose_predict([f"ckpt={ckpt}", f"input={input_path}", f"output={output}", *extra]))
    return [json.loads(line) for line in output.read_text().splitlines()]


def summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rotten Tomatoes, TINY settings."""
    return train_tiny(tmp_path_factory.mktemp("classify"), TINY)


@pytest.fixture(scope="module")
def regress_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prices in the hundreds from a local CSV: far from 0, so the original scale shows."""
    tmp = tmp_path_factory.mktemp("regress")
    words = ["cheap", "plain", "fine", "good", "grand", "luxury"]
    rows = [("text", "price")] + [(f"{words[i % 6]} item {i}", str(200 + 40 * (i % 6) + i % 7)) for i in range(300)]
    for name, part in (("train.csv", rows[:241]), ("test.csv", rows[:1] + rows[241:])):
        with open(tmp / name, "w", newline="") as f:
            csv.writer(f).writerows(part)
    return train_tiny(tmp, ["task=regress", "data=local", f"data.train={tmp / 'train.csv'}",
                            f"data.test={tmp / 'test.csv'}", "data.label_column=price", "model=tiny",
                            "trainer=debug", "trainer.max_steps=40", "trainer.eval_every=20", "optim.lr=3e-3"])


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Topics from a local JSON Lines file."""
    tmp = tmp_path_factory.mktemp("multilabel")
    topics = ["sport", "money", "music"]
    lines = []
    for i in range(200):
        labels = [t for j, t in enumerate(topics) if (i >> j) & 1]
        lines.append(json.dumps({"text": " ".join(labels) + f" item {i}", "label": labels}))
    (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    return train_tiny(tmp, ["task=multilabel", "data=local", f"data.train={tmp / 'train.jsonl'}", "model=tiny",
                            "trainer=debug"])


@pytest.mark.slow
def test_classify_file_matches_eval(classify_run: Path, tmp_path: Path) -> None:
    """Predictions on the test rows reproduce the accuracy `train` reported for its best checkpoint."""
    from transformer_cli.data.builtin import prepare_builtin

    with open(prepare_builtin("rotten_tomatoes")["test"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:200]  # TINY: data.max_eval_examples=200, the rows eval scored
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
def test_classify_stdin_to_stdout_and_malformed_input(classify_run: Path, tmp_path: Path) -> None:
    proc = run_predict([f"ckpt={classify_run}", "top_k=2", f"hydra.run.dir={tmp_path / 'log'}"], tmp_path,
                       stdin="A moving, funny film.\n\nTedious and flat.\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds nothing else
    assert [r["id"] for r in records] == [1, 3] and all(len(r["top_k"]) == 2 for r in records)
    assert "2 predictions" in proc.stderr and (tmp_path / "log" / "predict.log").is_file()
    same = predict_file(classify_run, Path(write(tmp_path / "in.txt", "A moving, funny film.\n\nTedious and flat.\n")),
                        tmp_path / "same.jsonl", "top_k=2")
    assert same == records

    bad = write(tmp_path / "bad.jsonl", '{"id": "a", "text": "fine"}\n{"id": "b", "txt": "typo"}\n')
    proc = run_predict([f"ckpt={classify_run}", f"input={bad}", "output=out.jsonl",
                        f"hydra.run.dir={tmp_path / 'log2'}"], tmp_path)
    assert proc.returncode == 2 and "bad.jsonl line 2" in proc.stderr and "has no 'text'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.slow
def test_regress_values_on_original_scale_match_eval(regress_run: Path, tmp_path: Path) -> None:
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
def test_multilabel_records(multilabel_run: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(["sport item 1", "music money", "nothing"])]
    records = predict_file(multilabel_run, Path(write(tmp_path / "in.jsonl", "\n".join(lines) + "\n")),
                           tmp_path / "p.jsonl", "top_k=3")
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    for r in records:
        probs = r["probabilities"]
        assert set(probs) == {"sport", "money", "music"} and all(0.0 <= p <= 1.0 for p in probs.values())
        assert r["labels"] == [name for name in ("money", "music", "sport") if probs[name] > 0.5]
        assert [t["probability"] for t in r["top_k"]] == sorted(probs.values(), reverse=True)


def test_predict_records_come_from_the_task_in_input_order() -> None:
    """The task makes each batch's records (a generating task runs the model itself); predict only orders them."""
    from transformer_cli.device import Precision
    from transformer_cli.predict import predict_records

    class Echo:
        def predict(self, model: Any, batch: Any, top_k: int) -> list[dict[str, Any]]:
            return [{"text": f"len {int(n)}", "score": -1.0} for n in batch.mask.sum(1)]

    ids = [torch.arange(n).numpy().astype("int32") for n in (5, 2, 9)]
    records = predict_records(torch.nn.Identity(), Echo(), ids, 2, Precision("fp32", torch.device("cpu")), 0)
    assert records == [{"text": "len 5", "score": -1.0}, {"text": "len 2", "score": -1.0},
                       {"text": "len 9", "score": -1.0}]
