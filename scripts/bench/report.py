"""The benchmark's verdicts and its output: goals checked against the issue, rich tables, strict JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from transformer_cli.files import jsonable

from .runner import FULL, REFERENCE, SAME_BATCHES


def _goal(name: str, target: str, measured: float | None, met: bool | None, detail: str,
          spread: dict[str, float] | None = None) -> dict[str, Any]:
    """One row of the goals table; measured None means the contenders it needs did not run. A timed figure
    also gives its range over the repetitions (`spread`: a summary with min and max); others have none."""
    return {"goal": name, "target": target, "measured": measured, "met": met, "detail": detail,
            "min": spread["min"] if spread else None, "max": spread["max"] if spread else None}


def _ratio_goal(name: str, ratio: dict[str, float] | None, target: float, at_most: bool,
                detail: str) -> dict[str, Any]:
    """A goal on the median of a paired ratio ours / theirs; None when a side did not run."""
    sign = "<=" if at_most else ">="
    if ratio is None:
        return _goal(name, f"{sign} {target:.3g}", None, None, f"not measured ({detail})")
    value = ratio["median"]
    return _goal(name, f"{sign} {target:.3g}", value, value <= target if at_most else value >= target, detail, ratio)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with what was measured."""
    ratios = results["ratios"]
    rows = [
        _ratio_goal("epoch time vs HF classification example defaults", ratios.get("hf_trainer_pad", {}).get("epoch_s"),
                    1 / 3, True, "ours / Trainer padding every text to max_length"),
        _ratio_goal("epoch time vs HF Trainer, best settings", ratios.get("hf_trainer_grouped", {}).get("epoch_s"),
                    1 / 1.2, True, "ours / Trainer with dynamic padding + group_by_length"),
        _ratio_goal("MFU (real tokens) vs HF plain loop, same padded shapes",
                    ratios.get("hf_loop_same", {}).get("mfu_real"), 1.2, False,
                    "ours without the first-token shortcut / HF, both on our length-bucketed batches"),
        _ratio_goal("MFU (real tokens) vs HF plain loop, both padded to max_length",
                    results.get("padded_pair", {}).get("mfu_real"), 1.2, False,
                    "ours without the first-token shortcut / HF, both padded to max_length"),
    ]
    full = results["contenders"].get(FULL)
    if full is not None:
        mfu = full["mfu_real"]["median"]
        rows.append(_goal("our MFU (real tokens) vs model-shape matmul peak", ">= 0.7", mfu, mfu >= 0.7,
                          "real-token model FLOP/s of ours without the first-token shortcut / matmul peak at "
                          "the model's linear shapes", full["mfu_real"]))
    for name, table in results.get("padding", {}).items():
        waste = table["padding_fraction"]["bucketed (ours)"]
        rows.append(_goal(f"padding waste on {name}", "<= 0.05", waste, waste <= 0.05,
                          f"mean {table['mean_tokens']:.1f} tokens per example, batch {table['batch_size']}"))
    rows.append(_memory_goal(results))
    sweep = results.get("sweep")
    if sweep:
        fair = sweep["one_thread_over_one_job"]
        rows.append(_goal("parallel sweep: N jobs x 1 thread / one N-thread job at a time", "> 1", fair["median"],
                          fair["median"] > 1, f"aggregate real tokens/s on {sweep['cores']} cores (against N jobs x "
                          f"N threads, oversubscribed: {_span(sweep['one_thread_over_fighting'], '.2f')})", fair))
    return rows


def training_rss(memory: dict[str, Any]) -> float:
    """Peak RSS while training (MiB), or the whole process's peak where it could not be told apart."""
    return memory.get("training_peak_rss_mib") or memory["peak_rss_mib"]


def _memory_goal(results: dict[str, Any]) -> dict[str, Any]:
    """Our peak RSS against the lowest of the other contenders that train on exactly our batches."""
    name = "peak RSS while training vs the lowest contender, same batches"
    memory = results.get("memory", {})
    theirs = {n: training_rss(memory[n]) for n in SAME_BATCHES if n in memory}
    if REFERENCE not in memory or not theirs:
        return _goal(name, "<= 1", None, None, "not measured (needs ours and a contender on our batches)")
    lowest = min(theirs, key=theirs.get)
    ours = training_rss(memory[REFERENCE])
    ratio = ours / theirs[lowest]
    return _goal(name, "<= 1", ratio, ratio <= 1, f"ours {ours:,.0f} MiB / {results['contenders'][lowest]['who']} "
                 f"{theirs[lowest]:,.0f} MiB; fresh processes, each stepping on its epoch's largest batches")


