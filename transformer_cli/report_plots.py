"""The plots of `tformer report` (matplotlib, headless Agg): curves of every run, a bar chart per
configuration with error bars, and confusion matrices of classification runs.

Figures have fixed sizes (no tight bounding box), so a PNG's pixel size is known in advance:
width = figure inches x DPI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transformer_cli.writers import read_jsonl

if TYPE_CHECKING:
    from transformer_cli.report import ConfigGroup, Report

DPI = 100
CURVES_SIZE = (15.0, 4.5)  # inches: three panels side by side
BARS_SIZE = (9.0, 5.0)
CONFUSION_PANEL = 4.0  # inches per configuration (width); height CONFUSION_PANEL + 0.6
MAX_CONFUSIONS = 4  # the best configurations only


def plot_report(report: Report, out: Path) -> list[Path]:
    """Write every plot that applies to these runs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    if any(r.status == "completed" for r in report.runs):
        written.append(plot_curves(report, out / "report_curves.png"))
        written.append(plot_bars(report, out / "report_bars.png"))
    groups = [g for g in report.groups if _confusion(g) is not None][:MAX_CONFUSIONS]
    if groups:
        written.append(plot_confusions(groups, out / "report_confusion.png"))
    return written


def plot_curves(report: Report, out: Path) -> Path:
    """Training loss, validation loss and the validation metric of every run, on shared step axes.

    Runs of one configuration share a colour; seeds differ in line style."""
    import matplotlib.pyplot as plt

    monitor = report.monitor
    fig, axes = plt.subplots(1, 3, figsize=CURVES_SIZE, dpi=DPI, sharex=True)
    panels = [("train", "loss", "training loss"), ("eval", "loss", "validation loss"),
              ("eval", monitor, f"validation {monitor or 'metric'}")]
    styles = ["-", "--", ":", "-."]
    for gi, group in enumerate(report.groups):
        color = f"C{gi % 10}"
        for si, run in enumerate(group.completed):
            events = read_jsonl(run.path / "metrics.jsonl") if (run.path / "metrics.jsonl").is_file() else []
            key = monitor or run.summary.get("monitor")
            for ax, (event, field, _) in zip(axes, panels):
                steps, values = _series(events, event, field or key)
                ax.plot(steps, values, color=color, linestyle=styles[si % len(styles)], linewidth=1.2,
                        marker="o" if event == "eval" else None, markersize=3,
                        label=group.label if si == 0 else None)
    for ax, (_, _, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("one colour per configuration, one line style per seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_bars(report: Report, out: Path) -> Path:
    """The monitored metric per configuration: best validation and test, mean with a ±1 std error bar."""
    import matplotlib.pyplot as plt

    groups = [g for g in report.groups if g.stats["best"].mean is not None]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=BARS_SIZE, dpi=DPI)
    for offset, what, name in ((-0.2, "best", "validation (best)"), (0.2, "test", "test (best checkpoint)")):
        means = [g.stats[what].mean if g.stats[what].mean is not None else np.nan for g in groups]
        stds = [g.stats[what].std or 0.0 for g in groups]
        bars = ax.bar(x + offset, means, width=0.38, yerr=stds, capsize=4, label=name, alpha=0.85)
        for bar, mean in zip(bars, means):
            if np.isfinite(mean):
                ax.annotate(f"{mean:.3f}", (bar.get_x() + bar.get_width() / 2, mean), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    labels = [("★ " if g is report.best else "") + _wrap(g.label) for g in groups]
    many = len(groups) > 4
    ax.set_xticks(x, labels, fontsize=8, rotation=20 if many else 0, ha="right" if many else "center")
    n = max((g.stats["best"].n for g in groups), default=0)
    ax.set_ylabel(f"{report.monitor or 'monitored metric'} (axis zoomed to the data)")
    ax.set_title(f"{report.monitor or 'metric'} per configuration (error bars: ±1 std over up to {n} seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _zoom(ax, groups)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_confusions(groups: list[ConfigGroup], out: Path) -> Path:
    """Test-split confusion matrices, summed over each configuration's seeds, rows normalised."""
    import matplotlib.pyplot as plt

    k = len(groups)
    fig, axes = plt.subplots(1, k, figsize=(CONFUSION_PANEL * k, CONFUSION_PANEL + 0.6), dpi=DPI, squeeze=False)
    for ax, group in zip(axes[0], groups):
        labels, matrix = _confusion(group)  # type: ignore[misc]
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{int(matrix[i, j])}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=45 if len(labels) > 4 else 0)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{_wrap(group.label, 30)}\n({len(group.completed)} run(s), test)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _confusion(group: ConfigGroup) -> tuple[list[str], np.ndarray] | None:
    """(label names, summed (C, C) test confusion matrix) of a classification configuration, if any."""
    total, names = None, None
    for run in group.completed:
        details = (run.summary.get("details") or {}).get("test") or {}
        if run.summary.get("task") != "classify" or "confusion_matrix" not in details:
            continue
        matrix = np.asarray(details["confusion_matrix"], dtype=np.int64)
        labels = list(details.get("per_class", {})) or [str(i) for i in range(len(matrix))]
        if total is None:
            total, names = matrix, labels
        elif matrix.shape == total.shape and labels == names:
            total = total + matrix
    return None if total is None else (names, total)  # type: ignore[return-value]


def _series(events: list[dict[str, Any]], event: str, key: str | None) -> tuple[list[int], list[float]]:
    """(steps, values) of one key over the events of one kind."""
    points = [(e["step"], e[key]) for e in events if e.get("event") == event and key and e.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _zoom(ax: Any, groups: list[ConfigGroup]) -> None:
    """Start the y axis near the data, so small differences between configurations stay visible."""
    lows = [g.stats[w].mean - (g.stats[w].std or 0) for g in groups for w in ("best", "test")
            if g.stats[w].mean is not None]
    highs = [g.stats[w].mean + (g.stats[w].std or 0) for g in groups for w in ("best", "test")
             if g.stats[w].mean is not None]
    if lows:
        span = max(highs) - min(lows) or abs(max(highs)) or 1.0
        ax.set_ylim(min(lows) - 0.5 * span, max(highs) + 0.25 * span)


def _wrap(text: str, width: int = 24) -> str:
    """Break a long configuration label at spaces."""
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
