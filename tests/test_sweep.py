"""Sweeps: config fingerprints, sweep directory names, presets, and real `-m` runs (failures, reruns, Optuna, joblib)."""

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

import pytest
import yaml
from conftest import REPO, TINY, compose_train, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from transformer_cli import sweep
from transformer_cli.config import conf_dir
from transformer_cli.validate import register_schemas

# A few steps on one thread: these tests check bookkeeping, not learning (one thread also keeps a busy
# two-core machine from oversubscribing).
SHORT = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.threads=1", "data.max_eval_examples=100"]


def compose_with_hydra(overrides: list[str]) -> OmegaConf:
    """The train config with its hydra node, as a sweep sees it."""
    register_schemas()
    sweep.register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


# ----------------------------------------------------------------------------- fast: fingerprints and names


def test_fingerprint_ignores_key_order_and_how_a_run_executes() -> None:
    """Same resolved config -> same fingerprint, whatever the key order, progress bars, threads or resume."""
    cfg = compose_train(["model=tiny"])
    fp = sweep.fingerprint(cfg)

    def changed(**values: object) -> str:
        copy = cfg.copy()
        for key, value in values.items():
            OmegaConf.update(copy, key.replace("__", "."), value)
        return sweep.fingerprint(copy)

    assert changed(trainer__progress=False, trainer__threads=1, resume="auto") == fp
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert sweep.fingerprint(dict(reversed(list(plain.items())))) == fp  # type: ignore[union-attr]
    assert changed(optim__lr=0.001) == fp  # the default, spelled out
    assert changed(optim__lr=3e-4) != fp
    assert changed(seed=1) != fp
    assert changed(model__d_model=128) != fp  # schedule.d_model follows it through an interpolation


def test_fingerprint_leaves_out_the_hydra_node() -> None:
    """The hydra node (dates, job numbers, directories) never changes a job's identity."""
    a = compose_with_hydra(["model=tiny"])
    b = compose_with_hydra(["model=tiny", "hydra.sweep.dir=/elsewhere", "hydra.job.num=7"])
    assert sweep.fingerprint(a) == sweep.fingerprint(b)
    assert sweep.fingerprint(a) == sweep.fingerprint(OmegaConf.masked_copy(a, [k for k in a if k != "hydra"]))


