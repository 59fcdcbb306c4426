"""`tformer report`, which compares runs.

`tformer report <run dir or sweep dir>` finds every run below the directory (a `summary.json`, or a
`failed.json` for a job that failed), shows the overrides that differ between them, groups runs whose
overrides differ only in `seed` into one configuration (mean +- sample standard deviation), ranks the
configurations on the best value of the monitored validation metric (the value model selection uses; test is
shown beside it), and writes report.csv, report_configs.csv, report.md and plots beside the runs.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transformer_cli.console import plain_console, styled
from transformer_cli.errors import TformerError
from transformer_cli.files import read_json

SKIP_PARTS = {"checkpoints", "attempts", ".hydra", ".tformer"}  # never hold runs of their own
METRICS = ("best", "last", "test", "steps", "wall")  # per-run numbers the configurations aggregate


@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    path: Path
    name: str  # relative to the report's root
    status: str  # completed | failed
    summary: dict[str, Any]
    config: dict[str, Any]  # the resolved config (empty when the job failed before writing it)
    overrides: dict[str, str]  # command-line overrides of the run, minus how-it-ran keys
    error: str = ""
    last: float | None = None  # validation value of the monitor after the last step

    @property
    def seed(self) -> Any:
        """The run's seed (from its resolved config, else its overrides)."""
        return self.config.get("seed", self.overrides.get("seed"))

    def value(self, what: str) -> float | None:
        """best | last | test (monitored metric) | steps | wall (seconds)."""
        s, monitor = self.summary, self.summary.get("monitor")
        found = {"best": s.get("best_value"), "last": self.last, "steps": s.get("steps"),
                 "test": (s.get("final", {}).get("test") or {}).get(monitor), "wall": s.get("wall_seconds")}[what]
        return None if found is None or (isinstance(found, float) and math.isnan(found)) else float(found)


@dataclass
class Stat:
    """Mean, sample standard deviation (None for one value) and count."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        """Aggregate a list of values (None entries already removed)."""
        if not values:
            return cls(None, None, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def text(self, digits: int = 4) -> str:
        """`mean ± std`, or the mean alone."""
        if self.mean is None:
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


@dataclass
class ConfigGroup:
    """Runs whose overrides differ only in seed."""

    label: str
    values: dict[str, str]  # differing override (seed excluded) -> value
    runs: list[RunRecord]
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def completed(self) -> list[RunRecord]:
        """The runs that finished."""
        return [r for r in self.runs if r.status == "completed"]


@dataclass
class Report:
    """What `tformer report` shows and writes."""

    root: Path
    runs: list[RunRecord]  # in table order: by configuration rank, then seed
    keys: list[str]  # overrides that differ between runs, seed last
    groups: list[ConfigGroup]  # ranked, best first
    monitor: str | None  # None when the runs monitor different metrics
    mode: str  # max | min

    @property
    def best(self) -> ConfigGroup | None:
        """The best configuration, when there is a common metric to rank on."""
        if self.monitor is None or not self.groups or self.groups[0].stats["best"].mean is None:
            return None
        return self.groups[0]


def build_report(root: Path) -> Report:
    """Find the runs under root, find what differs, group seeds, rank configurations."""
    runs = find_runs(root)
    keys = differing_keys(runs)
    groups: dict[tuple[str, ...], ConfigGroup] = {}
    for run in runs:
        values = {k: run.overrides.get(k, "-") for k in keys if k != "seed"}
        label = " ".join(f"{k}={v}" for k, v in values.items()) or "(one configuration)"
        groups.setdefault(tuple(values.values()), ConfigGroup(label, values, [])).runs.append(run)
    for group in groups.values():
        group.stats = {m: Stat.of([v for r in group.completed if (v := r.value(m)) is not None]) for m in METRICS}
    monitors = {r.summary.get("monitor") for r in runs if r.status == "completed"}
    monitor = monitors.pop() if len(monitors) == 1 else None
    mode = next((r.summary.get("mode", "max") for r in runs if r.status == "completed"), "max")
    ranked = sorted(groups.values(), key=lambda g: _rank_key(g, mode))
    ordered = [r for g in ranked for r in sorted(g.runs, key=lambda r: _natural(r.seed))]
    return Report(root, ordered, keys, ranked, monitor, mode)


def _rank_key(group: ConfigGroup, mode: str) -> tuple[int, float]:
    """Sort key: configurations with a value first, best value first."""
    mean = group.stats["best"].mean
    if mean is None:
        return (1, 0.0)
    return (0, -mean if mode == "max" else mean)


def find_runs(root: Path) -> list[RunRecord]:
    """Every run directory under root (or root itself): one with summary.json or failed.json."""
    if not root.exists():
        raise TformerError(f"{root} does not exist", hint="pass a run directory or a sweep directory")
    found = {p.parent for name in ("summary.json", "failed.json") for p in root.rglob(name)
             if not SKIP_PARTS & set(p.relative_to(root).parts[:-1])}
    if not found:
        raise TformerError(f"no runs under {root}: no summary.json or failed.json found",
                           hint="pass the directory of a finished run, or of a sweep (outputs/multirun/...)")
    return [load_run(d, root) for d in sorted(found)]


def load_run(run_dir: Path, root: Path) -> RunRecord:
    """Read a run's summary (or failure record), resolved config, overrides and last validation value."""
    failed = _read_json(run_dir / "failed.json")
    summary = _read_json(run_dir / "summary.json") or {}
    config: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))  # type: ignore[assignment]
    run = RunRecord(path=run_dir, name=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
                    status="failed" if failed else "completed", summary=summary if not failed else {},
                    config=config, overrides=read_overrides(run_dir))
    if failed:
        run.error = str(failed.get("message", failed.get("error", "")))
    elif summary.get("monitor") and (run_dir / "metrics.jsonl").is_file():
        run.last = last_validation(run_dir / "metrics.jsonl", summary["monitor"])
    return run


