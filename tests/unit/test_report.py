"""`tformer report`: finding runs, grouping seeds, ranking configurations, the files and the plots."""

from __future__ import annotations

import csv
import json
import statistics
import struct
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from transformer_cli.errors import TformerError
from transformer_cli.report import (
    build_report,
    print_report,
    report_command,
    write_report,
)
from transformer_cli.results import print_results


def make_run(root: Path, name: str, overrides: dict[str, str], best: float, test: float, *, seed: int = 0,
             monitor: str = "rmse", mode: str = "min", task: str = "regress", failed: str | None = None) -> Path:
    """A run directory as `tformer train` leaves it (only the files the report reads)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    lines = [f"{k}={v}" for k, v in overrides.items()]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in lines))
    (run / "config.yaml").write_text(f"seed: {seed}\nloss:\n  name: {overrides.get('loss', 'mse')}\n")
    if failed:
        (run / "failed.json").write_text(json.dumps({"status": "failed", "message": failed}))
        return run
    events = [{"event": "train", "split": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    events += [{"event": "eval", "split": "validation", "step": s, "loss": 1.0 / s, monitor: best + (4 - s) / 100}
               for s in (2, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    details = {}
    if task == "classify":
        details = {"test": {"per_class": {"neg": {}, "pos": {}}, "confusion_matrix": [[8, 2], [3, 7]]}}
    summary = {"task": task, "monitor": monitor, "mode": mode, "best_value": best, "best_step": 4, "steps": 4,
               "epochs": 1.0, "final": {"validation": {monitor: best, "loss": 0.5}, "test": {monitor: test, "loss": 0.6}},
               "details": details, "wall_seconds": 12.5, "train_seconds": 10.0, "parameters": 1000}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def grid(root: Path) -> dict[str, list[float]]:
    """mse x 3 seeds and huber x 3 seeds (huber better on rmse), plus one failed job; returns best values."""
    best = {"mse": [0.90, 0.95, 1.00], "huber": [0.80, 0.82, 0.87]}
    for loss, values in best.items():
        for seed, value in enumerate(values):
            make_run(root, f"loss={loss},seed={seed}", {"loss": loss, "seed": str(seed), "model": "tiny"}, value,
                     value + 0.05, seed=seed)
    make_run(root, "loss=l1,seed=0", {"loss": "l1", "seed": "0", "model": "tiny"}, 0, 0, failed="optim.lr must be positive")
    return best


def test_seeds_are_grouped_and_configurations_ranked(tmp_path: Path) -> None:
    """Means and sample stds over seeds; rmse ranks lower first; the failed job counts but is not averaged."""
    best = grid(tmp_path)
    report = build_report(tmp_path)
    assert report.keys == ["loss", "seed"]  # model=tiny is the same everywhere
    assert report.monitor == "rmse" and report.mode == "min"
    assert [g.label for g in report.groups] == ["loss=huber", "loss=mse", "loss=l1"]
    for group in report.groups[:2]:
        values = best[group.values["loss"]]
        assert group.stats["best"].mean == pytest.approx(statistics.fmean(values))
        assert group.stats["best"].std == pytest.approx(statistics.stdev(values))
        assert group.stats["test"].mean == pytest.approx(statistics.fmean(values) + 0.05)
        assert group.stats["best"].n == 3
    assert report.groups[2].stats["best"].n == 0 and len(report.groups[2].runs) == 1
    assert report.best is report.groups[0]
    out = StringIO()
    print_report(report, Console(file=out, width=160))
    text = out.getvalue()
    gap = statistics.fmean(best["mse"]) - statistics.fmean(best["huber"])
    assert "best: loss=huber" in text and f"by {gap:.4f} validation rmse" in text
    assert "★" in text and "optim.lr must be positive" in text


def test_higher_is_better_for_accuracy(tmp_path: Path) -> None:
    """With accuracy (max) the larger mean wins."""
    for i, (loss, value) in enumerate((("ce", 0.70), ("focal", 0.74))):
        make_run(tmp_path, f"loss={loss}", {"loss": loss}, value, value, monitor="accuracy", mode="max", seed=i)
    report = build_report(tmp_path)
    assert report.best is not None and report.best.label == "loss=focal"


def test_verdict_says_tie_and_seed_noise(tmp_path: Path) -> None:
    """Equal means are a tie; a gap smaller than the seeds' spread is not called a clear win."""
    from transformer_cli.report import verdict

    for loss, values in (("ce", (0.70, 0.74)), ("focal", (0.71, 0.745))):
        for seed, value in enumerate(values):
            make_run(tmp_path / "noisy", f"{loss}{seed}", {"loss": loss, "seed": str(seed)}, value, value,
                     monitor="accuracy", mode="max", seed=seed)
            make_run(tmp_path / "tied", f"{loss}{seed}", {"loss": loss, "seed": str(seed)}, 0.6, 0.6,
                     monitor="accuracy", mode="max", seed=seed)
    assert "within seed noise, not a clear win" in verdict(build_report(tmp_path / "noisy"))
    assert "tied with" in verdict(build_report(tmp_path / "tied"))


