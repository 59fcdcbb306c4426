"""Metric writers: metrics.jsonl (strict JSON, appended, read back whole) and metrics.csv always, TensorBoard on
request, each read back with its own reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError
from transformer_cli.writers import CsvWriter, JsonlWriter, open_writers, read_jsonl

RECORDS = [
    {"event": "train", "split": "train", "step": 5, "epoch": 0, "lr": 1e-3, "loss": 0.7, "time": 1.0},
    {"event": "eval", "split": "validation", "step": 5, "epoch": 0, "lr": 1e-3, "loss": 0.6, "accuracy": 0.55,
     "count": 200, "time": 2.0},
    {"event": "train", "split": "train", "step": 10, "epoch": 0, "lr": 5e-4, "loss": 0.5, "time": 3.0},
    {"event": "final", "split": "test", "step": 5, "loss": float("nan"), "accuracy": 0.5, "count": 100, "time": 4.0},
]


def test_csv_widens_its_header_and_keeps_every_row(tmp_path: Path, read_csv: Callable) -> None:
    """Rows with new keys rewrite the header; every record is a row; NaN is an empty cell; lists are JSON."""
    path = tmp_path / "metrics.csv"
    with CsvWriter(path) as w:
        for r in RECORDS:
            w.write(r)
        w.write({"event": "note", "split": "train", "step": 11, "sizes": [1, 2]})
    rows = read_csv(path)
    assert len(rows) == len(RECORDS) + 1
    header = path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["event", "split", "step", "epoch"] and "accuracy" in header and "sizes" in header
    assert rows[0]["accuracy"] == "" and float(rows[1]["accuracy"]) == 0.55
    assert rows[3]["loss"] == "" and json.loads(rows[4]["sizes"]) == [1, 2]
    assert float(rows[2]["lr"]) == 5e-4


def test_csv_starts_from_history_on_resume(tmp_path: Path, read_csv: Callable) -> None:
    """A resumed run's CSV is rebuilt from the JSONL records up to the checkpoint, then continued."""
    path = tmp_path / "metrics.csv"
    path.write_text("stale,rows\n1,2\n")
    with CsvWriter(path, history=RECORDS[:2]) as w:
        w.write(RECORDS[2])
    assert [r["step"] for r in read_csv(path)] == ["5", "5", "10"]


def test_files_logger_writes_jsonl_and_csv_that_agree(tmp_path: Path, compose_train: Callable,
                                                      read_csv: Callable) -> None:
    """The default logger: metrics.jsonl and metrics.csv hold the same records."""
    with open_writers(compose_train([]).logger, tmp_path) as w:
        for r in RECORDS:
            w.write(r)
    assert not (tmp_path / "tensorboard").exists()
    jsonl, rows = read_jsonl(tmp_path / "metrics.jsonl"), read_csv(tmp_path / "metrics.csv")
    assert len(jsonl) == len(rows) == len(RECORDS)
    for record, row in zip(jsonl, rows):
        for key, value in record.items():
            assert row[key] == ("" if value is None else str(value)), key


def test_every_logger_option_composes(compose_train: Callable) -> None:
    """Each conf/logger YAML composes against the schema; tensorboard and mlflow name their backends."""
    names = sorted(p.stem for p in (conf_dir() / "logger").glob("*.yaml"))
    assert names == ["files", "mlflow", "tensorboard"]
    assert list(compose_train(["logger=tensorboard"]).logger.backends) == ["tensorboard"]
    mlflow = compose_train(["logger=mlflow"]).logger
    assert list(mlflow.backends) == ["mlflow"] and mlflow.tracking_uri is None and mlflow.required is False
    assert list(compose_train([]).logger.backends) == []


def test_unknown_backend_and_missing_package_are_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             compose_train: Callable) -> None:
    """A misspelled backend names the known ones; a missing tensorboard package says which extra to install."""
    cfg = compose_train(["logger.backends=[tensorbored]"])
    with pytest.raises(TformerError, match="unknown logger backend 'tensorbored'"):
        open_writers(cfg.logger, tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(TformerError, match="tensorboard") as err:
        open_writers(compose_train(["logger=tensorboard"]).logger, tmp_path)
    assert "tformer[logging]" in (err.value.hint or "")


@pytest.mark.slow
def test_tensorboard_events_hold_the_logged_scalars(tmp_path: Path, compose_train: Callable, scalars: Callable) -> None:
    """Records become tagged scalars at their steps; a resumed run's writer hides what came after its step."""
    pytest.importorskip("tensorboard")
    logger = compose_train(["logger=tensorboard"]).logger
    with open_writers(logger, tmp_path) as w:
        for r in RECORDS:
            w.write(r)
    got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(5, pytest.approx(0.7)), (10, pytest.approx(0.5))]
    assert got["validation/accuracy"] == [(5, pytest.approx(0.55))]
    assert got["final/test/accuracy"] == [(5, pytest.approx(0.5))]
    assert "final/test/loss" not in got  # NaN is not plotted
    assert not any(tag.endswith(("/count", "/epoch", "/time")) for tag in got) and "validation/lr" not in got


# ----------------------------------------------------------------------------- metrics.jsonl


def _strict_loads(line: str) -> dict:
    """json.loads that refuses the non-standard NaN / Infinity tokens."""
    return json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_jsonl_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    record = {
        "step": 3,
        "loss": torch.tensor(0.5),
        "acc": np.float32(0.25),
        "bad": float("nan"),
        "big": torch.tensor(float("inf")),
        "nested": {"xs": [np.int64(7), float("-inf")], "cm": torch.tensor([[1, 2], [3, 4]])},
    }
    with JsonlWriter(path) as writer:
        writer.write(record)
        assert len(read_jsonl(path)) == 1  # flushed before close
    with JsonlWriter(path) as writer:  # reopening appends
        writer.write({"step": 4})

    lines = path.read_text().splitlines()
    assert [_strict_loads(line) for line in lines] == read_jsonl(path)
    assert read_jsonl(path) == [
        {
            "step": 3,
            "loss": 0.5,
            "acc": 0.25,
            "bad": None,
            "big": None,
            "nested": {"xs": [7, None], "cm": [[1, 2], [3, 4]]},
        },
        {"step": 4},
    ]
    with pytest.raises(ValueError):
        writer.write({"step": 5})  # closed


def test_read_jsonl_drops_only_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(TformerError, match=":2"):
        read_jsonl(path)
