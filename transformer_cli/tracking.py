"""logger=mlflow: each training is an MLflow run, in a local store or on a tracking server.

What a run logs (rank 0 only: the other ranks of a torchrun training write nothing):
  - params: the resolved config (config.yaml) flattened to dotted keys (`optim.lr`, `model.d_model`); a value
    is the YAML scalar as JSON (`0.001`, `true`, `null`, `["a", "b"]`) or the string itself. MLflow keeps at
    most 6000 characters of a value: a longer one is cut and says so (tag `tformer.truncated_params` lists
    them; the config.yaml artifact holds them whole). In a sweep, the job's swept overrides are params too
    (`loss=focal` as param `loss`, beside `loss.name`), so the compare view can line jobs up by them;
  - metrics: every training, evaluation and final record of metrics.jsonl, at its step, named as TensorBoard
    names them (writers.py `scalars`): `train/loss`, `validation/accuracy`, `final/test/accuracy`;
  - tags: `tformer.task`, `tformer.loss`, `tformer.version`, `tformer.run_dir`, the commit of the user's config
    directory when it is a git checkout (`tformer.config_commit`), the overrides, and the command that
    reproduces the run as the run's description;
  - artifacts, once the run has completed: the run card (README.md), summary.json, config.yaml, curves.png,
    and with `logger.log_checkpoints=true` the best checkpoint (`checkpoints/best/`, loadable by
    `transformer_cli.load` once downloaded).

Where: `logger.tracking_uri`, else $MLFLOW_TRACKING_URI, else a local store in ./mlruns beside ./outputs (an
SQLite database, mlruns/mlflow.db, and mlruns/artifacts/: MLflow 3 deprecates its plain-file store, and SQLite
needs no server). `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows it. The experiment is
`logger.experiment`, else the sweep's name (the sweep directory's) for the jobs of a sweep, else "tformer".
The run directory keeps the MLflow run's ids in mlflow.json; a resumed run (resume=auto) continues the
same MLflow run.

MLflow never stops a training: a tracking server that cannot be reached (checked before training with a
short request), or any failed call, gives one warning and the run goes on with its files alone. With
`logger.required=true` it is an error (exit status 2) instead. mlflow is imported only when the writer opens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.files import read_json_object, write_json
from transformer_cli.version import __version__

log = logging.getLogger("tformer")

LOCAL_STORE = "mlruns"  # the default store's directory, relative to the working directory (beside outputs/)
DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
RUN_FILE = "mlflow.json"  # in the run directory: which MLflow run it logs to
DEFAULT_EXPERIMENT = "tformer"
PROBE_SECONDS = 5.0  # how long the check that a tracking server answers may take
# MLflow's limits (mlflow/utils/validation.py): value and key lengths, entries per log_batch call.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_CALL = 100
METRICS_PER_CALL = 1000
CUT = "...[cut: the whole value is in config.yaml]"
# URIs MLflow takes without a scheme separator; anything else without "://" or ":" names a local directory.
SCHEMELESS = ("databricks", "databricks-uc", "uc")


@dataclass(frozen=True)
class Store:
    """Where runs go: an MLflow tracking URI, and for tformer's local store its directory and artifact root."""

    uri: str
    local_dir: Path | None = None

    @property
    def artifact_location(self) -> str | None:
        """The artifact root of experiments created in the local store (MLflow's default is ./mlruns)."""
        return (self.local_dir / ARTIFACTS).as_uri() if self.local_dir else None

    @property
    def is_server(self) -> bool:
        """Whether the URI names a tracking server (HTTP)."""
        return self.uri.startswith(("http://", "https://"))

    def ui_command(self) -> str:
        """The command that shows this store in MLflow's UI."""
        if self.is_server:
            return f"open {self.uri}"
        return f"mlflow ui --backend-store-uri {self.uri}"


