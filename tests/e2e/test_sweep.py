"""Sweeps end to end: real `-m` runs (reports, reruns that skip finished jobs, failures, interrupts, Optuna,
joblib)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from transformer_cli import sweep

# A few steps on one thread: these tests check bookkeeping, not learning (one thread also keeps a busy
# two-core machine from oversubscribing).
SHORT = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.threads=1", "data.max_eval_examples=100"]


def job_dirs(sweep_dir: Path) -> dict[str, Path]:
    """Job directory name -> path."""
    return {p.name: p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()}


def digest(path: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ledger(sweep_dir: Path) -> dict[str, str]:
    """Job directory name -> status, as the last invocation recorded them."""
    return {Path(e["dir"]).name: e["status"] for e in sweep.read_ledger(sweep_dir)}


@pytest.mark.slow
def test_grid_report_matches_summaries_and_rerun_skips_by_config(tmp_path: Path, tiny: list[str],
                                                                 run_cli: Callable) -> None:
    """A 2 x 2 grid (loss x seed): the report's rows, means and stds are the runs' own summary.json values.
    Rerunning with reordered values and one seed added runs only the two new jobs."""
    args = ["train", "-m", "task=regress", "loss=mse,huber", "seed=0,1", *tiny, *SHORT]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs/multirun" / sweep.sweep_name(*sweep.split_overrides(args))  # type: ignore[misc]
    dirs = job_dirs(sweep_dir)
    assert sorted(dirs) == ["loss=huber,seed=0", "loss=huber,seed=1", "loss=mse,seed=0", "loss=mse,seed=1"]
    summaries = {name: json.loads((d / "summary.json").read_text()) for name, d in dirs.items()}

    proc = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best:" in proc.stdout and "★" in proc.stdout
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert len(rows) == 4
    for row in rows:
        s = summaries[row["run"]]
        assert float(row["best_value"]) == s["best_value"] and int(row["steps"]) == s["steps"]
        assert float(row["test_value"]) == s["final"]["test"]["rmse"]
        assert row["loss"] == s["loss"] and row["monitor"] == "rmse"
    configs = {r["loss"]: r for r in csv.DictReader((sweep_dir / "report_configs.csv").open())}
    assert set(configs) == {"mse", "huber"}
    for loss, row in configs.items():
        best = [summaries[f"loss={loss},seed={s}"]["best_value"] for s in (0, 1)]
        test = [summaries[f"loss={loss},seed={s}"]["final"]["test"]["rmse"] for s in (0, 1)]
        assert float(row["best_mean"]) == pytest.approx(statistics.fmean(best), rel=1e-12)
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(best), rel=1e-9)
        assert float(row["test_mean"]) == pytest.approx(statistics.fmean(test), rel=1e-12)
        assert int(row["runs"]) == 2
    winner = min(configs.values(), key=lambda r: float(r["best_mean"]))  # rmse: lower is better
    assert winner["is_best"] == "True" and winner["rank"] == "1"
    assert (sweep_dir / "report.md").read_text().count("|") > 20

    before = {name: digest(d / "metrics.jsonl") for name, d in dirs.items()}
    rerun = ["train", "-m", "task=regress", "seed=1,0,2", "loss=huber,mse", *tiny, *SHORT]
    proc = run_cli(rerun, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = ledger(sweep_dir)
    assert status == {**{name: "skipped" for name in before}, "loss=mse,seed=2": "completed",
                      "loss=huber,seed=2": "completed"}
    assert {name: digest(d / "metrics.jsonl") for name, d in dirs.items()} == before
    assert len(job_dirs(sweep_dir)) == 6


@pytest.mark.slow
def test_failed_jobs_are_listed_and_the_others_complete(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """A diverging job and a bad value fail; the good job completes; the sweep lists both and exits 3."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optim.lr=1e-3,1e6,-1", *tiny, *SHORT, f"hydra.sweep.dir={sweep_dir}"],
                   cwd=tmp_path)
    assert proc.returncode == sweep.EXIT_JOBS_FAILED, proc.stderr[-3000:]
    assert "3 jobs: 1 completed, 0 skipped (already finished), 2 failed" in " ".join(proc.stdout.split())
    assert "Traceback" not in proc.stderr
    runs = {lr: p for p in sweep_dir.iterdir() for lr in ("0.001", "1000000.0", "-1") if f"optim.lr={lr}," in p.name}
    good, diverged, bad = runs["0.001"], runs["1000000.0"], runs["-1"]
    assert (good / "summary.json").is_file() and (good / "curves.png").is_file()
    for failed, needle in ((diverged, "non-finite"), (bad, "optim.lr must be positive")):
        record = json.loads((failed / "failed.json").read_text())
        assert record["status"] == "failed" and needle in record["message"]
        assert not (failed / "summary.json").exists()
        assert needle in " ".join(proc.stdout.split()) or needle in proc.stderr
    assert ledger(sweep_dir) == {good.name: "completed", diverged.name: "failed", bad.name: "failed"}

    proc = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["run"]: r for r in csv.DictReader((sweep_dir / "report.csv").open())}
    assert rows[bad.name]["status"] == "failed" and "positive" in rows[bad.name]["error"]
    assert rows[good.name]["status"] == "completed"
    assert "2 failed run(s)" in proc.stdout


