"""The benchmark's verdicts and its output: goals checked against the issue, rich tables, strict JSON, and the
markdown section of docs/performance.md:

    python -m scripts.bench.report outputs/bench/bench.json --write docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from transformer_cli.files import jsonable

from .finetune import SIDES
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
    return (rows + seq2seq_goals(results.get("seq2seq")) + finetune_goals(results.get("finetune"))
            + decoding_goals(results.get("trained_decoding")))


def seq2seq_goals(s2s: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Encoder-decoder training: our source + target tokens/s against BART's plain loop on the same batches."""
    ratio = (s2s or {}).get("ratios", {}).get("hf_loop_same", {}).get("real_tokens_per_s")
    return [_ratio_goal("seq2seq training tokens/s vs HF BART plain loop, same batches", ratio, 1.15, False,
                        "ours / BART, both on our length-bucketed g2p batches" if ratio else "--no-seq2seq")]


DECODING_TARGET = 1.3  # tformer's decoding at least this many times as fast as generate(), every row


def decoding_goals(dec: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Greedy and beam search on the trained model, with EOS and at full length: generate()'s time / tformer's."""
    if not dec:
        return [_goal("decoding a trained model vs generate()", f">= {DECODING_TARGET:.3g}", None, None,
                      "not measured (--trained-decoding)")]
    rows = []
    for key, ratio in dec["speedup"].items():
        kind, when = key.split(", ")
        ours, theirs = dec["rows"][f"tformer {key}"], dec["rows"][f"generate {key}"]
        stop = "stopping at EOS" if when == "EOS" else "every row to the length limit"
        rows.append(_ratio_goal(f"{kind} decoding vs generate(), trained model, {stop}", ratio, DECODING_TARGET,
                                False, f"generate()'s time / ours, one thread; decoder rows x steps "
                                f"{ours['row_steps']:,} (ours) / {theirs['row_steps']:,}"))
    return rows


FINETUNE_THEIRS = {"hf": ("HF plain loop", 1.3), "trainer": ("HF Trainer, best settings", 1.2)}  # name, target
ACCURACY_TOLERANCE = 0.01  # "equal accuracy": tformer's test accuracy at most this much below theirs


def finetune_goals(fin: dict[str, Any] | None) -> list[dict[str, Any]]:
    """MiniLM fine-tuning: tformer's training examples/s against each Hugging Face side, and its test accuracy
    after the same epochs; not measured when the section did not run."""
    rows = []
    for side, (who, target) in FINETUNE_THEIRS.items():
        name = f"MiniLM fine-tuning: training examples/s vs {who}"
        acc_name = f"MiniLM fine-tuning: test accuracy vs {who}, same epochs"
        if not fin:
            rows += [_goal(name, f">= {target:.3g}", None, None, "not measured (--finetune)"),
                     _goal(acc_name, f">= -{ACCURACY_TOLERANCE}", None, None, "not measured (--finetune)")]
            continue
        ours, theirs = fin["sides"]["tformer"]["test_accuracy"], fin["sides"][side]["test_accuracy"]
        accuracies = (f"test accuracy tformer {_span(ours, '.4f')}, {who} {_span(theirs, '.4f')}; {fin['seeds']} "
                      f"seed(s), {fin['epochs']} epoch(s)")
        rows.append(_ratio_goal(name, fin["ratios"][side]["examples_per_s"], target, False,
                                f"tformer / {who}; {accuracies}"))
        diff = fin["ratios"][side]["test_accuracy_difference"]
        rows.append(_goal(acc_name, f">= -{ACCURACY_TOLERANCE}", diff["median"],
                          diff["median"] >= -ACCURACY_TOLERANCE, f"tformer minus {who}, per seed; {accuracies}", diff))
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
    if results.get("trained_decoding"):
        console.print(_trained_decoding_table(results["trained_decoding"]))
    if results.get("commands"):
        console.print(_commands_table(results["commands"]))
    if results.get("finetune"):
        console.print(finetune_table(results["finetune"]))
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


COMMAND_SIDES = {"tformer": "tformer train", "trainer": "HF Trainer script"}


def _commands_title(cmd: dict[str, Any]) -> str:
    """What the whole-command comparison ran, in one line."""
    return (f"Whole commands, process start to exit ({cmd['dataset']}, {cmd['model_summary']}, {cmd['epochs']} "
            f"epochs, batch {cmd['batch_size']}): median (min-max) of {len(cmd['reps'])} runs each, alternating order")


def _commands_rows(cmd: dict[str, Any], span: Callable[[dict[str, float] | None, str], str]) -> list[list[str]]:
    """One row per command, then the ratios tformer / Trainer; times to the accuracy both reached."""
    p = cmd["paired"]
    rows = [[COMMAND_SIDES[side], span(cmd[side]["wall_s"], ".1f"), span(cmd[side]["validation_accuracy"], ".4f"),
             span(cmd[side]["test_accuracy"], ".4f"), span(p[f"{side}_time_to_target_s"], ".1f")]
            for side in ("tformer", "trainer")]
    return rows + [["tformer / Trainer", span(p["wall_ratio"], ".2f"), "-", "-", span(p["time_to_target_ratio"], ".2f")]]


def _commands_header(cmd: dict[str, Any]) -> list[str]:
    """Column names of the whole-command table."""
    target = cmd["paired"]["target_accuracy"]
    return ["command", "whole command s", "validation accuracy (best checkpoint)", "test accuracy",
            f"s to the validation accuracy both reached (per run; median {target['median']:.4f})"]


def _commands_table(cmd: dict[str, Any]) -> Table:
    """Whole commands: seconds, accuracies and the time to an accuracy both reached, with what differs."""
    t = Table(title=_commands_title(cmd), title_justify="left", caption="still different: "
              + "; ".join(cmd["differences"]), caption_justify="left")
    for i, col in enumerate(_commands_header(cmd)):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in _commands_rows(cmd, lambda s, fmt: _span(s, fmt) if s else "-"):
        t.add_row(*row)
    return t


def _finetune_title(fin: dict[str, Any]) -> str:
    """What the MiniLM comparison ran, in one line."""
    return (f"MiniLM fine-tuning on Rotten Tomatoes (sentiment_minilm: {fin['epochs']} epoch(s), batch 32, lr 5e-5, "
            f"linear schedule): median (min-max) over {fin['seeds']} seed(s), each side first in turn")


FINETUNE_HEADER = ["contender", "training examples/s", "test accuracy", "validation accuracy", "whole command s",
                   "examples/s tformer/theirs", "whole command tformer/theirs"]


def _finetune_rows(fin: dict[str, Any], span: Callable[[dict[str, float] | None, str], str]) -> list[list[str]]:
    """One row per side with tformer's paired ratios against it."""
    rows = []
    for side, who in SIDES.items():
        c, r = fin["sides"][side], fin["ratios"].get(side, {})
        rows.append([who, span(c["examples_per_s"], ",.1f"), span(c["test_accuracy"], ".4f"),
                     span(c["validation_accuracy"], ".4f"), span(c["wall_s"], ".1f"),
                     span(r.get("examples_per_s"), ".2f"), span(r.get("wall_s"), ".2f")])
    return rows


def finetune_table(fin: dict[str, Any]) -> Table:
    """MiniLM fine-tuning: tformer, the plain loop and Trainer on the same weights and CSVs, with what differs."""
    t = Table(title=_finetune_title(fin), title_justify="left",
              caption="still different: " + "; ".join(fin["differences"]), caption_justify="left")
    for i, col in enumerate(FINETUNE_HEADER):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in _finetune_rows(fin, lambda s, fmt: _span(s, fmt) if s else "-"):
        t.add_row(*row)
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


def _trained_decoding_title(dec: dict[str, Any]) -> str:
    """What the trained-model decoding comparison ran, in one line."""
    reps = next(iter(dec["rows"].values()))["seconds"]["n"]
    return (f"Decoding a trained G2P model, tformer against generate() on BART carrying the same weights (logits gap "
            f"{dec['logits_gap']:.1e}): {dec['sources']} validation sources in batches of {dec['batch']}, one thread, "
            f"median (min-max) of {reps} repetitions, the rows in an order shuffled per repetition")


TRAINED_DECODING_HEADER = ["decoding", "stop", "tformer sources/s", "generate() sources/s", "speed-up",
                           "decoder rows x steps (tformer / generate)", "same output",
                           "ended by EOS (tformer / generate)"]


def _trained_decoding_rows(dec: dict[str, Any], span: Callable[[dict[str, float] | None, str], str]
                           ) -> list[list[str]]:
    """One row per decoding and stop: both sides' speeds, generate()'s time / ours, the work each side did."""
    rows = []
    for key, ratio in dec["speedup"].items():
        kind, when = key.split(", ")
        ours, theirs = dec["rows"][f"tformer {key}"], dec["rows"][f"generate {key}"]
        eos = when == "EOS"
        rows.append([kind, when, span(ours["examples_per_s"], ",.1f"), span(theirs["examples_per_s"], ",.1f"),
                     span(ratio, ".2f"), f"{ours['row_steps']:,} / {theirs['row_steps']:,}",
                     f"{100 * dec['same_output'][kind]:.1f} %" if eos else "-",
                     f"{100 * dec['ended_by_eos'][f'tformer {kind}']:.1f} % / "
                     f"{100 * dec['ended_by_eos'][f'generate {kind}']:.1f} %" if eos else "-"])
    return rows


def _trained_decoding_table(dec: dict[str, Any]) -> Table:
    """Trained-model decoding: speeds, speed-ups and work per row, with what differs."""
    t = Table(title=_trained_decoding_title(dec), title_justify="left",
              caption="still different: " + "; ".join(dec["differences"]), caption_justify="left")
    for i, col in enumerate(TRAINED_DECODING_HEADER):
        t.add_column(col, justify="left" if i < 2 else "right")
    for row in _trained_decoding_rows(dec, lambda s, fmt: _span(s, fmt) if s else "-"):
        t.add_row(*row)
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


# --- the markdown section of docs/performance.md ----------------------------------------------------------

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"  # the generated section lies between these lines


def markers(name: str | None) -> tuple[str, str]:
    """The marker lines around a generated section: the unnamed pair, or one pair per `name` (a page may keep a
    section per kind of machine)."""
    return (BEGIN, END) if not name else (f"<!-- bench:begin {name} -->", f"<!-- bench:end {name} -->")


def _md_span(s: dict[str, float] | None, fmt: str) -> str:
    """'median (min-max)' of a summary, or a dash when it is absent."""
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _md_percent(s: dict[str, float] | None) -> str:
    """'median (min-max)' of a fraction, in per cent."""
    return "-" if not s or s.get("median") is None else _percent_span(s)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table: the first column left-aligned, figures right-aligned, text columns (named
    'what differs' or 'detail') left-aligned; pipes in cells escaped."""
    text = ("batches", "stop", "what differs", "detail", "target", "verdict")
    left = {0} | {i for i, h in enumerate(header) if h in text}
    align = ["---" if i in left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def _md_header(results: dict[str, Any]) -> list[str]:
    """Where the figures come from: the generator, the machine, the versions, the conditions."""
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    load = meta.get("load_average_1min")
    lines = ["_Generated by `python -m scripts.bench.report` from the benchmark's JSON: rerun the benchmark and "
             "the generator rather than editing this section._", ""]
    if meta.get("mode") != "full":
        lines += [f"**These figures are from a {meta.get('mode')} run** (tiny model, a few steps): they show that "
                  "the benchmark runs and say nothing about speed. A full run (`python -m scripts.bench`) on a quiet "
                  "machine replaces them.", ""]
    load_text = f"; load average (1 min) {load['start']:.2f} at the start, {load['end']:.2f} at the end" if load else ""
    malloc = {True: "; glibc malloc thresholds raised, as the tformer CLI raises them, for every in-process "
                    "contender", False: "; glibc malloc at its defaults"}.get(meta.get("malloc_tuned"), "")
    isa = f" ({meta['cpu_capability']} kernels)" if meta.get("cpu_capability") else ""  # torch's CPU dispatch
    lines += [f"- Machine: {meta['cpu']}{isa}, {meta['cores']} cores, {meta['torch_threads']} torch threads{load_text}"
              f"{malloc}",
              f"- Versions: {versions}",
              f"- Date: {meta['date']}; command: `{_public(meta.get('command', 'python -m scripts.bench'))}`",
              f"- Workload: {meta.get('dataset', '?')} ({meta.get('training_examples', 0):,} training examples), "
              f"{meta['model_summary']}, batch {meta['batch_size']}, fp32",
              f"- Every timed figure and ratio: median (min-max) over {meta['reps']} repetitions, the contenders in "
              "an order shuffled per repetition under the seed; ratios are taken per repetition"]
    peaks = results.get("mfu_peaks", {})
    if peaks:
        shapes = "; ".join(f"{batching}: {p['rows']:,} rows" for batching, p in peaks.items())
        lines.append("- MFU: real-token model FLOP/s over the matmul peak of the model's linear shapes, measured in "
                     f"the same run at a typical batch ({shapes}); the MFU ratios divide by tformer without "
                     "the first-token shortcut, which does the work the FLOPs count")
    return lines + [""]


def _public(command: str) -> str:
    """The command as the page shows it: the reused checkpoint's path (a path of the measuring machine) as RUN."""
    return re.sub(r"(--decode-checkpoint)(=|\s+)\S+", r"\1 RUN", command)


def _md_classification(results: dict[str, Any]) -> list[str]:
    """The classification contenders, each with its ratios and what differs."""
    full_epoch = results.get("full_epoch", {})
    header = ["contender", "batches", "real tokens/s", "epoch s (est.)",
              *(["epoch s (one measured)"] if full_epoch else []), "padding", "MFU (real tokens)",
              "peak RSS MiB (training)", "epoch time ours/theirs", "tokens/s ours/theirs", "MFU ours full/theirs",
              "what differs"]
    rows = []
    for name, c in results["contenders"].items():
        r, mem = results["ratios"].get(name, {}), results.get("memory", {}).get(name)
        rows.append([c["who"], c["batching"], _md_span(c["real_tokens_per_s"], ",.0f"), _md_span(c["epoch_s"], ".1f"),
                     *([_fmt(full_epoch.get(name, {}).get("epoch_s"), ".1f")] if full_epoch else []),
                     f"{100 * c['epoch']['padding_fraction']:.1f} %", _md_percent(c.get("mfu_real")),
                     _fmt(training_rss(mem) if mem else None, ",.0f"),
                     *(_md_span(r.get(key), ".2f") for key in ("epoch_s", "real_tokens_per_s", "mfu_real")),
                     c.get("differs") or "-"])
    return ["#### Classification training", "", *_md_table(header, rows), ""]


def _md_goals(results: dict[str, Any]) -> list[str]:
    """Every goal, met or NOT met."""
    rows = []
    for g in results["goals"]:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "**NOT met**")
        spread = f" ({g['min']:.3f}-{g['max']:.3f})" if g.get("min") is not None else ""
        measured = "-" if g["measured"] is None else f"{g['measured']:.3f}{spread}"
        rows.append([g["goal"], g["target"], measured, verdict, g["detail"]])
    return ["#### Goals", "", *_md_table(["goal", "target", "measured", "verdict", "detail"], rows), ""]