def test_default_sweep_dir_is_named_by_fixed_overrides_and_swept_keys() -> None:
    """Reordering or adding values, or changing launcher, keeps the directory; a fixed value changes it."""
    base = sweep.with_default_sweep_dir(["-m", "loss=ce,focal", "seed=0,1", "experiment=quick"])
    assert "hydra.sweep.dir='outputs/multirun/experiment=quick,by-loss+seed'" in base
    exclude = next(a for a in base if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
    assert "'experiment'" in exclude and "'launcher'" in exclude and "'loss'" not in exclude
    again = sweep.with_default_sweep_dir(["-m", "seed=2,1,0", "launcher=joblib", "experiment=quick", "loss=focal,ce"])
    assert [a for a in again if a.startswith("hydra.")] == [a for a in base if a.startswith("hydra.")]
    other = sweep.with_default_sweep_dir(["-m", "loss=ce,focal", "seed=0,1", "experiment=sentiment"])
    assert other[-2] != base[-2]


def test_default_sweep_dir_only_for_multirun_without_a_given_dir() -> None:
    """A single run, or a sweep whose directory is given, is left alone; odd characters become safe."""
    assert sweep.with_default_sweep_dir(["loss=ce"]) == ["loss=ce"]
    given = ["-m", "loss=ce,focal", "hydra.sweep.dir=/tmp/x"]
    assert sweep.with_default_sweep_dir(given) == given
    args = sweep.with_default_sweep_dir(["--multirun", "data.train=my data/train.csv", "seed=range(3)"])
    assert args[-2] == "hydra.sweep.dir='outputs/multirun/data.train=my_data_train.csv,by-seed'"
    assert sweep.with_default_sweep_dir(["-m"])[-2] == "hydra.sweep.dir='outputs/multirun/default'"


def test_excluded_override_keys_match_the_yaml() -> None:
    """conf/train.yaml leaves the same keys out of job directory names as sweep.py leaves out of identities."""
    cfg = compose_with_hydra([])
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == list(sweep.IGNORED_OVERRIDES)
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${tformer.job_dir:${hydra.job.override_dirname}}"
    assert cfg.hydra.callbacks.tformer_sweep._target_ == "transformer_cli.sweep.SweepCallback"


def test_job_dir_names_are_one_safe_path_component() -> None:
    """Paths in values do not nest directories; very long override lists fit a file name."""
    assert sweep.job_dir_name("data.train=data/x.csv,seed=0") == "data.train=data_x.csv,seed=0"
    long = ",".join(f"key{i}=0.000646642271741455{i}" for i in range(20))
    name = sweep.job_dir_name(long)
    assert len(name.encode()) <= 200 and name != sweep.job_dir_name(long + "1")
    assert sweep.job_dir_name("loss=ce,seed=0") == "loss=ce,seed=0"


def test_finished_means_summary_without_failure(tmp_path: Path) -> None:
    """find_finished matches by fingerprint, needs summary.json and refuses a run with failed.json."""
    cfg = compose_train(["model=tiny"])
    fp = sweep.fingerprint(cfg)
    run = tmp_path / "some_job_name"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"fingerprint": fp}))
    assert sweep.find_finished(tmp_path, fp) is None  # no summary yet
    (run / "summary.json").write_text("{}")
    assert sweep.find_finished(tmp_path, fp) == run
    assert sweep.find_finished(tmp_path, "0" * 64) is None
    (run / "failed.json").write_text("{}")
    assert sweep.find_finished(tmp_path, fp) is None
    (run / "failed.json").unlink()
    (run / "job.json").unlink()  # no job.json: the fingerprint comes from the resolved config.yaml
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert sweep.find_finished(tmp_path, fp) == run


def test_direction_follows_the_monitored_metric() -> None:
    """Optuna maximizes accuracy and minimizes rmse or loss, with no edit of the search preset."""
    assert sweep.direction(None, "classify") == "maximize"
    assert sweep.direction(None, "regress") == "minimize"
    assert sweep.direction("loss", "classify") == "minimize"
    assert sweep.direction("hamming_loss", "multilabel") == "minimize"
    with pytest.raises(ValueError, match="count"):
        sweep.direction("count", "classify")


def test_search_presets_compose_with_the_right_direction() -> None:
    """hparams_search presets pick the Optuna sweeper, a search space and the monitor's direction."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    for preset, task, direction in (("classify", "classify", "maximize"), ("regress", "regress", "minimize")):
        cfg = compose_with_hydra([f"task={task}", f"hparams_search={preset}"])
        assert "optuna" in cfg.hydra.sweeper._target_
        assert cfg.hydra.sweeper.direction == direction
        assert {"optim.lr", "model.dropout", "loss"} <= set(cfg.hydra.sweeper.params)
    cfg.trainer.monitor = "r2"  # the direction is resolved when the sweeper starts, from the monitor then set
    assert cfg.hydra.sweeper.direction == "maximize"


def test_launcher_presets_compose() -> None:
    """launcher=joblib runs one torch thread per job; slurm and ray name their plugins."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose_with_hydra(["launcher=joblib"])
    assert "joblib" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.n_jobs == 2
    assert cfg.trainer.threads == 1 and cfg.trainer.progress is False
    for preset, plugin in (("slurm", "hydra_submitit_launcher"), ("ray", "hydra_ray_launcher")):
        try:
            __import__(f"hydra_plugins.{plugin}")
        except ImportError:
            continue  # the `cluster` extra is not installed here
        cfg = compose_with_hydra([f"launcher={preset}"])
        assert plugin.split("_")[1] in cfg.hydra.launcher._target_
        assert cfg.trainer.progress is False