def read_overrides(run_dir: Path) -> dict[str, str]:
    """key -> value of the run's task overrides (.hydra/overrides.yaml), without how-it-ran keys."""
    from transformer_cli.sweep import IGNORED_OVERRIDES

    path = run_dir / ".hydra" / "overrides.yaml"
    lines = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    out = {}
    for line in lines or []:  # type: ignore[union-attr]
        key, _, value = str(line).partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
        if key.startswith("hydra") or key in IGNORED_OVERRIDES:
            continue
        out[key] = "(deleted)" if deleted else value
    return out


def last_validation(metrics_file: Path, monitor: str) -> float | None:
    """The monitored metric of the last validation record."""
    from transformer_cli.writers import read_jsonl

    evals = [e for e in read_jsonl(metrics_file) if e.get("event") == "eval" and e.get(monitor) is not None]
    return float(evals[-1][monitor]) if evals else None


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """Overrides whose value is not the same in every run (a missing override counts as a value); seed last."""
    keys = sorted({k for r in runs for k in r.overrides})
    differ = [k for k in keys if len({r.overrides.get(k, "-") for r in runs}) > 1]
    return sorted(differ, key=lambda k: (k == "seed", k))


# ----------------------------------------------------------------------------- printing and files


def print_report(report: Report, console: Console | None = None) -> None:
    """The runs table, the configurations table with the best highlighted, the verdict and failures."""
    console = console or plain_console()
    console.print(_runs_table(report))
    console.print(_configs_table(report))
    failed = [r for r in report.runs if r.status == "failed"]
    if failed:
        table = Table(title=f"{len(failed)} failed run(s)", title_justify="left", title_style="bold red")
        table.add_column("run", overflow="fold")
        table.add_column("why", overflow="fold")
        for run in failed:
            table.add_row(Text(run.name), Text(str(run.error)))
        console.print(table)
    console.print(Text(verdict(report)))


def _runs_table(report: Report) -> Table:
    """One row per run; the run's directory is shown when the differing overrides do not tell runs apart."""
    m = report.monitor or "the monitored metric"
    table = Table(title=Text(f"runs in {report.root} ({m} on validation and test)"), title_justify="left")
    named = len({tuple(r.overrides.get(k) for k in report.keys) for r in report.runs}) < len(report.runs)
    if named or not report.keys:
        table.add_column("run", overflow="fold", max_width=40)
    for key in report.keys:
        table.add_column(key, overflow="fold")
    for name in ("best val", "at step", "last val", "test", "steps", "wall"):
        table.add_column(name, justify="right")
    best = report.best
    for run in report.runs:
        cells = [Text(str(c)) for c in ([run.name] if named or not report.keys else [])
                 + [run.overrides.get(k, "-") for k in report.keys]]
        if run.status == "failed":
            table.add_row(*cells, Text("failed", style="red"), "", "", "", "", "")
            continue
        style = "bold green" if best is not None and run in best.runs else None
        table.add_row(*cells, _num(run.value("best")), str(run.summary.get("best_step", "")),
                      _num(run.value("last")), _num(run.value("test")), _num(run.value("steps"), 0),
                      _duration(run.value("wall")), style=style)
    return table