def _md_seq2seq(results: dict[str, Any]) -> list[str]:
    """Encoder-decoder training and decoding, when they ran."""
    s2s = results.get("seq2seq")
    if not s2s:
        return []
    rows = []
    for name, c in s2s["contenders"].items():
        r = s2s["ratios"].get(name, {})
        rows.append([c["who"], c["batching"], _md_span(c["real_tokens_per_s"], ",.0f"), _md_span(c["epoch_s"], ".1f"),
                     f"{100 * c['epoch']['padding_fraction']:.1f} %", _md_span(r.get("epoch_s"), ".2f"),
                     _md_span(r.get("real_tokens_per_s"), ".2f"), c.get("differs") or "-"])
    header = ["contender", "batches", "source + target tokens/s", "epoch s (est.)", "padding",
              "epoch time ours/theirs", "tokens/s ours/theirs", "what differs"]
    lines = [f"#### Sequence to sequence ({s2s['experiment']} on {s2s['dataset']}, {s2s['training_pairs']:,} "
             f"training pairs, {s2s['model_summary']}, batch {s2s['batch_size']})", "", *_md_table(header, rows), ""]
    dec = s2s.get("decoding")
    if dec:
        rows = []
        for name, row in dec["rows"].items():
            kind = name.split(" ", 1)[1] if " " in name else name
            ratio = dec["ratios"].get(kind) if name.startswith("ours") else None
            rows.append([name, _md_span(row["seconds"], ".2f"), _md_span(row["sources_per_s"], ",.0f"),
                         _md_span(ratio, ".2f"), row.get("differs") or "-"])
        lines += [f"Decoding {dec['sources']} validation sources in batches of {dec['batch']}, every row run to the "
                  "length limit:", "",
                  *_md_table(["decoder", "seconds", "sources/s", "time ours/theirs", "what differs"], rows), ""]
    return lines


