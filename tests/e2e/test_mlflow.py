"""logger=mlflow for real: a tiny training logged to a real MLflow tracking server (started here, on 127.0.0.1,
with an SQLite store and its artifacts in tmp_path) and read back with MLflow's own client; a 2-job sweep in the
default local store; a server that is down; and a torchrun training, which only rank 0 logs."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from omegaconf import OmegaConf

from transformer_cli.version import __version__

WORDS = "good bad fine awful great dull bright slow quick warm cold sharp".split()
TINY = ["model=tiny", "trainer=debug", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=1",
        "data.tokenizer.min_frequency=1"]
SERVER_START_SECONDS = 240  # an MLflow server creates its database first: about 25 s on 2 cores


def free_port() -> int:
    """A TCP port nothing listens on (the socket is closed again before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reviews(folder: Path) -> Path:
    """A small labelled CSV."""
    path = folder / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(120):
            words = [random.Random(i).choice(WORDS) for _ in range(4)]
            writer.writerow([" ".join(words), "pos" if "good" in words else "neg"])
    return path


def client(uri: str) -> Any:
    """MLflow's own client on a store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flat(node: Any, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params should hold it: dotted keys, strings as they are, other values as JSON."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node if isinstance(node, str) else json.dumps(node)}


def records(run_dir: Path, event: str) -> list[dict[str, Any]]:
    """metrics.jsonl records of one kind."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


# ----------------------------------------------------------------------------- a real tracking server


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the processes it started (its own process group), by SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port, SQLite backend store and artifacts in tmp_path; its URI once
    /health answers. Stopped at the end, whatever happened."""
    pytest.importorskip("mlflow")
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
             str(folder / "artifacts")],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner: a lighter server
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_SECONDS
        while True:
            assert proc.poll() is None, f"mlflow server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"mlflow server not ready in {SERVER_START_SECONDS} s:\n" \
                                            f"{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield uri
    finally:
        _stop(proc)


@pytest.mark.slow
def test_a_run_on_a_real_tracking_server(mlflow_server: str, tmp_path: Path, run_cli: Callable) -> None:
    """Params are the config, per-step metrics are metrics.jsonl's, final metrics are summary.json's, the run
    card is an artifact, and the tags name the task, loss, version and the config directory's commit."""
    confdir = tmp_path / "myconf"
    (confdir / "experiment").mkdir(parents=True)
    (confdir / "experiment" / "tiny.yaml").write_text("# @package _global_\n# A tiny run.\ntrainer:\n  max_steps: 4\n")
    git = ["git", "-C", str(confdir), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "configs"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    run = tmp_path / "run"
    proc = run_cli(["train", "--config-dir", str(confdir), "experiment=tiny", "data=local",
                    f"data.train={reviews(tmp_path)}", *TINY, "logger=mlflow",
                    f"logger.tracking_uri={mlflow_server}", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "cannot reach" not in proc.stdout + proc.stderr
    ids = json.loads((run / "mlflow.json").read_text())
    mlflow = client(mlflow_server)
    logged = mlflow.get_run(ids["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert mlflow.get_experiment(logged.info.experiment_id).name == "tformer"

    config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert logged.data.params == flat(config)

    summary = json.loads((run / "summary.json").read_text())
    final = {f"final/{split}/{k}": v for split, metrics in summary["final"].items() for k, v in metrics.items()
             if k != "count" and isinstance(v, (int, float)) and math.isfinite(v)}
    assert final and {k: logged.data.metrics[k] for k in final} == final
    for key, event, split in (("loss", "train", "train"), ("accuracy", "eval", "validation")):
        history = [(m.step, m.value) for m in mlflow.get_metric_history(ids["run_id"], f"{split}/{key}")]
        assert sorted(history) == [(r["step"], r[key]) for r in records(run, event)]

    artifacts = {a.path for a in mlflow.list_artifacts(ids["run_id"])}
    assert {"README.md", "summary.json", "config.yaml", "curves.png"} <= artifacts
    card = mlflow.download_artifacts(ids["run_id"], "README.md", str(tmp_path))
    assert Path(card).read_text() == (run / "README.md").read_text()
    assert f"MLflow: run `{ids['run_id']}`" in (run / "README.md").read_text()

    tags = logged.data.tags
    assert tags["tformer.task"] == "classify" and tags["tformer.loss"] == "ce"
    assert tags["tformer.version"] == __version__ and tags["tformer.config_commit"] == head
    assert tags["tformer.config_dir"] == str(confdir.resolve()) and "experiment=tiny" in tags["mlflow.note.content"]


# ----------------------------------------------------------------------------- the local store


@pytest.mark.slow
def test_a_sweep_is_one_experiment_with_a_run_per_job(tmp_path: Path, run_cli: Callable) -> None:
    """`tformer train -m ... logger=mlflow` without a server: ./mlruns beside ./outputs, one experiment named after
    the sweep, one finished run per job, the swept key a param of each."""
    pytest.importorskip("mlflow")
    proc = run_cli(["train", "-m", "loss=ce,focal", "data=local", f"data.train={reviews(tmp_path)}", *TINY,
                    "logger=mlflow"], tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    store = tmp_path / "mlruns" / "mlflow.db"
    assert store.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "outputs", "reviews.csv"]
    mlflow = client(f"sqlite:///{store}")
    (experiment,) = [e for e in mlflow.search_experiments() if e.name != "Default"]
    assert experiment.name == sweep_dir.name
    runs = mlflow.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["loss=ce", "loss=focal"]
    for logged in runs:
        job = sweep_dir / logged.info.run_name
        assert json.loads((job / "mlflow.json").read_text())["run_id"] == logged.info.run_id
        assert logged.info.status == "FINISHED"
        assert logged.data.params["loss"] == logged.data.params["loss.name"] == logged.info.run_name[5:]
        assert logged.data.tags["tformer.swept"] == "loss"
        assert logged.data.tags["tformer.sweep_dir"] == str(sweep_dir.resolve())
        assert {a.path for a in mlflow.list_artifacts(logged.info.run_id)} >= {"README.md", "summary.json"}
        summary = json.loads((job / "summary.json").read_text())
        assert logged.data.metrics["final/validation/accuracy"] == summary["final"]["validation"]["accuracy"]
    assert len(list((tmp_path / "mlruns" / "artifacts").rglob("README.md"))) == 2  # artifacts in the store too


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, run_cli: Callable) -> None:
    """resume=auto in the same run directory logs into the same MLflow run, which ends FINISHED again."""
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    line = ["train", "data=local", f"data.train={reviews(tmp_path)}", *TINY, "logger=mlflow", f"hydra.run.dir={run}"]
    proc = run_cli([*line, "trainer.max_steps=2"], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    first = json.loads((run / "mlflow.json").read_text())["run_id"]
    proc = run_cli([*line, "trainer.max_steps=4", "resume=auto"], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == first
    mlflow = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (logged,) = mlflow.search_runs([mlflow.get_experiment_by_name("tformer").experiment_id])
    assert logged.info.run_id == first and logged.info.status == "FINISHED"
    history = [(m.step, m.value) for m in mlflow.get_metric_history(first, "train/loss")]
    assert sorted(history) == [(r["step"], r["loss"]) for r in records(run, "train")] and len(history) == 4


@pytest.mark.slow
def test_a_server_that_is_down_costs_a_warning_and_nothing_else(tmp_path: Path, run_cli: Callable) -> None:
    """The run completes with every file; logger.required=true makes it exit 2 with a clear message instead."""
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    data = reviews(tmp_path)
    run = tmp_path / "run"
    proc = run_cli(["train", "data=local", f"data.train={data}", *TINY, "logger=mlflow", f"logger.tracking_uri={uri}",
                    f"hydra.run.dir={run}"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert output.count(f"cannot reach the MLflow tracking server at {uri}") == 1, output[-4000:]
    assert "Traceback" not in output
    for name in ("summary.json", "README.md", "config.yaml", "curves.png", "metrics.csv", "checkpoints/best"):
        assert (run / name).exists(), name
    assert records(run, "train") and records(run, "eval") and records(run, "final")
    assert not (run / "mlflow.json").exists() and not (tmp_path / "mlruns").exists()

    proc = run_cli(["train", "data=local", f"data.train={data}", *TINY, "logger=mlflow", f"logger.tracking_uri={uri}",
                    "logger.required=true", f"hydra.run.dir={tmp_path / 'required'}"], tmp_path)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert f"error: cannot reach the MLflow tracking server at {uri}" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "required" / "summary.json").exists()


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(tmp_path: Path, repo: Path) -> None:
    """Two processes, one MLflow run: rank 0's, holding metrics.jsonl's curve once."""
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "transformer_cli", "train", "--nproc", "2", "data=local",
         f"data.train={reviews(tmp_path)}", *TINY, "trainer.threads=1", "logger=mlflow", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    mlflow = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("tformer")
    (logged,) = mlflow.search_runs([experiment.experiment_id])
    assert logged.info.run_id == json.loads((run / "mlflow.json").read_text())["run_id"]
    history = [(m.step, m.value) for m in mlflow.get_metric_history(logged.info.run_id, "train/loss")]
    assert sorted(history) == [(r["step"], r["loss"]) for r in records(run, "train")]
