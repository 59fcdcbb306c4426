"""Shell completion through the real CLI, as Hydra would answer for a plain app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.config import conf_dir


@pytest.mark.slow
def test_hydra_completion_through_the_cli(tmp_path: Path, repo: Path, run_cli: Callable) -> None:
    """`tformer -sc query=bash` answers for `tformer train ...` as Hydra would for a plain app."""
    proc = subprocess.run([sys.executable, "-m", "transformer_cli", "-sc", "query=bash"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo), "COMP_LINE": "tformer train task="})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == sorted(f"task={p.stem}" for p in (conf_dir() / "task").glob("*.yaml"))
    proc = run_cli(["train", "-sc", "install=bash"], cwd=tmp_path)
    assert proc.returncode == 0 and "-F hydra_bash_completion tformer" in proc.stdout