def _configs_table(report: Report) -> Table:
    """One row per configuration: seeds grouped as mean ± std, ranked on the validation metric."""
    m = report.monitor or "monitored"
    word = "higher" if report.mode == "max" else "lower"
    table = Table(title=f"configurations, ranked by best validation {m} ({word} is better); mean ± std over seeds",
                  title_justify="left")
    table.add_column("#", justify="right")
    keys = [k for k in report.keys if k != "seed"]
    for key in keys or ["configuration"]:
        table.add_column(key)
    for name in ("runs", "best val", "last val", "test", "steps", "wall"):
        table.add_column(name, justify="right")
    for rank, group in enumerate(report.groups, 1):
        s = group.stats
        failed = len(group.runs) - len(group.completed)
        runs = styled(f"{len(group.completed)}", (f" (+{failed} failed)" if failed else "", "red"))
        cells = [Text(str(c)) for c in ([group.values[k] for k in keys] if keys else [group.label])]
        star = "★ " if group is report.best else ""
        table.add_row(f"{star}{rank}", *cells, runs, s["best"].text(), s["last"].text(), s["test"].text(),
                      _num(s["steps"].mean, 0), _duration(s["wall"].mean),
                      style="bold green" if group is report.best else None)
    return table


def verdict(report: Report) -> str:
    """Which configuration wins, by how much over the runner-up, and whether that beats the seed-to-seed spread."""
    best = report.best
    if best is None:
        return ("no common monitored metric: configurations are not ranked" if report.monitor is None
                else "no run finished: nothing to rank")
    m, s = report.monitor, best.stats
    text = (f"best: {best.label}: validation {m} {s['best'].text()} over {s['best'].n} run(s)"
            + (f", test {s['test'].text()}" if s["test"].mean is not None else ""))
    ranked = [g for g in report.groups[1:] if g.stats["best"].mean is not None]
    if not ranked:
        return text
    other = ranked[0].stats
    gap = abs(s["best"].mean - other["best"].mean)  # type: ignore[operator]
    if gap == 0:
        return text + f"; tied with {ranked[0].label} on validation {m}"
    text += f"; ahead of {ranked[0].label} ({other['best'].text()}) by {gap:.4f} validation {m}"
    if s["test"].mean is not None and other["test"].mean is not None:
        test_gap = s["test"].mean - other["test"].mean
        better = test_gap >= 0 if report.mode == "max" else test_gap <= 0
        text += f", {'+' if better else '-'}{abs(test_gap):.4f} on test"
    spread = max(s["best"].std or 0.0, other["best"].std or 0.0)
    if s["best"].n > 1 and other["best"].n > 1:
        text += (f" (a gap {gap / spread:.1f}x the larger seed std)" if spread > 0 else "")
        if spread > 0 and gap < spread:
            text += ": within seed noise, not a clear win"
    else:
        text += " (one run per configuration: repeat seeds, e.g. seed=0,1,2, to see the noise)"
    return text


