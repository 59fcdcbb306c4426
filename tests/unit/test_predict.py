"""`tformer predict`: input parsing and its errors, each task's records (from made-up outputs), and records put
back in input order (on trained checkpoints: tests/e2e/test_predict.py)."""

from __future__ import annotations

import bz2
import gzip
import math
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.predict import Columns, read_inputs, write_lines
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask
from transformer_cli.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from transformer_cli.tasks.regress import RegressConfig, RegressTask

TEXT = Columns("text", None)
PAIRS = Columns("premise", "hypothesis")


# --- reading inputs (fast) ------------------------------------------------------------------


def test_txt_one_text_per_line(tmp_path: Path, write_input: Callable) -> None:
    got = read_inputs(write_input(tmp_path / "a.txt", "\ufefffirst line\r\n\n   \nthird, with comma\n"), "auto", TEXT)
    assert got.ids == [1, 4] and got.texts == ["first line", "third, with comma"] and got.pairs is None


def test_csv_with_and_without_ids(tmp_path: Path, write_input: Callable) -> None:
    data = 'text,id,label\n"a, quoted\nmulti-line text",x1,pos\n\nplain,x2,\n'
    got = read_inputs(write_input(tmp_path / "a.csv", data), "auto", TEXT)
    assert got.ids == ["x1", "x2"] and got.texts == ["a, quoted\nmulti-line text", "plain"]
    got = read_inputs(write_input(tmp_path / "b.tsv", "label\ttext\npos\tone\nneg\ttwo\n"), "auto", TEXT)
    assert got.ids == [2, 3] and got.texts == ["one", "two"]  # line numbers: the header is line 1


def test_jsonl_pairs_ids_and_compression(tmp_path: Path, write_input: Callable) -> None:
    lines = ['{"premise": "p1", "hypothesis": "h1", "id": 7}', "", '{"premise": 3, "hypothesis": "h2"}']
    data = ("\n".join(lines) + "\n").encode()
    for name, blob in (("a.jsonl", data), ("a.jsonl.gz", gzip.compress(data)), ("a.json.bz2", bz2.compress(data))):
        got = read_inputs(write_input(tmp_path / name, blob), "auto", PAIRS)
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
def test_malformed_input_names_file_and_line(tmp_path: Path, name: str, data: str | bytes, needles: list[str],
                                             write_input: Callable) -> None:
    with pytest.raises(TformerError) as err:
        read_inputs(write_input(tmp_path / name, data), "auto", TEXT)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "nothing was written" in msg or "header" in msg


def test_format_and_pair_problems(tmp_path: Path, write_input: Callable) -> None:
    with pytest.raises(TformerError, match="cannot tell the format"):
        read_inputs(write_input(tmp_path / "a.parquet", "x"), "auto", TEXT)
    with pytest.raises(TformerError, match="format='xml' is not supported"):
        read_inputs(write_input(tmp_path / "a.txt", "x"), "xml", TEXT)
    with pytest.raises(TformerError, match="sentence pairs"):
        read_inputs(write_input(tmp_path / "a.txt", "x"), "auto", PAIRS)
    with pytest.raises(TformerError, match="does not exist"):
        read_inputs(str(tmp_path / "missing.txt"), "auto", TEXT)
    assert read_inputs(write_input(tmp_path / "empty.csv", ""), "auto", TEXT).texts == []


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


def test_predict_config_composes(compose_predict: Callable) -> None:
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
