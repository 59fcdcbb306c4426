"""`python -m scripts.bench [--smoke] [--out PATH]`: time the contenders, check the goals, print and save."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from transformer_cli import __version__
from transformer_cli.allocator import tune_malloc

from . import commands, hf, report, runner, seq2seq, workers
from .contenders import model_shape
from .flops import model_shape_peak, square_peak, summary
from .workload import MODES, Settings, epoch_batches, load_workload, typical_padded_tokens

DEFAULT_OUT = Path("outputs/bench/bench.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the script runs")
    p.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)  # what --smoke sets; for workers
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    p.add_argument("--reps", type=int, help="interleaved repetitions per contender (default: the mode's)")
    p.add_argument("--only", help="comma-separated contenders to time (default: all but what-ifs): "
                   + ",".join(runner.CONTENDERS))
    p.add_argument("--threads", type=int, default=0, help="torch threads for the timing (0: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak memory runs")
    p.add_argument("--no-sweep", action="store_true", help="skip the parallel sweep row")
    p.add_argument("--no-seq2seq", action="store_true", help="skip the encoder-decoder training and decoding rows")
    p.add_argument("--what-if", action="store_true", help="also time our step with proposed changes (what_if.py)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler tables of ours and HF's plain loop on the same batches, beside the JSON")
    p.add_argument("--full-epoch", action="store_true",
                   help="also train ours for one whole epoch (checks the estimate)")
    p.add_argument("--commands", action="store_true",
                   help="also whole commands: `tformer train` against a Trainer script (commands.py), 3 runs each")
    p.add_argument("--finetune", action="store_true",
                   help="also MiniLM fine-tuning: tformer, a plain transformers loop and Trainer (finetune.py)")
    p.add_argument("--finetune-seeds", default="0,1,2", metavar="SEEDS",
                   help="seeds of --finetune, comma-separated (default 0,1,2; each seed runs all three sides)")
    p.add_argument("--trained-decoding", action="store_true",
                   help="also decoding of a trained G2P model against generate(), with EOS and at full length "
                        "(decode.py; trains the model first unless --decode-checkpoint)")
    p.add_argument("--decode-checkpoint", type=Path, metavar="RUN",
                   help="the trained model of --trained-decoding: a run directory or checkpoint of decode.py's shape")
    p.add_argument("--worker", choices=["memory", "sweep"], help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The mode's settings with command-line changes."""
    settings = MODES[args.mode or ("smoke" if args.smoke else "full")]
    return dataclasses.replace(settings, reps=args.reps) if args.reps else settings