@pytest.mark.slow
def test_interrupted_sweep_reruns_only_unfinished_jobs(tmp_path: Path, tiny: list[str], run_cli: Callable,
                                                       repo: Path) -> None:
    """Ctrl-C after the first job: the rerun skips it (its files untouched) and runs the other one."""
    args = ["train", "-m", "seed=0,1", *tiny, *SHORT]
    # SIGINT's default action restored in the child: a shell running this suite in the background (`cmd &`)
    # makes its children ignore SIGINT, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "transformer_cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240  # a guard against hanging, not a timed assertion
    first: list[Path] = []
    while not first and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        first = list(tmp_path.glob("outputs/multirun/*/seed=*/summary.json"))
    assert first, "no job finished"
    # Ctrl-C until it stops (a SIGINT that lands inside a finalizer is printed and ignored by Python).
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0, (out + err)[-3000:]
    sweep_dir = first[0].parent.parent
    done = {p.parent.name for p in sweep_dir.glob("*/summary.json")}
    assert done == {first[0].parent.name}, "the interrupt came too late to test anything"
    before = digest(first[0].parent / "metrics.jsonl")

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    status = ledger(sweep_dir)
    assert status[first[0].parent.name] == "skipped"
    assert sorted(status.values()) == ["completed", "skipped"]
    assert digest(first[0].parent / "metrics.jsonl") == before
    assert {p.parent.name for p in sweep_dir.glob("*/summary.json")} == {"seed=0", "seed=1"}


@pytest.mark.slow
def test_optuna_search_records_the_best_parameters(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """Three Optuna trials minimize validation rmse; a trial whose loss does not fit the task fails without
    ending the search; the recorded best is the best completed trial's own summary."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "search"
    proc = run_cli(["train", "-m", "task=regress", "hparams_search=regress", "hydra.sweeper.n_trials=3",
                    "loss=choice(mse,ce)", *tiny, *SHORT, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert "Directions: ['minimize']" in proc.stdout + proc.stderr
    values = {p.parent: json.loads(p.read_text())["best_value"] for p in sweep_dir.glob("*/summary.json")}
    failed = [json.loads(p.read_text()) for p in sweep_dir.glob("*/failed.json")]
    assert len(values) + len(failed) == 3 and values, proc.stderr[-3000:]
    assert all("does not fit task 'regress'" in f["message"] for f in failed)
    assert proc.returncode == (sweep.EXIT_JOBS_FAILED if failed else 0), proc.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_dir = min(values, key=values.get)  # type: ignore[arg-type]
    assert result["best_value"] == pytest.approx(values[best_dir])
    assert set(result["best_params"]) == {"optim.lr", "model.dropout", "loss"}
    assert result["best_params"]["loss"] == "mse" and "loss=mse" in best_dir.name


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path, tiny: list[str], run_cli: Callable) -> None:
    """launcher=joblib runs two jobs in worker processes, one torch thread each (same sweep directory as without
    the launcher: test_default_sweep_dir_is_named_by_fixed_overrides_and_swept_keys)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    unthreaded = [a for a in SHORT if not a.startswith("trainer.threads")]  # the preset must set it
    args = ["train", "-m", "launcher=joblib", "loss=ce,focal", *tiny, *unthreaded]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    runs = list(tmp_path.glob("outputs/multirun/*/loss=*/summary.json"))
    assert len(runs) == 2
    assert all(json.loads(p.read_text())["environment"]["threads"] == 1 for p in runs)
    assert sorted(ledger(runs[0].parent.parent).values()) == ["completed", "completed"]