def _span(s: dict[str, float], fmt: str) -> str:
    """'median (min-max)' of a summary."""
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _percent_span(s: dict[str, float]) -> str:
    """'median (min-max)' of a fraction, in per cent."""
    return f"{100 * s['median']:.1f}% ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def _measured(g: dict[str, Any]) -> str:
    """A goal's measured value, with its range over the repetitions when it is timed."""
    if g["measured"] is None:
        return "-"
    spread = f" ({g['min']:.3f}-{g['max']:.3f})" if g.get("min") is not None else ""
    return f"{g['measured']:.3f}{spread}"


def _fmt(value: float | None, fmt: str) -> str:
    """A number, or a dash when absent."""
    return "-" if value is None else f"{value:{fmt}}"


def print_tables(results: dict[str, Any], console: Console) -> None:
    """The contenders, the goals, padding, peaks and the sweep row, as rich tables."""
    console.print(_contenders_table(results))
    console.print(_differs_table(results))
    console.print(_goals_table(results))
    if "seq2seq" in results:
        console.print(_seq2seq_table(results["seq2seq"]))
        console.print(_decoding_table(results["seq2seq"]["decoding"]))
    console.print(_padding_table(results))
    console.print(_extras_table(results))


def _contenders_table(results: dict[str, Any]) -> Table:
    """One row per contender, with ratios ours / theirs."""
    meta = results["meta"]
    title = (f"Training throughput, {meta['model_summary']}, batch {meta['batch_size']}, fp32, "
             f"{meta['torch_threads']} threads; median (min-max) of {meta['reps']} interleaved repetitions"
             + _peaks_note(results))
    t = Table(title=title, title_justify="left")
    full_epoch = results.get("full_epoch", {})
    for col in ("contender", "batches", "step ms", "real tok/s", "pad %", "epoch s (est.)",
                *(["epoch s (one measured)"] if full_epoch else []), "MFU real",
                "peak RSS MiB (training)", "epoch time ours/theirs", "tok/s ours/theirs", "MFU ours full/theirs"):
        t.add_column(col, justify="left" if col in ("contender", "batches") else "right")
    for name, c in results["contenders"].items():
        r = results["ratios"].get(name, {})
        mem = results.get("memory", {}).get(name, {})
        t.add_row(c["who"], c["batching"], _span(c["step_ms"], ".0f"), _span(c["real_tokens_per_s"], ",.0f"),
                  f"{100 * c['epoch']['padding_fraction']:.1f}", _span(c["epoch_s"], ".1f"),
                  *([_fmt(full_epoch.get(name, {}).get("epoch_s"), ".1f")] if full_epoch else []),
                  _percent_span(c["mfu_real"]),
                  _fmt(training_rss(mem) if mem else None, ",.0f"),
                  *(_span(r[key], ".2f") if key in r else "-" for key in ("epoch_s", "real_tokens_per_s", "mfu_real")))
    return t


def _peaks_note(results: dict[str, Any]) -> str:
    """Where the MFU peaks were measured: the matmul rows of each batching's typical batch."""
    peaks = results.get("mfu_peaks", {})
    shapes = ", ".join(f"{p['rows']:,} rows ({batching})" for batching, p in peaks.items())
    return f"; MFU against the model-shape matmul peak at the typical batch: {shapes}" if peaks else ""


def _differs_table(results: dict[str, Any]) -> Table:
    """What still differs between each contender and tformer's step (same optimizer, dropout and batches)."""
    t = Table(title="What differs from tformer's step (fused AdamW, dropout placement and sizes are the same)",
              title_justify="left")
    t.add_column("contender")
    t.add_column("batches")
    t.add_column("what differs")
    for c in results["contenders"].values():
        t.add_row(c["who"], c["batching"], c.get("differs", ""))
    return t