def test_csv_and_markdown_hold_every_run_and_configuration(tmp_path: Path) -> None:
    """report.csv: one row per run (failed ones too); report_configs.csv: one per configuration."""
    grid(tmp_path)
    written = write_report(build_report(tmp_path), tmp_path, plots=False)
    assert [p.name for p in written] == ["report.csv", "report_configs.csv", "report.md"]
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 7
    by_run = {r["run"]: r for r in rows}
    assert float(by_run["loss=mse,seed=1"]["best_value"]) == 0.95
    assert float(by_run["loss=mse,seed=1"]["test_rmse"]) == pytest.approx(1.0)
    assert by_run["loss=l1,seed=0"]["status"] == "failed" and "positive" in by_run["loss=l1,seed=0"]["error"]
    configs = list(csv.DictReader((tmp_path / "report_configs.csv").open()))
    assert [c["loss"] for c in configs] == ["huber", "mse", "l1"]
    assert configs[0]["is_best"] == "True" and configs[2]["failed"] == "1"
    assert float(configs[1]["best_std"]) == pytest.approx(statistics.stdev([0.90, 0.95, 1.00]))
    md = (tmp_path / "report.md").read_text()
    assert "| **1** | huber | 3 |" in md and "failed: optim.lr must be positive" in md


def test_a_single_run_directory_is_a_report_of_one(tmp_path: Path) -> None:
    """Pointing at one run works: one row, one configuration, no spread."""
    run = make_run(tmp_path, "run", {}, 0.9, 1.0)
    report = build_report(run)
    assert len(report.runs) == 1 and report.keys == [] and report.groups[0].stats["best"].std is None
    assert report.groups[0].label == "(one configuration)"


def test_missing_or_empty_directories_are_user_errors(tmp_path: Path) -> None:
    """A wrong path is a TformerError naming it, not a traceback."""
    with pytest.raises(TformerError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(TformerError, match="no runs under"):
        build_report(tmp_path)


def test_checkpoints_and_attempts_are_not_runs(tmp_path: Path) -> None:
    """Files below checkpoints/ or attempts/ never count as runs."""
    run = make_run(tmp_path, "a=1", {"a": "1"}, 0.5, 0.5)
    (run / "attempts" / "1").mkdir(parents=True)
    (run / "attempts" / "1" / "failed.json").write_text("{}")
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "checkpoints" / "best" / "summary.json").write_text("{}")
    assert [r.name for r in build_report(tmp_path).runs] == ["a=1"]


def test_print_results_still_prints_one_row_per_split() -> None:
    """The per-run table of `tformer train` and `tformer eval` is unchanged."""
    out = StringIO()
    print_results("title", {"validation": {"accuracy": 0.5, "count": 10}, "test": {"accuracy": 0.25, "count": 4}},
                  Console(file=out, width=100))
    assert "validation" in out.getvalue() and "0.2500" in out.getvalue() and "10" in out.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_plots_are_real_images_of_the_expected_size(tmp_path: Path) -> None:
    """Curves, bars and (classification) confusion matrices: PNG files of the documented pixel sizes."""
    from transformer_cli import report_plots as rp

    for loss in ("ce", "focal", "bce"):
        for seed in (0, 1):
            make_run(tmp_path, f"loss={loss},seed={seed}", {"loss": loss, "seed": str(seed)}, 0.7 + seed / 100,
                     0.68, monitor="accuracy", mode="max", task="classify", seed=seed)
    assert report_command([str(tmp_path)]) == 0
    sizes = {name: png_size(tmp_path / f"report_{name}.png") for name in ("curves", "bars", "confusion")}
    def pixels(width: float, height: float) -> tuple[int, int]:
        return round(width * rp.DPI), round(height * rp.DPI)

    assert sizes["curves"] == pixels(*rp.CURVES_SIZE) == (1500, 450)
    assert sizes["bars"] == pixels(*rp.BARS_SIZE) == (900, 500)
    assert sizes["confusion"] == pixels(3 * rp.CONFUSION_PANEL, rp.CONFUSION_PANEL + 0.6)  # one panel per config
    for name in ("curves", "bars", "confusion"):
        assert (tmp_path / f"report_{name}.png").stat().st_size > 10_000  # drawn, not blank
    assert "![report_bars](report_bars.png)" in (tmp_path / "report.md").read_text()