def resolve_store(tracking_uri: str | None, cwd: Path) -> Store:
    """The store `logger.tracking_uri` names: null -> $MLFLOW_TRACKING_URI or ./mlruns; a path -> a local store
    there (SQLite); a URI (http://, sqlite:///, postgresql://, ...) -> as it is."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if uri and (":" in uri.split("/")[0] or uri in SCHEMELESS):  # a scheme: sqlite:///x, http://h, file:/x
        return Store(uri)
    directory = (cwd / (Path(uri).expanduser() if uri else Path(LOCAL_STORE))).resolve()
    return Store(f"sqlite:///{directory / DATABASE}", directory)


def probe(uri: str, timeout: float = PROBE_SECONDS) -> str | None:
    """None when a tracking server answers at `uri` (any HTTP answer counts), else why it does not."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered, if not on /health (a proxy, another server): MLflow's own calls will tell
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return None  # it answered; whether its certificate is trusted is MLflow's TLS settings' business
        return str(err.reason)
    except (OSError, ValueError) as err:  # a timeout, a malformed address
        return str(err) or type(err).__name__


# ----------------------------------------------------------------------------- params


def config_params(config: DictConfig) -> dict[str, Any]:
    """The resolved config as flat `dotted.key -> value` (lists kept whole, as one value)."""
    tree = OmegaConf.to_container(config, resolve=True)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def mlflow_key(name: str) -> str:
    """A name MLflow accepts as a param or metric key: other characters become `_`, at most 250 characters."""
    return re.sub(r"[^\w./\- ]", "_", name)[:MAX_KEY]


def fit_params(params: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Params as MLflow takes them, and the keys whose values were cut to MLflow's length limit."""
    out, cut = {}, []
    for key, value in params.items():
        text = param_value(value)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - len(CUT)] + CUT
            cut.append(key)
        out[mlflow_key(key)] = text
    return out, cut


def _tag_value(text: str) -> str:
    """A tag value within MLflow's limit."""
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


# ----------------------------------------------------------------------------- the Hydra job around the run


@dataclass
class Job:
    """What Hydra knows of the job that trains: its overrides, its sweep, the user's config directories."""

    overrides: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None  # in a sweep (-m) only
    swept: dict[str, str] = field(default_factory=dict)  # the job's values of the keys the sweep varies
    config_dirs: list[Path] = field(default_factory=list)
    reproduce: str | None = None  # the `tformer train ...` line that rebuilds the config


