"""Paths, labels and messages print as written: no rich markup or emoji is read from them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.cli import report_error
from transformer_cli.errors import TformerError
from transformer_cli.results import print_results
from transformer_cli.sweep import print_outcome


@pytest.mark.parametrize(("message", "hint"), [
    ("data/a[/]b.csv does not exist", None),
    ("data/[old]/train.csv does not exist", "check [bold]data.train[/bold]"),
    ("label ':x:' is not known", ":warning: labels: [0, 1]"),
    ("ONNX export needs the onnx package", "pip install 'tformer[export]'"),
])
def test_errors_print_as_written(message: str, hint: str | None, capsys: pytest.CaptureFixture) -> None:
    """The error printer shows message and hint literally: `[/]` does not crash it, `[old]` and `:x:` stay."""
    report_error(TformerError(message, hint))
    err = capsys.readouterr().err
    assert f"error: {message}" in err
    assert hint is None or f"hint: {hint}" in err


def test_tables_print_as_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Result and sweep tables show labels, paths and reasons literally."""
    print_results("eval runs/[old]", {"test": {"f1_[x]": 0.5, "count": 2}})
    print_outcome(tmp_path, [{"num": 0, "status": "failed", "dir": str(tmp_path / "a[/]"), "error": "bad :x: [b]"}])
    out = capsys.readouterr().out
    for text in ("eval runs/[old]", "f1_[x]", "a[/]", "bad :x: [b]"):
        assert text in out, (text, out)


def test_cli_prints_a_bracketed_path(tmp_path: Path, run_cli: Callable) -> None:
    """A missing file whose name holds `[/]` gets the usual message and exit 2, not a MarkupError traceback."""
    proc = run_cli(["train", "data=local", "data.train='old[/]x.csv'", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "old[/]x.csv" in proc.stderr and "Traceback" not in proc.stderr
