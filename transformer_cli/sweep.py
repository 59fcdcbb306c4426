"""Sweep bookkeeping: skip jobs whose resolved config already finished, record failed jobs, list them at the end.

A job is identified by the fingerprint of its resolved config (the hydra node and a few settings that change
how a run executes but not what it computes left out), never by its job number: rerunning a sweep with its
values reordered, or with a value added, finds the jobs already done. A job is finished when its directory
holds `summary.json` and no `failed.json`. Hydra's BasicLauncher runs jobs in-process and the BasicSweeper
re-raises the first failure only after the batch, so a failure is caught here, inside the job: it is written
to the job's `failed.json`, the job returns None (Optuna records the trial as failed), and the sweep goes on.
Each job also leaves one line of the sweep's ledger (`<sweep dir>/.tformer/jobs/<num>.json`), from which
`SweepCallback` prints the outcome of the sweep and sets its exit status. The ledger is plain files, so it
works the same whether jobs run in this process, in joblib workers or on SLURM nodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transformer_cli.console import plain_console, styled
from transformer_cli.errors import Preempted, TformerError
from transformer_cli.files import read_json_object, write_json

log = logging.getLogger("tformer")

EXIT_JOBS_FAILED = 3  # the sweep ran to its end, but at least one job failed

# Keys that change how a run executes, not what it computes: left out of fingerprints, of job directory
# names (hydra.job.config.override_dirname.exclude_keys in conf/train.yaml) and of default sweep names.
IGNORED_KEYS = ("resume", "logger", "trainer.progress", "trainer.threads", "data.cache_dir", "data.archive")
IGNORED_OVERRIDES = ("launcher", *IGNORED_KEYS)

LEDGER = Path(".tformer") / "jobs"
MULTIRUN_ROOT = "outputs/multirun"


# ----------------------------------------------------------------------------- fingerprints


def fingerprint(cfg: DictConfig | dict[str, Any]) -> str:
    """sha256 of the resolved config without the hydra node and IGNORED_KEYS, independent of key order."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])  # before resolving: hydra's
        tree = OmegaConf.to_container(cfg, resolve=True)  # interpolations need a running job
    else:
        tree = json.loads(json.dumps(cfg))
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    for key in IGNORED_KEYS:
        _drop(tree, key.split("."))
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _drop(tree: dict[str, Any], path: list[str]) -> None:
    """Remove a dotted key from a nested dict, if present."""
    node: Any = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def run_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of a run directory: from its job.json, else from its resolved config.yaml."""
    job = read_json_object(run_dir / "job.json")
    if job and job.get("fingerprint"):
        return str(job["fingerprint"])
    if (run_dir / "config.yaml").is_file():
        return fingerprint(OmegaConf.load(run_dir / "config.yaml"))
    return None


def is_finished(run_dir: Path) -> bool:
    """A run finished when it wrote summary.json and did not fail afterwards."""
    return (run_dir / "summary.json").is_file() and not (run_dir / "failed.json").exists()


def find_finished(sweep_dir: Path, fp: str) -> Path | None:
    """A finished run with this fingerprint anywhere under the sweep directory, if there is one."""
    if not sweep_dir.is_dir():
        return None
    for summary in sorted(sweep_dir.rglob("summary.json")):
        run_dir = summary.parent
        if "checkpoints" in run_dir.relative_to(sweep_dir).parts or not is_finished(run_dir):
            continue
        if run_fingerprint(run_dir) == fp:
            return run_dir
    return None


# ----------------------------------------------------------------------------- one job of a sweep


def in_multirun() -> bool:
    """Whether the current Hydra job is part of a sweep (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(job: Callable[[], Any], cfg: DictConfig, run_dir: Path,
            report_error: Callable[[TformerError], None]) -> Any:
    """Run one training job of a sweep: skip it when its config already finished, record it when it fails.

    Returns the job's value (the best monitored metric), the finished run's value when skipped, or None when
    the job failed or has no finite value: the Optuna sweeper then marks the trial failed and goes on (a NaN
    would end the search). Preempted and KeyboardInterrupt propagate: they stop the whole sweep."""
    hydra_cfg = HydraConfig.get()
    sweep_dir, num = Path(hydra_cfg.sweep.dir), int(hydra_cfg.job.num)
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    fp = fingerprint(cfg)
    entry: dict[str, Any] = {"num": num, "overrides": overrides, "dir": str(run_dir), "started": time.time()}
    done = find_finished(sweep_dir, fp)
    if done is not None:
        return _skip(done, run_dir, sweep_dir, entry)
    _set_aside_previous_attempt(run_dir, sweep_dir, resuming=bool(cfg.get("resume")))
    _save(run_dir / "job.json", {"fingerprint": fp, "overrides": overrides, "num": num, "status": "running",
                                       "started": entry["started"]})
    try:
        value = job()
    except Preempted:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one job is recorded; the sweep goes on
        return _fail(err, run_dir, sweep_dir, entry, fp, report_error)
    value = _finite_or_none(value)
    _update_json(run_dir / "job.json", status="completed", value=value, ended=time.time())
    _ledger(sweep_dir, {**entry, "status": "completed", "value": value, "ended": time.time()})
    return value


def _skip(done: Path, run_dir: Path, sweep_dir: Path, entry: dict[str, Any]) -> float | None:
    """Reuse a finished run of the same config: no training, its value returned."""
    value = _finite_or_none((read_json_object(done / "summary.json") or {}).get("best_value"))
    if done.resolve() != run_dir.resolve():
        _save(run_dir / "skipped.json", {"same_config_as": str(done), "overrides": entry["overrides"]})
    log.info("job %d (%s) already finished in %s: skipped", entry["num"], " ".join(entry["overrides"]), done)
    _ledger(sweep_dir, {**entry, "status": "skipped", "value": value, "dir": str(done), "ended": time.time()})
    return value


def _fail(err: Exception, run_dir: Path, sweep_dir: Path, entry: dict[str, Any], fp: str,
          report_error: Callable[[TformerError], None]) -> None:
    """Record a failed job in its directory and in the ledger; print why."""
    user_error = isinstance(err, TformerError)
    record = {"status": "failed", "error": type(err).__name__, "message": getattr(err, "message", str(err)),
              "hint": getattr(err, "hint", None), "overrides": entry["overrides"], "num": entry["num"],
              "fingerprint": fp, "time": time.time(),
              "traceback": None if user_error else traceback.format_exc()}
    _save(run_dir / "failed.json", record)
    _update_json(run_dir / "job.json", status="failed", ended=time.time())
    reason = record["message"] if user_error else f"{record['error']}: {record['message']}"
    _ledger(sweep_dir, {**entry, "status": "failed", "value": None, "error": reason, "ended": time.time()})
    if user_error:
        report_error(err)  # type: ignore[arg-type]
    else:
        plain_console(stderr=True).print(styled((f"job {entry['num']} failed:", "bold red"),
                                                f" {reason} (traceback in {run_dir / 'failed.json'})"))
        if os.environ.get("TFORMER_TRACEBACK"):
            plain_console(stderr=True).print(record["traceback"])
    log.error("job %d failed: %s", entry["num"], reason)
    return None


def _finite_or_none(value: Any) -> float | None:
    """A float, or None for a missing or non-finite value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _set_aside_previous_attempt(run_dir: Path, sweep_dir: Path, resuming: bool) -> None:
    """Move what an earlier failed or interrupted attempt left in this job directory to attempts/<k>/.

    Hydra's own files and the log stay. When the job resumes (resume=...), only the failure record moves:
    the checkpoints and metrics are what it continues from."""
    if run_dir.resolve() == sweep_dir.resolve():
        return  # a hand-set hydra.sweep.subdir put the job in the sweep directory: move nothing of the sweep's
    keep = {".hydra", "train.log", "attempts", "job.json"}
    stale = [p for p in run_dir.iterdir() if p.name not in keep] if run_dir.is_dir() else []
    if resuming:
        stale = [p for p in stale if p.name in ("failed.json", "skipped.json")]
    if not stale:
        return
    k = 1
    while (run_dir / "attempts" / str(k)).exists():
        k += 1
    target = run_dir / "attempts" / str(k)
    target.mkdir(parents=True)
    for path in stale:
        shutil.move(str(path), target / path.name)
    log.info("an earlier attempt of this job was moved to %s", target)


# ----------------------------------------------------------------------------- the sweep's ledger


def _ledger(sweep_dir: Path, entry: dict[str, Any]) -> None:
    """Write this job's line of the sweep ledger."""
    _save(sweep_dir / LEDGER / f"{entry['num']}.json", entry)


def read_ledger(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job recorded by the current (or last) invocation of the sweep, by job number."""
    entries = [read_json_object(p) for p in (sweep_dir / LEDGER).glob("*.json")]
    return sorted((e for e in entries if e), key=lambda e: e["num"])


class SweepCallback(Callback):
    """Hydra callback: clears the ledger when a sweep starts; lists the outcome and fails the exit status at its end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Forget the job records of an earlier invocation of this sweep."""
        if config.hydra.job.name == "train":  # `tformer plan -m` inherits the callback but keeps no records
            shutil.rmtree(Path(config.hydra.sweep.dir) / LEDGER, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print which jobs completed, were skipped or failed (and why); exit non-zero when any failed."""
        if config.hydra.job.name != "train":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        entries = read_ledger(sweep_dir)
        failed = [e for e in entries if e["status"] == "failed"]
        _save(sweep_dir / "sweep.json", {"dir": str(sweep_dir), "ended": time.time(), "jobs": entries,
                                               "failed": len(failed)})
        print_outcome(sweep_dir, entries)
        if failed:
            raise SystemExit(EXIT_JOBS_FAILED)


def print_outcome(sweep_dir: Path, entries: list[dict[str, Any]], console: Console | None = None) -> None:
    """A one-line count of the sweep's jobs, and a table of the failed ones with their reasons."""
    console = console or plain_console()
    counts = {s: sum(e["status"] == s for e in entries) for s in ("completed", "skipped", "failed")}
    console.print(Text(f"sweep {sweep_dir}: {len(entries)} jobs: {counts['completed']} completed, "
                  f"{counts['skipped']} skipped (already finished), {counts['failed']} failed"))
    failed = [e for e in entries if e["status"] == "failed"]
    if failed:
        table = Table(title=f"{len(failed)} failed job(s)", title_justify="left", title_style="bold red")
        for name in ("job", "directory", "why"):
            table.add_column(name, overflow="fold")
        for e in failed:
            where = Path(e["dir"]).relative_to(sweep_dir) if Path(e["dir"]).is_relative_to(sweep_dir) else e["dir"]
            table.add_row(str(e["num"]), Text(str(where)), Text(_short(str(e.get("error", "")), 240)))
        console.print(table)
        console.print("rerun the same command to retry only these jobs (finished ones are skipped)")
    console.print(Text(f"compare the runs: tformer report {sweep_dir}"))


def _short(text: str, limit: int) -> str:
    """At most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- default sweep directory


def with_default_sweep_dir(args: list[str]) -> list[str]:
    """For `-m` without hydra.sweep.dir, add one named after the sweep, so that rerunning it resumes it.

    The name holds the fixed overrides and the swept keys, not the swept values: reordering or adding
    values, or switching launcher, lands in the same directory, where finished jobs are found and skipped.
    Since the directory names the fixed overrides, job directories name only what varies (loss=ce,seed=0)."""
    multirun = any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in args)
    if not multirun or any(re.match(r"^\+{0,2}hydra\.(sweep\.dir|job\.config\.override_dirname)", a) for a in args):
        return args
    split = split_overrides(args)
    if split is None:
        return args  # Hydra reports the syntax error itself
    fixed, swept = split
    exclude = ",".join(f"'{k}'" for k in (*IGNORED_OVERRIDES, *sorted({k for k, _ in fixed})))
    return [*args, f"hydra.sweep.dir='{MULTIRUN_ROOT}/{sweep_name(fixed, swept)}'",
            f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]"]


def split_overrides(args: list[str]) -> tuple[list[tuple[str, str]], list[str]] | None:
    """([(key, override line)] fixed, [key] swept) of the command line's task overrides; None if unparsable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException:
        return None
    fixed, swept = [], []
    for o in parsed:
        if o.is_hydra_override() or o.key_or_group in IGNORED_OVERRIDES:
            continue
        if o.is_sweep_override():
            swept.append(o.key_or_group)
        else:
            fixed.append((o.key_or_group, str(o.input_line)))
    return fixed, swept


def sweep_name(fixed: list[tuple[str, str]], swept: list[str]) -> str:
    """`<fixed overrides>,by-<swept keys>`, e.g. `experiment=quick,by-loss+seed`, safe as a file name."""
    parts = sorted(line for _, line in fixed) + ([f"by-{'+'.join(sorted(set(swept)))}"] if swept else [])
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", ",".join(parts)) or "default"
    if len(name) > 200:  # file names stop at 255 bytes
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


# ----------------------------------------------------------------------------- Optuna's direction


def register_resolvers() -> None:
    """`${tformer.direction:<monitor>,<task>}`: maximize or minimize, as the monitored metric wants;
    `${tformer.job_dir:<override_dirname>}`: a job directory name that is one safe path component."""
    if not OmegaConf.has_resolver("tformer.direction"):
        OmegaConf.register_new_resolver("tformer.direction", direction)
    if not OmegaConf.has_resolver("tformer.job_dir"):
        OmegaConf.register_new_resolver("tformer.job_dir", job_dir_name)


def job_dir_name(override_dirname: str) -> str:
    """Slashes (paths in values) replaced; names past 200 bytes cut and completed by a hash (limit: 255)."""
    name = override_dirname.replace("/", "_") or "run"
    if len(name.encode()) > 200:
        name = f"{name.encode()[:180].decode(errors='ignore')}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def direction(monitor: str | None, task: str) -> str:
    """The Optuna direction of a monitored metric (the task's default when monitor is null)."""
    from transformer_cli.tasks import monitor_of

    try:
        _, mode = monitor_of(task, monitor)
    except TformerError as err:  # a resolver reports a ValueError; Hydra names the key
        raise ValueError(err.message) from err
    return "maximize" if mode == "max" else "minimize"


# ----------------------------------------------------------------------------- small file helpers


def _save(path: Path, data: dict[str, Any]) -> None:
    """A sweep record, written atomically; a value JSON cannot hold (a path, an exception) is kept as text."""
    write_json(path, data, default=str)


def _update_json(path: Path, **changes: Any) -> None:
    """Merge changes into a JSON object file."""
    _save(path, {**(read_json_object(path) or {}), **changes})


# On import, not only from cli.main: launcher workers (joblib, submitit) resolve job directory names too, and
# they import this module through the task function they unpickle (transformer_cli.cli).
register_resolvers()
