"""logger=mlflow without a server: where runs go, how the config becomes params, and what a failing MLflow does
to a run (one warning, or an error with logger.required). MLflow itself is replaced by a recording fake here;
tests/e2e/test_mlflow.py runs the real thing against a real tracking server and a local store."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import OmegaConf

from transformer_cli import tracking
from transformer_cli.errors import TformerError
from transformer_cli.writers import open_writers, scalars

RECORDS = [
    {"event": "train", "split": "train", "step": 5, "epoch": 0, "loss": 0.7, "lr": 1e-3, "time": 1000.0},
    {"event": "eval", "split": "validation", "step": 5, "epoch": 0, "loss": 0.6, "accuracy": 0.55, "lr": 1e-3,
     "count": 12, "time": 1001.0},
    {"event": "final", "split": "test", "step": 5, "loss": float("nan"), "accuracy": 0.5, "count": 12,
     "time": 1002.0},
]


class FakeClient:
    """Records MLflow calls; `fail_on` names a method that raises from its `fail_after`-th call on."""

    calls: list[tuple[str, Any]] = []
    fail_on: str | None = None
    fail_after = 0

    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        self.count: dict[str, int] = {}

    def _record(self, name: str, payload: Any) -> None:
        self.count[name] = self.count.get(name, 0) + 1
        if name == FakeClient.fail_on and self.count[name] > FakeClient.fail_after:
            raise ConnectionError("server went away")
        FakeClient.calls.append((name, payload))

    def get_experiment_by_name(self, name: str) -> None:
        self._record("get_experiment_by_name", name)

    def create_experiment(self, name: str, artifact_location: str | None = None) -> str:
        self._record("create_experiment", (name, artifact_location))
        return "7"

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> Any:
        self._record("create_run", (experiment_id, run_name, tags))
        return type("Run", (), {"info": type("Info", (), {"run_id": "r1"})()})()

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = ()) -> None:
        self._record("log_batch", {"metrics": [(m.key, m.value, m.step) for m in metrics],
                                   "params": {p.key: p.value for p in params}})

    def log_artifact(self, run_id: str, path: str) -> None:
        self._record("log_artifact", Path(path).name)

    def log_artifacts(self, run_id: str, path: str, artifact_path: str) -> None:
        self._record("log_artifacts", artifact_path)

    def set_terminated(self, run_id: str, status: str) -> None:
        self._record("set_terminated", status)


@dataclass(frozen=True)
class Entity:
    """Stands for MLflow's Param and Metric entities: their fields, no validation."""

    key: str
    value: Any
    timestamp: int = 0
    step: int = 0


@pytest.fixture
def fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    """mlflow replaced by FakeClient and plain entities (mlflow itself is not imported)."""
    FakeClient.calls, FakeClient.fail_on, FakeClient.fail_after = [], None, 0
    monkeypatch.setattr(tracking, "_mlflow", lambda: tracking.Mlflow(FakeClient, Entity, Entity))
    return FakeClient