def _md_differences(differences: list[str]) -> list[str]:
    """What still differs, one bullet each."""
    return ["Still different:", "", *(f"- {d}" for d in differences), ""]


def _md_trained_decoding(results: dict[str, Any]) -> list[str]:
    """Decoding a trained model against generate(), when it ran."""
    dec = results.get("trained_decoding")
    if not dec:
        return []
    return [f"#### {_trained_decoding_title(dec)}", "",
            *_md_table(TRAINED_DECODING_HEADER, _trained_decoding_rows(dec, _md_span)), "",
            *_md_differences(dec["differences"])]


def _md_commands(results: dict[str, Any]) -> list[str]:
    """Whole commands, `tformer train` against the Trainer script, when they ran."""
    cmd = results.get("commands")
    if not cmd:
        return []
    return [f"#### {_commands_title(cmd)}", "", f"- tformer: `{cmd['tformer_command']}`",
            f"- Trainer: `{cmd['trainer_command']}`; learning its tokenizer took "
            f"{_md_span(cmd['trainer']['tokenizer_s'], '.1f')} s of its whole command", "",
            *_md_table(_commands_header(cmd), _commands_rows(cmd, _md_span)), "",
            *_md_differences(cmd["differences"])]


def _md_finetune(results: dict[str, Any]) -> list[str]:
    """MiniLM fine-tuning, tformer against the plain loop and Trainer, when it ran."""
    fin = results.get("finetune")
    if not fin:
        return []
    return [f"#### {_finetune_title(fin)}", "", *_md_table(FINETUNE_HEADER, _finetune_rows(fin, _md_span)), "",
            *_md_differences(fin["differences"])]