def write_report(report: Report, out: Path, plots: bool = True) -> list[Path]:
    """report.csv (runs), report_configs.csv, report.md and the PNG plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [_write_runs_csv(report, out / "report.csv"), _write_configs_csv(report, out / "report_configs.csv")]
    images = []
    if plots:
        from transformer_cli import report_plots

        images = report_plots.plot_report(report, out)
    written.append(_write_markdown(report, out / "report.md", images))
    return written + images


def _write_runs_csv(report: Report, path: Path) -> Path:
    """One row per run: its differing overrides, metrics, steps and times, or its failure."""
    splits = sorted({f"{split}_{k}" for r in report.runs for split, v in r.summary.get("final", {}).items()
                     for k in v})
    header = ["run", "status", "configuration", *report.keys, "seed", "monitor", "mode", "best_value", "best_step",
              "last_value", "test_value", "steps", "epochs", "wall_seconds", "train_seconds", "parameters",
              *splits, "error"]
    label = {id(r): g.label for g in report.groups for r in g.runs}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in report.runs:
            s = r.summary
            finals = {f"{split}_{k}": v for split, vals in s.get("final", {}).items() for k, v in vals.items()}
            writer.writerow([r.name, r.status, label[id(r)], *[r.overrides.get(k, "") for k in report.keys],
                             r.seed, s.get("monitor", ""), s.get("mode", ""), _csv(r.value("best")),
                             s.get("best_step", ""), _csv(r.value("last")), _csv(r.value("test")),
                             s.get("steps", ""), s.get("epochs", ""), s.get("wall_seconds", ""),
                             s.get("train_seconds", ""), s.get("parameters", ""),
                             *[_csv(finals.get(k)) for k in splits], r.error])
    return path


def _write_configs_csv(report: Report, path: Path) -> Path:
    """One row per configuration: mean and sample std over its seeds."""
    keys = [k for k in report.keys if k != "seed"]
    header = ["rank", "configuration", *keys, "runs", "failed", "monitor", "mode", "is_best"]
    header += [f"{m}_{x}" for m in METRICS for x in ("mean", "std")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for rank, g in enumerate(report.groups, 1):
            stats = [_csv(getattr(g.stats[m], x)) for m in METRICS for x in ("mean", "std")]
            writer.writerow([rank, g.label, *[g.values[k] for k in keys], len(g.completed),
                             len(g.runs) - len(g.completed), report.monitor or "", report.mode,
                             g is report.best, *stats])
    return path


def _write_markdown(report: Report, path: Path, images: list[Path]) -> Path:
    """The verdict, both tables and the plots, as Markdown."""
    m = report.monitor or "monitored metric"
    keys = [k for k in report.keys if k != "seed"]
    lines = [f"# Report: {report.root}", "", verdict(report), "",
             f"## Configurations (mean ± std over seeds; ranked by best validation {m})", ""]
    head = ["#", *(keys or ["configuration"]), "runs", f"best val {m}", f"last val {m}", f"test {m}", "steps", "wall"]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    for rank, g in enumerate(report.groups, 1):
        s = g.stats
        cells = [g.values[k] for k in keys] or [g.label]
        mark = "**" if g is report.best else ""
        lines.append(_md_row([f"{mark}{rank}{mark}", *cells, str(len(g.completed)), s["best"].text(),
                              s["last"].text(), s["test"].text(), _num(s["steps"].mean, 0),
                              _duration(s["wall"].mean)]))
    lines += ["", "## Runs", ""]
    head = ["run", *report.keys, "status", f"best val {m}", "at step", f"test {m}", "steps", "wall"]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    for r in report.runs:
        lines.append(_md_row([r.name, *[r.overrides.get(k, "-") for k in report.keys],
                              r.status if r.status == "completed" else f"failed: {r.error}",
                              _num(r.value("best")), str(r.summary.get("best_step", "")), _num(r.value("test")),
                              _num(r.value("steps"), 0), _duration(r.value("wall"))]))
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    path.write_text("\n".join(lines) + "\n")
    return path


def report_command(args: list[str]) -> int:
    """`tformer report <dir> [--out DIR] [--no-plots]`: print the comparison, write its files."""
    parser = argparse.ArgumentParser(prog="tformer report", description="Compare the runs under a run or sweep "
                                     "directory: a table per run and per configuration, CSV, Markdown and plots.")
    parser.add_argument("path", type=Path, help="a run directory, or a sweep directory holding runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default: PATH)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ns = parser.parse_args(args)
    report = build_report(ns.path)
    console = plain_console()
    print_report(report, console)
    out = ns.out or ns.path
    written = write_report(report, out, plots=not ns.no_plots)
    console.print(f"wrote {', '.join(p.name for p in written)} in {out}")
    return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError as err:
        raise TformerError(f"{path} is not valid JSON: {err}") from err
    return data if isinstance(data, dict) else None


def _natural(value: Any) -> tuple[int, Any]:
    """Sort key: numbers by value before anything else by text (seed 2 before seed 10)."""
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def _num(value: float | None, digits: int = 4) -> str:
    """A number for a table cell."""
    return "-" if value is None else f"{value:,.{digits}f}"


def _csv(value: Any) -> Any:
    """A CSV cell: empty for None, repr-exact floats."""
    return "" if value is None else repr(value) if isinstance(value, float) else value


def _duration(seconds: float | None) -> str:
    """Seconds as `1h02m`, `3m05s` or `12.3s`."""
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def _md_row(cells: list[str]) -> str:
    """A Markdown table row (pipes in cells escaped)."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