def _seq2seq_table(s2s: dict[str, Any]) -> Table:
    """Encoder-decoder training rows with ratios ours / theirs."""
    t = Table(title=f"Seq2seq training ({s2s['experiment']} on {s2s['dataset']}), {s2s['model_summary']}, "
                    f"batch {s2s['batch_size']}, fp32; source + target tokens", title_justify="left")
    for col in ("contender", "batches", "step ms", "real tok/s", "pad %", "epoch s (est.)",
                "epoch time ours/theirs", "tok/s ours/theirs"):
        t.add_column(col, justify="left" if col in ("contender", "batches") else "right")
    for name, c in s2s["contenders"].items():
        r = s2s["ratios"].get(name, {})
        t.add_row(c["who"], c["batching"], _span(c["step_ms"], ".0f"), _span(c["real_tokens_per_s"], ",.0f"),
                  f"{100 * c['epoch']['padding_fraction']:.1f}", _span(c["epoch_s"], ".1f"),
                  _span(r["epoch_s"], ".2f") if r else "-", _span(r["real_tokens_per_s"], ".2f") if r else "-")
    return t


def _decoding_table(dec: dict[str, Any]) -> Table:
    """Decoding rows: time for the same sources, ours against generate()."""
    t = Table(title=f"Seq2seq decoding: {dec['sources']} validation sources, batches of {dec['batch']}, "
                    "every row run to the length limit", title_justify="left")
    for col in ("decoder", "seconds", "sources/s", "positions/s", "time ours/theirs"):
        t.add_column(col, justify="left" if col == "decoder" else "right")
    for name, row in dec["rows"].items():
        kind = name.split(" ", 1)[1]
        ratio = dec["ratios"].get(kind) if name.startswith("ours") else None
        t.add_row(name, _span(row["seconds"], ".2f"), _span(row["sources_per_s"], ",.0f"),
                  _span(row["positions_per_s"], ",.0f"), _span(ratio, ".2f") if ratio else "-")
    return t


def _goals_table(results: dict[str, Any]) -> Table:
    """The issue's goals: target, measured value, met or not."""
    t = Table(title="Goals (ratios: median (min-max) of per-repetition ours/theirs)", title_justify="left")
    for col in ("goal", "target", "measured", "met", "detail"):
        t.add_column(col)
    for g in results["goals"]:
        met = "-" if g["met"] is None else ("yes" if g["met"] else "NO")
        t.add_row(g["goal"], g["target"], _measured(g), met, g["detail"])
    return t


def _padding_table(results: dict[str, Any]) -> Table:
    """Padding share of the shipped datasets' training batches under each batching."""
    t = Table(title="Padding share of computed tokens, training split (mean of 3 shuffled epochs)",
              title_justify="left")
    tables = results.get("padding", {})
    kinds = list(next(iter(tables.values()))["padding_fraction"]) if tables else []
    t.add_column("dataset")
    t.add_column("examples", justify="right")
    t.add_column("mean tokens", justify="right")
    for k in kinds:
        t.add_column(k, justify="right")
    for name, p in tables.items():
        t.add_row(name, f"{p['examples']:,}", f"{p['mean_tokens']:.1f}",
                  *(f"{100 * p['padding_fraction'][k]:.1f}%" for k in kinds))
    return t


def _extras_table(results: dict[str, Any]) -> Table:
    """Matmul peaks and the parallel-sweep row."""
    t = Table(title="Matmul peak (fp32, this run) and parallel sweep jobs", title_justify="left")
    t.add_column("measurement")
    t.add_column("value", justify="right")
    for name, s in results["matmul_peak"].items():
        t.add_row(f"peak: {name}", _span(s, ",.0f") + " GFLOP/s")
    sweep = results.get("sweep")
    if sweep:
        for name, row in sweep["rows"].items():
            t.add_row(f"sweep: {name}", f"{_span(row['real_tokens_per_s'], ',.0f')} real tok/s (aggregate)")
        n = sweep["cores"]
        t.add_row(f"sweep: {n} jobs x 1 thread / {sweep['baseline']} (the fair baseline)",
                  _span(sweep["one_thread_over_one_job"], ".2f"))
        t.add_row(f"sweep: {n} jobs x 1 thread / {n} jobs x {n} threads (oversubscribed)",
                  _span(sweep["one_thread_over_fighting"], ".2f"))
    for name, full in results.get("full_epoch", {}).items():
        t.add_row(f"full epoch: {name}", f"{full['epoch_s']:.1f} s measured, {_span(full['estimated_epoch_s'], '.1f')} "
                  f"s estimated; measured/estimated {_span(full['measured_over_estimated'], '.2f')}")
    return t


def write_json(results: dict[str, Any], path: Path) -> None:
    """Strict JSON (non-finite numbers as null), parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=2) + "\n")