def _md_padding(results: dict[str, Any]) -> list[str]:
    """Padding share of the shipped datasets under each batching (not timed)."""
    tables = results.get("padding", {})
    if not tables:
        return []
    kinds = list(next(iter(tables.values()))["padding_fraction"])
    rows = [[name, f"{p['examples']:,}", f"{p['mean_tokens']:.1f}",
             *(f"{100 * p['padding_fraction'][k]:.1f} %" for k in kinds)] for name, p in tables.items()]
    return ["#### Padding share of computed tokens (training split, mean of 3 shuffled epochs)", "",
            *_md_table(["dataset", "examples", "mean tokens", *kinds], rows), ""]


def _md_other(results: dict[str, Any]) -> list[str]:
    """Matmul peaks, parallel sweep jobs and the measured full epoch."""
    rows = [[f"matmul peak: {name}", _md_span(s, ",.0f") + " GFLOP/s"] for name, s in results["matmul_peak"].items()]
    sweep = results.get("sweep")
    if sweep:
        n = sweep["cores"]
        rows += [[f"sweep: {name}", _md_span(row["real_tokens_per_s"], ",.0f") + " real tokens/s (aggregate)"]
                 for name, row in sweep["rows"].items()]
        rows += [[f"sweep: {n} jobs x 1 thread / {sweep['baseline']} (the fair baseline)",
                  _md_span(sweep["one_thread_over_one_job"], ".2f")],
                 [f"sweep: {n} jobs x 1 thread / {n} jobs x {n} threads (oversubscribed)",
                  _md_span(sweep["one_thread_over_fighting"], ".2f")]]
    for name, full in results.get("full_epoch", {}).items():
        rows.append([f"one full epoch of {name}: measured s, estimated s, measured/estimated",
                     f"{full['epoch_s']:.1f}, {_md_span(full['estimated_epoch_s'], '.1f')}, "
                     f"{_md_span(full['measured_over_estimated'], '.2f')}"])
    return ["#### Other measurements", "", *_md_table(["measurement", "value"], rows)]