def test_outcome_lists_failed_jobs(tmp_path: Path) -> None:
    """The end-of-sweep listing counts jobs and names each failed one with its reason."""
    from io import StringIO

    from rich.console import Console

    entries = [{"num": 0, "status": "completed", "dir": str(tmp_path / "a=1"), "overrides": ["a=1"]},
               {"num": 1, "status": "skipped", "dir": str(tmp_path / "a=2"), "overrides": ["a=2"]},
               {"num": 2, "status": "failed", "dir": str(tmp_path / "a=3"), "overrides": ["a=3"],
                "error": "optim.lr must be positive, got -1.0"}]
    out = StringIO()
    sweep.print_outcome(tmp_path, entries, Console(file=out, width=200))
    text = out.getvalue()
    assert "3 jobs: 1 completed, 1 skipped (already finished), 1 failed" in text
    assert "a=3" in text and "optim.lr must be positive" in text


# ----------------------------------------------------------------------------- slow: real sweeps


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
def test_grid_report_matches_summaries_and_rerun_skips_by_config(tmp_path: Path) -> None:
    """A 2 x 2 grid (loss x seed): the report's rows, means and stds are the runs' own summary.json values.
    Rerunning with reordered values and one seed added runs only the two new jobs."""
    args = ["train", "-m", "task=regress", "loss=mse,huber", "seed=0,1", *TINY, *SHORT]
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
    rerun = ["train", "-m", "task=regress", "seed=1,0,2", "loss=huber,mse", *TINY, *SHORT]
    proc = run_cli(rerun, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = ledger(sweep_dir)
    assert status == {**{name: "skipped" for name in before}, "loss=mse,seed=2": "completed",
                      "loss=huber,seed=2": "completed"}
    assert {name: digest(d / "metrics.jsonl") for name, d in dirs.items()} == before
    assert len(job_dirs(sweep_dir)) == 6


@pytest.mark.slow
def test_failed_jobs_are_listed_and_the_others_complete(tmp_path: Path) -> None:
    """A diverging job and a bad value fail; the good job completes; the sweep lists both and exits 3."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optim.lr=1e-3,1e6,-1", *TINY, *SHORT, f"hydra.sweep.dir={sweep_dir}"],
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
def test_interrupted_sweep_reruns_only_unfinished_jobs(tmp_path: Path) -> None:
    """Ctrl-C after the first job: the rerun skips it (its files untouched) and runs the other one."""
    args = ["train", "-m", "seed=0,1", *TINY, *SHORT]
    # SIGINT's default action restored in the child: a shell running this suite in the background (`cmd &`)
    # makes its children ignore SIGINT, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "transformer_cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
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
def test_optuna_search_records_the_best_parameters(tmp_path: Path) -> None:
    """Three Optuna trials minimize validation rmse; a trial whose loss does not fit the task fails without
    ending the search; the recorded best is the best completed trial's own summary."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "search"
    proc = run_cli(["train", "-m", "task=regress", "hparams_search=regress", "hydra.sweeper.n_trials=3",
                    "loss=choice(mse,ce)", *TINY, *SHORT, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
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
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    """launcher=joblib runs two jobs in worker processes, one torch thread each (same sweep directory as without
    the launcher: test_default_sweep_dir_is_named_by_fixed_overrides_and_swept_keys)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    unthreaded = [a for a in SHORT if not a.startswith("trainer.threads")]  # the preset must set it
    args = ["train", "-m", "launcher=joblib", "loss=ce,focal", *TINY, *unthreaded]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    runs = list(tmp_path.glob("outputs/multirun/*/loss=*/summary.json"))
    assert len(runs) == 2
    assert all(json.loads(p.read_text())["environment"]["threads"] == 1 for p in runs)
    assert sorted(ledger(runs[0].parent.parent).values()) == ["completed", "completed"]