def contender_names(args: argparse.Namespace, log: Any) -> list[str]:
    """The contenders to run: --only, minus the Hugging Face ones when transformers is missing."""
    names = args.only.split(",") if args.only else [n for n in runner.CONTENDERS if n not in runner.WHAT_IF]
    if args.what_if:
        names += [n for n in runner.WHAT_IF if n not in names]
    unknown = [n for n in names if n not in runner.CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {list(runner.CONTENDERS)}")
    for reference in (runner.FULL, runner.REFERENCE):  # every ratio divides one of them
        if reference not in names:
            names.insert(0, reference)
    missing = hf.available()
    if missing:
        log(f"note: Hugging Face rows skipped: {missing}")
        names = [n for n in names if not runner.CONTENDERS[n].needs_hf]
    return names


PADDED, BUCKETED = "pad to max_length", "length-bucketed"  # the batch shapes an MFU peak is measured at


def peak_rows(work: Any, settings: Settings) -> dict[str, int]:
    """Tokens per batch (the matmuls' row count) of a typical step: bucketed batches and max_length padding."""
    bucketed = typical_padded_tokens(epoch_batches(work, settings.batch_size, True, settings.seed),
                                     work.split.lengths)
    return {BUCKETED: bucketed, PADDED: settings.batch_size * work.max_length}


def peak_key(batching: str, rows: int) -> str:
    """The matmul_peak entry of the model-shape peak at one batching's rows."""
    return f"model linear shapes, {rows} tokens ({batching} batch), fwd+bwd"


def measure_peaks(settings: Settings, shape: Any, rows: dict[str, int], reps: int) -> dict[str, list[float]]:
    """GFLOP/s of a square matmul and of the model's own linear shapes at each batching's rows, per repetition."""
    n = settings.matmul_size
    return {f"torch.mm {n}x{n}": square_peak(n, reps),
            **{peak_key(batching, r): model_shape_peak(shape, r, reps) for batching, r in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    settings = settings_from(args)
    tune_malloc()  # as the tformer CLI does: every in-process contender and worker runs with the same allocator
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker:
        return run_worker(args, settings)
    console = Console(stderr=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/] {msg}")

    load_before = os.getloadavg()
    results = classification(args, settings, contender_names(args, log), log)
    report.write_json(results, args.out)  # each section is saved as it completes: a stopped run keeps its rows
    if not args.no_seq2seq:
        results["seq2seq"] = seq2seq_rows(settings, log)
        report.write_json(results, args.out)
    if args.trained_decoding:
        results["trained_decoding"] = trained_decoding(settings, args, log)
        report.write_json(results, args.out)
    if not args.no_memory:
        results["memory"] = {}
        for name in [n for n in results["contenders"] if not settings.memory_for or n in settings.memory_for]:
            results["memory"][name] = workers.measure_memory(settings, name)
            log(f"peak memory of {name}: {results['memory'][name]['peak_rss_mib']:,.0f} MiB")
        report.write_json(results, args.out)
    if args.commands:
        results["commands"] = whole_commands(settings, args.out, log)
        report.write_json(results, args.out)
    if args.finetune:
        results["finetune"] = minilm_finetuning(settings, args.out, args.finetune_seeds, log)
        report.write_json(results, args.out)
    if not args.no_sweep:
        log("parallel sweep jobs")
        results["sweep"] = workers.sweep_table(settings)
    results["goals"] = report.goals(results)
    results["meta"]["wall_s"] = time.perf_counter() - started
    # Other processes on the machine slow every contender and inflate MFU (the peak is measured under the same load).
    results["meta"]["load_average_1min"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    report.print_tables(results, Console(width=None if sys.stdout.isatty() else 180))
    report.write_json(results, args.out)
    log(f"wrote {args.out}")
    return 0


def classification(args: argparse.Namespace, settings: Settings, names: list[str], log: Any) -> dict[str, Any]:
    """The classification rows: matmul peaks, interleaved timing, ratios, padding, and the optional extras."""
    work = load_workload(settings)
    shape = model_shape(work)
    rows = peak_rows(work, settings)
    peak_reps = 3 if settings.mode == "full" else 2
    peaks = measure_peaks(settings, shape, rows, peak_reps)
    log(f"data ready ({len(work.split):,} training examples); matmul peaks measured")
    blocks, epochs, built = runner.time_contenders(work, settings, names, log)
    for key, values in measure_peaks(settings, shape, rows, peak_reps).items():
        peaks[key] += values  # before and after the contenders: the same background load as theirs
    mfu_peaks = {b: {"rows": r, "gflops": summary(peaks[peak_key(b, r)])["median"]} for b, r in rows.items()}

    def peak_of(name: str) -> str:
        """The batch shape a contender's MFU is measured against: its own (padded or not)."""
        return PADDED if runner.CONTENDERS[name].padded else BUCKETED

    c = {name: {"who": runner.CONTENDERS[name].who, "batching": runner.CONTENDERS[name].batching,
                "differs": runner.CONTENDERS[name].differs, "mfu_peak": peak_of(name),
                **runner.contender_figures(blocks[name], epochs[name], mfu_peaks[peak_of(name)]["gflops"])}
         for name in names}
    results: dict[str, Any] = {
        # MFU of each row: real-token model FLOP/s / the model-shape peak at its batching's typical batch rows
        "meta": meta(settings, work, names), "mfu_peak_gflops": mfu_peaks[BUCKETED]["gflops"], "mfu_peaks": mfu_peaks,
        "matmul_peak": {k: summary(v) for k, v in peaks.items()}, "contenders": c,
        "ratios": runner.ratio_table(c), "ratio_references": runner.RATIO_REFERENCES,
    }
    if "ours_full_pad" in c and "hf_loop_pad" in c:  # the same padded shapes and the same work
        results["padded_pair"] = {"mfu_real": runner.paired_ratio(c["ours_full_pad"], c["hf_loop_pad"], "mfu_real")}
    log("timing done; padding on the shipped datasets")
    results["padding"] = {"rotten_tomatoes": runner.padding_table(work, settings),
                          "vader": runner.padding_table(load_workload(settings, ("task=regress",)), settings)}
    if args.profile:
        results["profile"] = profile_contenders(built, settings, args.out, log)
    if args.full_epoch:
        log("one full epoch of ours")
        results["full_epoch"] = {runner.REFERENCE: runner.full_epoch_ours(work, settings, c[runner.REFERENCE])}
    return results


BART = ("BART's layout: post-norm, learned positions, embedding LayerNorm, no sqrt(d) embedding scale; torch's "
        "nn.Dropout (ours draws 16 random bits per element); linear schedule")
SEQ2SEQ_DIFFERS = {  # what differs from our encoder-decoder step, where seq2seq.SEQ2SEQ does not say
    "ours": "the reference: `tformer train experiment=g2p`'s step",
    "hf_loop_same": BART,
    "hf_trainer_grouped": f"{BART}; Trainer's data loader, collator and callbacks are timed; its own "
                          "length-grouped batches",
}


def seq2seq_rows(settings: Settings, log: Any) -> dict[str, Any]:
    """Training and decoding of the g2p encoder-decoder, ours against BART (no MFU: the formula is the encoder's)."""
    work = load_workload(settings, seq2seq=True)
    log(f"seq2seq data ready ({len(work.split):,} training pairs, {work.cfg.data.name})")
    s2s = seq2seq.training_settings(work, settings)
    names = [n for n, spec in seq2seq.SEQ2SEQ.items() if not spec.needs_hf or hf.available() is None]
    blocks, epochs, _ = runner.time_contenders(work, s2s, names, log, seq2seq.SEQ2SEQ)
    drop = ("mfu_real", "mfu_padded", "achieved_gflops_real")
    rows = {}
    for name in names:
        figures = runner.contender_figures(blocks[name], epochs[name], 1.0)
        figures["reps"] = [{k: v for k, v in r.items() if k not in drop} for r in figures["reps"]]
        rows[name] = {"who": seq2seq.SEQ2SEQ[name].who, "batching": seq2seq.SEQ2SEQ[name].batching,
                      "differs": seq2seq.SEQ2SEQ[name].differs or SEQ2SEQ_DIFFERS.get(name, ""),
                      **{k: v for k, v in figures.items() if k not in drop}}
    ratios = {name: {key: runner.paired_ratio(rows["ours"], rows[name], key)
                     for key in ("epoch_s", "real_tokens_per_s")}
              for name in names if name != "ours"}
    m = work.cfg.model
    return {"experiment": "g2p", "dataset": work.cfg.data.name, "training_pairs": len(work.split),
            "model_summary": f"d_model {m.d_model}, {m.n_layers}+{m.decoder_layers or m.n_layers} layers, "
                             f"{m.n_heads} heads, FFN {m.d_ff}",
            "batch_size": s2s.batch_size, "contenders": rows, "ratios": ratios,
            "decoding": seq2seq.decoding(work, settings, log)}


def skipped(section: str, log: Any) -> bool:
    """True (and a note logged) when transformers is missing, so a section that needs it is left out."""
    missing = hf.available()
    if missing:
        log(f"note: {section} skipped: {missing}")
    return missing is not None


def whole_commands(settings: Settings, out: Path, log: Any) -> dict[str, Any] | None:
    """`tformer train` against the Trainer script, whole commands; None without transformers."""
    if skipped("whole commands", log):
        return None
    log("whole commands: tformer train and the Trainer script, alternating")
    return commands.compare(settings.mode, out.with_name(f"{out.stem}_commands"), log)


def minilm_finetuning(settings: Settings, out: Path, seeds: str, log: Any) -> dict[str, Any] | None:
    """MiniLM fine-tuning, whole commands of tformer, the plain loop and Trainer; None without transformers."""
    from . import finetune

    if skipped("MiniLM fine-tuning", log):
        return None
    log("MiniLM fine-tuning: tformer, the plain loop and Trainer, each first in turn")
    smoke = ["--smoke", "--seeds=0"] if settings.mode == "smoke" else [f"--seeds={seeds}"]
    return finetune.section(finetune.parse_args([*smoke, f"--out={out.with_name(f'{out.stem}_finetune')}"]))


def trained_decoding(settings: Settings, args: argparse.Namespace, log: Any) -> dict[str, Any] | None:
    """Greedy and beam search on a trained G2P model against generate(), one thread; None without transformers."""
    from . import decode

    if skipped("trained-model decoding", log):
        return None
    log("decoding a trained G2P model: tformer and generate(), with EOS and at full length")
    smoke = ["--smoke"] if settings.mode == "smoke" else []
    argv = [f"--out={args.out.with_name(f'{args.out.stem}_decode')}", *smoke,
            *([f"--checkpoint={args.decode_checkpoint}"] if args.decode_checkpoint else [])]
    return decode.measure(decode.parse_args(argv))


def profile_contenders(built: dict[str, Any], settings: Settings, out: Path, log: Any) -> dict[str, Any]:
    """Profile ours (with and without the first-token shortcut) and HF's plain loop on the same batches; operator
    tables go beside the JSON."""
    from .profile import profile_steps

    summaries = {}
    for name in ("ours", runner.FULL, "hf_loop_same", *[n for n in built if n in runner.WHAT_IF]):
        if name in built:
            table, summaries[name] = profile_steps(built[name], settings.steps_bucketed // 2 or 1)
            path = out.with_name(f"{out.stem}_profile_{name}.txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(table)
            log(f"profile of {name}: {path}")
    return summaries


def meta(settings: Settings, work: Any, names: list[str]) -> dict[str, Any]:
    """What was measured, where, with which versions."""
    m = work.cfg.model
    versions = {"tformer": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if hf.available() is None:
        import accelerate
        import transformers

        versions |= {"transformers": transformers.__version__, "accelerate": accelerate.__version__}
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "mode": settings.mode,
        "command": " ".join([Path(sys.executable).name, "-m", "scripts.bench", *sys.argv[1:]]),
        "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(), "malloc_tuned": tune_malloc(), "versions": versions,
        "contenders": names,
        "dataset": work.cfg.data.name, "training_examples": len(work.split), "vocab_size": work.vocab_size,
        "model": {k: m[k] for k in ("d_model", "n_layers", "n_heads", "d_ff", "dropout", "attn_dropout", "ffn_dropout",
                                    "norm")},
        "model_summary": f"d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads, FFN {m.d_ff}",
        "batch_size": settings.batch_size, "max_length": work.max_length, "reps": settings.reps,
        "rep_orders": runner.rep_orders(names, settings.reps, settings.seed),
        "settings": dataclasses.asdict(settings),
    }


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A child process's job: print its JSON result on the last line."""
    if args.worker == "memory":
        out = workers.memory_worker(settings, args.name)
    else:
        out = workers.sweep_worker(settings, args.threads)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
