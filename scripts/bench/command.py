"""Run one whole command for a benchmark: timed from outside, its output kept in a log, a failure stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from transformer_cli.files import read_json

TFORMER = [sys.executable, "-m", "transformer_cli"]  # the CLI as the benchmarks start it


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command to completion (in `env`, default this process's environment); (wall seconds, stdout). A
    failure stops the benchmark with its output."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**(env or os.environ), "TQDM_DISABLE": "1"})
    seconds = time.time() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def summary_of(run_dir: Path) -> dict[str, Any]:
    """A finished training run's summary.json."""
    return read_json(run_dir / "summary.json")
