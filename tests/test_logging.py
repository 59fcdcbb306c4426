"""Metric writers: metrics.csv always, TensorBoard on request, each read back with its own reader."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import compose_train

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError
from transformer_cli.writers import CsvWriter, open_writers, read_jsonl

RECORDS = [
    {"event": "train", "split": "train", "step": 5, "epoch": 0, "lr": 1e-3, "loss": 0.7, "time": 1.0},
    {"event": "eval", "split": "validation", "step": 5, "epoch": 0, "lr": 1e-3, "loss": 0.6, "accuracy": 0.55,
     "count": 200, "time": 2.0},
    {"event": "train", "split": "train", "step": 10, "epoch": 0, "lr": 5e-4, "loss": 0.5, "time": 3.0},
    {"event": "final", "split": "test", "step": 5, "loss": float("nan"), "accuracy": 0.5, "count": 100, "time": 4.0},
]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_widens_its_header_and_keeps_every_row(tmp_path: Path) -> None:
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


def test_csv_starts_from_history_on_resume(tmp_path: Path) -> None:
    """A resumed run's CSV is rebuilt from the JSONL records up to the checkpoint, then continued."""
    path = tmp_path / "metrics.csv"
    path.write_text("stale,rows\n1,2\n")
    with CsvWriter(path, history=RECORDS[:2]) as w:
        w.write(RECORDS[2])
    assert [r["step"] for r in read_csv(path)] == ["5", "5", "10"]


def test_files_logger_writes_jsonl_and_csv_that_agree(tmp_path: Path) -> None:
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


def test_every_logger_option_composes() -> None:
    """Each conf/logger YAML composes against the schema; tensorboard names its backend."""
    names = sorted(p.stem for p in (conf_dir() / "logger").glob("*.yaml"))
    assert names == ["files", "tensorboard"]
    assert list(compose_train(["logger=tensorboard"]).logger.backends) == ["tensorboard"]
    assert list(compose_train([]).logger.backends) == []


def test_unknown_backend_and_missing_package_are_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelled backend names the known ones; a missing tensorboard package says which extra to install."""
    cfg = compose_train(["logger.backends=[tensorbored]"])
    with pytest.raises(TformerError, match="unknown logger backend 'tensorbored'"):
        open_writers(cfg.logger, tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(TformerError, match="tensorboard") as err:
        open_writers(compose_train(["logger=tensorboard"]).logger, tmp_path)
    assert "tformer[logging]" in (err.value.hint or "")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log directory, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_events_hold_the_logged_scalars(tmp_path: Path) -> None:
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