def render_markdown(results: dict[str, Any]) -> str:
    """The benchmark's figures as a markdown section: the machine, tables of median (min-max) with what differs
    beside every contender, and every goal marked met or NOT met."""
    return "\n".join([*_md_header(results), *_md_classification(results), *_md_goals(results),
                      *_md_seq2seq(results), *_md_trained_decoding(results), *_md_commands(results),
                      *_md_finetune(results), *_md_padding(results),
                      *_md_other(results)]) + "\n"


def replace_section(page: str, section: str, name: str | None = None) -> str:
    """The page with the text between the marker lines of `name` replaced by `section`."""
    begin, end_marker = markers(name)
    start, end = page.find(begin), page.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"the page has no {begin} ... {end_marker} pair of markers")
    return page[: start + len(begin)] + "\n" + section + page[end:]


def main(argv: list[str] | None = None) -> int:
    """`python -m scripts.bench.report BENCH_JSON [--write PAGE]`: print the markdown section, or put it into PAGE."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.report",
                                description="Render the benchmark's JSON as the markdown section of the docs.")
    p.add_argument("json", type=Path, help="the benchmark's JSON (python -m scripts.bench --out)")
    p.add_argument("--write", type=Path, metavar="PAGE",
                   help=f"replace the text between {BEGIN} and {END} in PAGE (default: print the section)")
    p.add_argument("--section", metavar="NAME",
                   help="write the section between <!-- bench:begin NAME --> and <!-- bench:end NAME --> instead "
                        "(one per kind of machine)")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    results["goals"] = goals(results)  # today's goal definitions, on the run's figures
    section = render_markdown(results)
    if args.write is None:
        sys.stdout.write(section)
        return 0
    try:
        args.write.write_text(replace_section(args.write.read_text(), section, args.section))
    except ValueError as err:
        raise SystemExit(f"{args.write}: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