def param_batches(cfg: Any) -> int:
    """How many log_batch calls the params of a config take."""
    return -(-len(tracking.config_params(cfg)) // tracking.PARAMS_PER_CALL)


def calls(name: str) -> list[Any]:
    """The payloads of the recorded calls of one method."""
    return [payload for method, payload in FakeClient.calls if method == name]


# ----------------------------------------------------------------------------- where runs go


def test_the_store_a_tracking_uri_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """null: ./mlruns as SQLite (no server); a directory: a store there; a URI: as it is; $MLFLOW_TRACKING_URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking.resolve_store(None, tmp_path)
    assert default.uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" and default.uri.startswith("sqlite:////")
    assert default.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri() and not default.is_server
    assert default.ui_command() == f"mlflow ui --backend-store-uri {default.uri}"
    assert tracking.resolve_store("runs/here", tmp_path).local_dir == tmp_path / "runs" / "here"
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example", "sqlite:///x.db", "postgresql://u@h/db",
                "file:///tmp/store", "databricks"):
        store = tracking.resolve_store(uri, tmp_path)
        assert store.uri == uri and store.local_dir is None and store.artifact_location is None
    assert tracking.resolve_store("http://h:5000", tmp_path).is_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_store(None, tmp_path).uri == "http://env:5000"
    assert tracking.resolve_store("sqlite:///mine.db", tmp_path).uri == "sqlite:///mine.db"  # the config wins


def test_a_closed_port_is_reported_at_once() -> None:
    """The readiness probe names the reason, without MLflow's long retries."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once the socket is closed
    start = time.time()
    reason = tracking.probe(f"http://127.0.0.1:{port}")
    assert reason is not None and "refused" in reason.lower() and time.time() - start < 5


# ----------------------------------------------------------------------------- params


def test_config_params_are_the_flattened_config(compose_train: Callable) -> None:
    """Every leaf of the resolved config, by dotted key; non-strings as JSON; lists whole."""
    cfg = compose_train(["data.labels=[neg,pos]", "logger=mlflow"])
    params, cut = tracking.fit_params(tracking.config_params(cfg))
    assert cut == []
    assert params["optim.lr"] == json.dumps(cfg.optim.lr) and params["task.name"] == "classify"
    assert params["data.labels"] == '["neg", "pos"]' and params["resume"] == "null"
    assert params["trainer.deterministic"] == "false" and params["logger.backends"] == '["mlflow"]'
    leaves = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            leaves.append(prefix[:-1])

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    assert sorted(params) == sorted(leaves)


def test_long_values_are_cut_to_mlflows_limit_and_keys_made_valid() -> None:
    long = ["label-%04d" % i for i in range(1000)]  # about 14,000 characters as JSON
    params, cut = tracking.fit_params({"data.labels": long, "odd key=1?": 1})
    assert cut == ["data.labels"]
    assert len(params["data.labels"]) == tracking.MAX_PARAM_VALUE and params["data.labels"].endswith(tracking.CUT)
    assert params["odd key_1_"] == "1"


def test_scalars_are_named_as_in_tensorboard() -> None:
    """train/<key>, <split>/<key>, final/<split>/<key>; no counts, epochs, times, evaluation lr or NaN."""
    assert scalars(RECORDS[0]) == [("train/loss", 0.7), ("train/lr", 1e-3)]
    assert scalars(RECORDS[1]) == [("validation/loss", 0.6), ("validation/accuracy", 0.55)]
    assert scalars(RECORDS[2]) == [("final/test/accuracy", 0.5)]


# ----------------------------------------------------------------------------- the writer with a fake MLflow


def test_a_run_logs_params_metrics_artifacts_and_ends_finished(tmp_path: Path, fake_mlflow: type,
                                                                compose_train: Callable) -> None:
    cfg = compose_train(["logger=mlflow", f"logger.tracking_uri={tmp_path / 'store'}", "logger.log_checkpoints=true"])
    run_dir = tmp_path / "run"
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "README.md").write_text("card")
    with open_writers(cfg.logger, run_dir, cfg) as w:
        for r in RECORDS:
            w.write(r)
        w.finish([run_dir / "README.md", run_dir / "summary.json"], run_dir / "ckpt")  # no summary.json: skipped
    name, location = calls("create_experiment")[0]
    assert name == "tformer" and location == (tmp_path / "store" / "artifacts").as_uri()
    _, run_name, tags = calls("create_run")[0]
    assert run_name == "run" and tags["tformer.task"] == "classify" and tags["tformer.loss"] == "ce"
    batches = calls("log_batch")
    params = {k: v for b in batches for k, v in b["params"].items()}
    assert params == tracking.fit_params(tracking.config_params(cfg))[0]
    assert all(len(b["params"]) <= tracking.PARAMS_PER_CALL for b in batches)
    metrics = [m for b in batches for m in b["metrics"]]
    assert metrics == [("train/loss", 0.7, 5), ("train/lr", 1e-3, 5), ("validation/loss", 0.6, 5),
                       ("validation/accuracy", 0.55, 5), ("final/test/accuracy", 0.5, 5)]
    assert calls("log_artifact") == ["README.md"] and calls("log_artifacts") == ["checkpoints/best"]
    assert calls("set_terminated") == ["FINISHED"]
    saved = json.loads((run_dir / "mlflow.json").read_text())
    assert saved["run_id"] == "r1" and saved["experiment"] == "tformer" and saved["experiment_id"] == "7"
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.csv").is_file()


