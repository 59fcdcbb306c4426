"""Plots of a run, drawn from its metrics.jsonl with matplotlib (headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_cli.writers import read_jsonl


def plot_curves(metrics_file: Path, out: Path, monitor: str) -> Path:
    """Training and validation loss, and the monitored validation metric, against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_jsonl(metrics_file)
    train = _series(events, "train", "loss")
    val_loss = _series(events, "eval", "loss")
    val_metric = _series(events, "eval", monitor)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax_loss.plot(*train, label="train loss")
    ax_loss.plot(*val_loss, marker="o", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_metric.plot(*val_metric, marker="o", color="tab:green")
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel(f"validation {monitor}")
    ax_metric.grid(alpha=0.3)
    fig.suptitle(metrics_file.parent.name)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _series(events: list[dict[str, Any]], event: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key over the events of one kind, skipping missing values."""
    points = [(e["step"], e[key]) for e in events if e.get("event") == event and e.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]