def current_job(run_dir: Path) -> Job:
    """The current Hydra job; an empty Job when train() runs outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from transformer_cli.catalog import USER_PROVIDER
    from transformer_cli.run_card import hydra_record, reproduce_command

    if not HydraConfig.initialized():
        return Job()
    hc = HydraConfig.get()
    job = Job(overrides=[str(o) for o in hc.overrides.task], reproduce=reproduce_command(hydra_record(run_dir)))
    job.config_dirs = [Path(str(s.path).removeprefix("file://")) for s in hc.runtime.config_sources
                       if s.provider == USER_PROVIDER]
    if hc.mode == RunMode.MULTIRUN:
        job.sweep_dir = Path(hc.sweep.dir)
        fixed = set(OmegaConf.select(hc, "job.config.override_dirname.exclude_keys", default=[]) or [])
        for override in job.overrides:
            key, _, value = override.partition("=")
            if key.lstrip("+~") not in fixed:
                job.swept[key.lstrip("+~")] = value
    return job


# ----------------------------------------------------------------------------- the writer


class MlflowWriter:
    """One MLflow run per training: params at the start, metrics per record, artifacts at the end.

    `scalars` turns a record into its named values (writers.py); every MLflow call goes through `_call`,
    which turns a failure into one warning and stops logging (or, with logger.required, a TformerError)."""

    def __init__(self, logger: Any, run_dir: Path, config: DictConfig | None, history: list[dict[str, Any]],
                 scalars: Callable[[dict[str, Any]], list[tuple[str, float]]]) -> None:
        self.mlflow = _mlflow()
        self.run_dir = Path(run_dir)
        self.scalars = scalars
        self.required = bool(logger.get("required", False))
        self.log_checkpoints = bool(logger.get("log_checkpoints", False))
        self.store = resolve_store(logger.get("tracking_uri"), Path.cwd())
        self.client: Any = None
        self.run_id: str | None = None
        self.finished = False
        if self.store.is_server and (reason := probe(self.store.uri)) is not None:
            self._give_up(f"cannot reach the MLflow tracking server at {self.store.uri} ({reason})")
            return
        job = current_job(self.run_dir)
        try:
            self.client = self.mlflow.client(tracking_uri=self.store.uri)
            self._start(logger, config, history, job)
        except TformerError:
            raise
        except Exception as err:  # noqa: BLE001 - any MLflow failure: one warning (or an error if required)
            self.client = None
            self._give_up(f"MLflow at {self.store.uri} failed to start the run ({_reason(err)})")

    # --- start

    def _start(self, logger: Any, config: DictConfig | None, history: list[dict[str, Any]], job: Job) -> None:
        """Continue this run directory's MLflow run when resuming, else create one; write mlflow.json."""
        if self.store.local_dir is not None:
            (self.store.local_dir / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        earlier = read_json_object(self.run_dir / RUN_FILE) if history else None
        experiment = logger.get("experiment") or (job.sweep_dir.name if job.sweep_dir else DEFAULT_EXPERIMENT)
        run_name = logger.get("run_name") or self.run_dir.name
        if earlier and earlier.get("tracking_uri") == self.store.uri and self._can_continue(str(earlier["run_id"])):
            self.run_id = str(earlier["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            experiment_id = str(earlier.get("experiment_id"))
            log.info("MLflow: continuing run %s", self.run_id)
        else:
            experiment_id = self._experiment(experiment)
            params, cut = fit_params(config_params(config) if config is not None else {})
            for key, value in job.swept.items():  # a swept group (loss=focal) is no config key: a param of its own
                params.setdefault(mlflow_key(key), param_value(value))
            run = self.client.create_run(experiment_id, run_name=run_name, tags=self._tags(config, job, cut))
            self.run_id = run.info.run_id
            items = list(params.items())
            for i in range(0, len(items), PARAMS_PER_CALL):
                self.client.log_batch(self.run_id,
                                      params=[self.mlflow.param(k, v) for k, v in items[i : i + PARAMS_PER_CALL]])
        write_json(self.run_dir / RUN_FILE, {
            "tracking_uri": self.store.uri, "experiment": experiment, "experiment_id": experiment_id,
            "run_id": self.run_id, "run_name": run_name, "ui": self.store.ui_command()})
        log.info("MLflow: run %s in experiment '%s' at %s", self.run_id, experiment, self.store.uri)

    def _can_continue(self, run_id: str) -> bool:
        """Whether the run still exists (not deleted) and can take more metrics."""
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - gone, or never there: a new run is created
            return False

    def _experiment(self, name: str) -> str:
        """The id of experiment `name`, created if needed (in tformer's local store: with its artifact root)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self.client.create_experiment(name, artifact_location=self.store.artifact_location))
            except Exception:
                found = self.client.get_experiment_by_name(name)  # another job of the sweep created it meanwhile
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise RuntimeError(f"experiment '{name}' is deleted; restore it (mlflow experiments restore "
                               f"--experiment-id {found.experiment_id}) or set logger.experiment")
        return str(found.experiment_id)

    def _tags(self, config: DictConfig | None, job: Job, cut: list[str]) -> dict[str, str]:
        """Task, loss, versions, where the run and its configs are, what was swept."""
        from transformer_cli.run_card import git_state

        tags = {"tformer.version": __version__, "tformer.run_dir": str(self.run_dir.resolve())}
        if config is not None:
            tags |= {"tformer.task": str(OmegaConf.select(config, "task.name")),
                     "tformer.loss": str(OmegaConf.select(config, "loss.name"))}
        for directory in job.config_dirs:
            state = git_state(directory)
            if state:
                tags |= {"tformer.config_dir": str(directory), "tformer.config_commit": state}
                break
        if job.overrides:
            tags["tformer.overrides"] = " ".join(job.overrides)
        if job.reproduce:
            tags["mlflow.note.content"] = f"`{job.reproduce}`"  # the run's description in the UI
        if job.sweep_dir is not None:
            tags |= {"tformer.sweep_dir": str(job.sweep_dir.resolve()), "tformer.swept": ",".join(job.swept)}
        if cut:
            tags["tformer.truncated_params"] = ",".join(cut)
        return {k: _tag_value(v) for k, v in tags.items()}

    # --- the writer interface

    def write(self, record: dict[str, Any]) -> None:
        """Log the record's values as metrics at its step."""
        if self.client is None:
            return
        values = self.scalars(record)
        if not values:
            return
        stamp = int(float(record.get("time") or time.time()) * 1000)
        step = int(record.get("step") or 0)
        metrics = [self.mlflow.metric(mlflow_key(name), value, stamp, step) for name, value in values]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            self._call(lambda chunk=metrics[i : i + METRICS_PER_CALL]: self.client.log_batch(self.run_id,
                                                                                            metrics=chunk),
                       f"log the metrics of step {step}")

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """The run completed: upload its result files (and the best checkpoint, if asked)."""
        for path in files:
            if path.is_file():
                self._call(lambda p=path: self.client.log_artifact(self.run_id, str(p)), f"upload {path.name}")
        if self.log_checkpoints and checkpoint is not None and checkpoint.is_dir():
            self._call(lambda: self.client.log_artifacts(self.run_id, str(checkpoint.resolve()), "checkpoints/best"),
                       "upload the best checkpoint")
        self.finished = self.client is not None

    def close(self) -> None:
        """End the MLflow run: FINISHED after `finish`, FAILED otherwise (an error, a stop signal)."""
        if self.client is None:
            return
        status = "FINISHED" if self.finished else "FAILED"
        if self.finished:
            self._call(lambda: self.client.set_terminated(self.run_id, status), "end the run")
        else:  # an exception is on its way out: log what we can, raise nothing over it
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as err:  # noqa: BLE001
                log.warning("MLflow: could not mark run %s %s (%s)", self.run_id, status, _reason(err))
        self.client = None

    def __enter__(self) -> MlflowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- failures

    def _call(self, action: Callable[[], Any], what: str) -> None:
        """Run one MLflow call; a failure ends MLflow logging for this run (see _give_up)."""
        if self.client is None:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001 - the run's own files are what matters
            self.client = None
            self._give_up(f"MLflow could not {what} at {self.store.uri} ({_reason(err)})")

    def _give_up(self, problem: str) -> None:
        """A TformerError with logger.required, else one warning; either way nothing more goes to MLflow."""
        self.client = None
        if self.required:
            raise TformerError(f"{problem}; logger.required=true",
                               hint="start the server (e.g. mlflow server --host 127.0.0.1 --port 5000) or fix "
                               "logger.tracking_uri; without logger.required the run goes on with its files only")
        log.warning("%s: this run goes on without MLflow; its metrics.jsonl, metrics.csv and summary.json are "
                    "written as always (logger.required=true makes this an error)", problem)


def _reason(err: BaseException) -> str:
    """An exception in one line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


@dataclass(frozen=True)
class Mlflow:
    """The three pieces of mlflow the writer uses."""

    client: Any  # MlflowClient
    metric: Any  # mlflow.entities.Metric
    param: Any  # mlflow.entities.Param


def _mlflow() -> Mlflow:
    """mlflow's client and entities, imported now; a TformerError saying which extra to install without it."""
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError as err:
        raise TformerError("logger=mlflow needs the mlflow package",
                           hint="pip install 'tformer[mlflow]' (or pip install mlflow), or use logger=files") from err
    return Mlflow(MlflowClient, Metric, Param)