def test_a_run_that_stops_early_is_marked_failed(tmp_path: Path, fake_mlflow: type, compose_train: Callable) -> None:
    cfg = compose_train(["logger=mlflow", f"logger.tracking_uri={tmp_path / 'store'}"])
    with pytest.raises(RuntimeError):
        with open_writers(cfg.logger, tmp_path, cfg) as w:
            w.write(RECORDS[0])
            raise RuntimeError("diverged")
    assert calls("set_terminated") == ["FAILED"] and not calls("log_artifact")


def test_mlflow_failing_mid_run_warns_once_and_the_files_go_on(tmp_path: Path, fake_mlflow: type,
                                                               compose_train: Callable,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The first failed call warns and ends MLflow logging; metrics.jsonl keeps every record."""
    cfg = compose_train(["logger=mlflow", f"logger.tracking_uri={tmp_path / 'store'}"])
    fake_mlflow.fail_on, fake_mlflow.fail_after = "log_batch", param_batches(cfg)  # the params pass, metrics fail
    with caplog.at_level(logging.WARNING, logger="tformer"):
        with open_writers(cfg.logger, tmp_path, cfg) as w:
            for r in RECORDS * 3:
                w.write(r)
            w.finish([], None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "tformer"]
    assert len(warnings) == 1 and "server went away" in warnings[0].getMessage()
    assert "logger.required=true" in warnings[0].getMessage()
    assert not calls("set_terminated")  # nothing more was sent after the failure
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 9


def test_required_turns_a_failure_into_an_error(tmp_path: Path, fake_mlflow: type, compose_train: Callable) -> None:
    cfg = compose_train(["logger=mlflow", f"logger.tracking_uri={tmp_path / 'store'}", "logger.required=true"])
    fake_mlflow.fail_on, fake_mlflow.fail_after = "log_batch", param_batches(cfg)
    with pytest.raises(TformerError, match="server went away.*logger.required=true") as err:
        with open_writers(cfg.logger, tmp_path, cfg) as w:
            w.write(RECORDS[0])
    assert "mlflow server" in (err.value.hint or "")
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the record is in the file all the same


def test_an_unreachable_server_warns_before_any_mlflow_call(tmp_path: Path, fake_mlflow: type,
                                                             compose_train: Callable,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = compose_train(["logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}"])
    with caplog.at_level(logging.WARNING, logger="tformer"):
        with open_writers(cfg.logger, tmp_path, cfg) as w:
            w.write(RECORDS[0])
            w.finish([], None)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tformer"]
    assert FakeClient.calls == [] and len(warnings) == 1
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in warnings[0]
    assert not (tmp_path / "mlflow.json").exists()
    required = compose_train(["logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}", "logger.required=true"])
    with pytest.raises(TformerError, match="cannot reach the MLflow tracking server"):
        open_writers(required.logger, tmp_path / "again", required)


def test_a_missing_mlflow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          compose_train: Callable) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import now fails
    with pytest.raises(TformerError, match="logger=mlflow needs the mlflow package") as err:
        open_writers(compose_train(["logger=mlflow"]).logger, tmp_path)
    assert "tformer[mlflow]" in (err.value.hint or "")

