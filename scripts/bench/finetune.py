"""`python -m scripts.bench.finetune`: fine-tuning the built-in MiniLM, tformer against Hugging Face's plain loop
and its Trainer.

In one run, seed by seed, each side first in turn, it times three whole commands on the same machine:
  * tformer: `tformer train experiment=sentiment_minilm seed=S` (data loading, tokenization, training,
    evaluation of validation and test, checkpoints, plots: everything the command does), with an empty
    tokenized cache, as a first run;
  * Hugging Face, plain loop: `python -m scripts.bench.hf_finetune` (scripts/bench/hf_finetune.py),
    AutoModelForSequenceClassification in a plain PyTorch loop;
  * Hugging Face, Trainer: `python -m scripts.bench.hf_trainer_glue --model-dir` at Trainer's best settings
    (fused AdamW, group_by_length, an evaluation and a checkpoint every epoch, the best loaded at the end);
all on the same model directory and CSV splits, with the same epochs, batch size, learning rate, warmup and
linear decay, weight-decay groups, gradient clipping, maximum length and dropout (hidden, attention and
classifier 0.1). Training examples/s divide the examples trained by the fit's seconds without its
evaluations. What still differs is printed beside the figures (DIFFERENCES). The main benchmark runs the
same comparison with `python -m scripts.bench --finetune`.
With --vader it then fine-tunes MiniLM on VADER's sentiment ratings (task=regress) and compares the Pearson
correlation with the from-scratch default (`tformer train task=regress`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scripts.bench.command import TFORMER, run, summary_of
from scripts.bench.commands import cold_cache, fresh
from scripts.bench.flops import summary

SIDES = {"tformer": "tformer train", "hf": "transformers, plain loop", "trainer": "transformers Trainer"}
DIFFERENCES = ("batches: tformer buckets examples by length; the plain loop shuffles uniformly, each batch padded "
               "to its longest; Trainer uses group_by_length (mega-batches sorted by length: more padding than "
               "tformer's)",
               "tokenization: tformer and Trainer tokenize each split once; the plain loop tokenizes every batch "
               "with AutoTokenizer",
               "tformer's last layer computes only the [CLS] position the head reads",
               "evaluation batches: tformer and the plain loop evaluate length-sorted batches of 128; Trainer in "
               "file order, each batch padded to its longest",
               "evaluation and checkpoints: tformer and Trainer evaluate validation and write a checkpoint every "
               "epoch, then load the best for the final evaluation; the plain loop evaluates once at the end and "
               "writes none. Training examples/s divide by the fit without its evaluations, checkpoint writes "
               "included",
               "warmup: Trainer's and the loop's first step run at learning rate 0, tformer's at 1/warmup of the peak",
               "dropout masks: tformer draws 16 random bits per element (attention dropout too); torch's nn.Dropout "
               "and SDPA draw a Bernoulli sample per element",
               "allocator: tformer raises glibc malloc's thresholds (blocks up to 1 GiB reuse freed heap memory: "
               "the 30,522 x 384 embedding gradient is no longer faulted in afresh every step); both Hugging Face "
               "scripts run with glibc's defaults",
               "tformer also writes metrics files, plots and a run card")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--vader", action="store_true", help="also the VADER regression comparison")
    p.add_argument("--smoke", action="store_true", help="a few examples and steps: checks the script runs")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/finetune"), help="run directories and JSON")
    return p.parse_args(argv)


def tformer(args: argparse.Namespace, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """One whole `tformer train` command (an empty tokenized cache, as a first run): its wall time, its summary,
    and its training seconds without the evaluations inside the fit."""
    smoke = ["data.max_train_examples=96", "data.max_eval_examples=64", "trainer.max_steps=3"] if args.smoke else []
    cmd = [*TFORMER, "train", *overrides, f"trainer.max_epochs={args.epochs}",
           "trainer.progress=false", f"hydra.run.dir={fresh(run_dir)}", *smoke]
    env = {**os.environ, "TFORMER_CACHE": str(cold_cache(run_dir.with_name(f"{run_dir.name}-cache")))}
    wall, _ = run(cmd, run_dir.with_suffix(".log"), env)
    summary = summary_of(run_dir)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    eval_seconds = sum(e["eval_seconds"] for e in events if e.get("event") == "eval")
    return {"wall_seconds": wall, "train_seconds": summary["train_seconds"], "steps": summary["steps"],
            "metrics": summary["final"], "train_examples": round(summary["epochs"] * summary["examples"]["train"]),
            "fit_seconds_without_evaluation": summary["train_seconds"] - eval_seconds}


def hugging_face(args: argparse.Namespace, splits: dict[str, Path], model_dir: Path, seed: int, log: Path,
                 regress: bool = False) -> dict[str, Any]:
    """One whole run of the plain transformers loop: its wall time and metrics."""
    cmd = [sys.executable, "-m", "scripts.bench.hf_finetune", str(model_dir), *(str(splits[s]) for s in
           ("train", "validation", "test")), f"--seed={seed}", f"--epochs={args.epochs}"]
    cmd += ["--regress", "--label-column=score"] if regress else []
    cmd += ["--max-examples=96", "--max-steps=3"] if args.smoke else []
    wall, out = run(cmd, log)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_seconds": wall, **result, "fit_seconds_without_evaluation": result["train_seconds"]}


def trainer(args: argparse.Namespace, splits: dict[str, Path], model_dir: Path, seed: int, out: Path
            ) -> dict[str, Any]:
    """One whole run of the Trainer script on the same model directory, at Trainer's best settings (fused AdamW,
    group_by_length, tformer's weight-decay groups) and sentiment_minilm's schedule: its wall time and metrics."""
    cmd = [sys.executable, "-m", "scripts.bench.hf_trainer_glue", *(str(splits[s]) for s in
           ("train", "validation", "test")), f"--model-dir={model_dir}", f"--output-dir={fresh(out)}",
           f"--seed={seed}", f"--epochs={args.epochs}", "--lr=5e-5", "--schedule=linear", "--warmup-ratio=0.06",
           "--dropout=0.1", "--attn-dropout=0.1", "--head-dropout=0.1", "--max-length=128"]
    cmd += ["--max-examples=96", "--max-eval-examples=64", "--max-steps=3"] if args.smoke else []
    wall, stdout = run(cmd, out.with_suffix(".log"))
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, **result,
            "fit_seconds_without_evaluation": result["fit_seconds"] - result["eval_seconds_in_fit"]}


def sentiment(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Rotten Tomatoes: both sides for each seed, alternating which goes first."""
    from transformer_cli.data.builtin import prepare_builtin

    splits = prepare_builtin("rotten_tomatoes")
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        order = list(SIDES)[i % 3:] + list(SIDES)[: i % 3]  # each side first in turn
        for side in order:
            if side == "tformer":
                rows[side].append(tformer(args, args.out / f"rt-tformer-{seed}", ["experiment=sentiment_minilm",
                                                                                  f"seed={seed}"]))
            elif side == "hf":
                rows[side].append(hugging_face(args, splits, model_dir, seed, args.out / f"rt-hf-{seed}.log"))
            else:
                rows[side].append(trainer(args, splits, model_dir, seed, args.out / f"rt-trainer-{seed}"))
    return rows


def examples_per_s(row: dict[str, Any]) -> float:
    """Training examples per second of one run: examples trained / fit seconds without its evaluations."""
    return row["train_examples"] / row["fit_seconds_without_evaluation"]


def figures(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median (min-max) over the seeds of each side's throughput, accuracies and wall time, and the paired ratios
    tformer / theirs (examples/s: above 1 is faster; wall seconds: below 1 is faster)."""
    sides = {side: {"examples_per_s": summary([examples_per_s(r) for r in runs]),
                    "test_accuracy": summary([r["metrics"]["test"]["accuracy"] for r in runs]),
                    "validation_accuracy": summary([r["metrics"]["validation"]["accuracy"] for r in runs]),
                    "wall_s": summary([r["wall_seconds"] for r in runs])} for side, runs in rows.items()}
    ours = rows["tformer"]
    ratios = {side: {"examples_per_s": summary([examples_per_s(a) / examples_per_s(b) for a, b in zip(ours, runs)]),
                     "wall_s": summary([a["wall_seconds"] / b["wall_seconds"] for a, b in zip(ours, runs)]),
                     "test_accuracy_difference": summary([a["metrics"]["test"]["accuracy"]
                                                          - b["metrics"]["test"]["accuracy"]
                                                          for a, b in zip(ours, runs)])}
              for side, runs in rows.items() if side != "tformer"}
    return {"sides": sides, "ratios": ratios}


def section(args: argparse.Namespace) -> dict[str, Any]:
    """The Rotten Tomatoes comparison with its figures and what still differs (the main benchmark's --finetune
    section: `parse_args(["--smoke", "--seeds=0"])` for its smoke run)."""
    from transformer_cli.pretrained.source import builtin_dir

    model_dir = builtin_dir("all-minilm-l6-v2")  # fetched once, before anything is timed
    rows = sentiment(args, model_dir)
    return {"sentiment": rows, **figures(rows), "differences": list(DIFFERENCES), "epochs": args.epochs,
            "seeds": len(rows["tformer"]), "smoke": args.smoke}


def vader(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """VADER ratings: MiniLM fine-tuned by tformer and by the loop, and tformer's from-scratch default."""
    from transformer_cli.data.builtin import prepare_builtin

    splits = prepare_builtin("vader")
    scratch_epochs = argparse.Namespace(**{**vars(args), "epochs": 4})  # the default's own 4 epochs
    return {"tformer": tformer(args, args.out / "vader-tformer", ["experiment=vader_minilm"]),
            "hf": hugging_face(args, splits, model_dir, 0, args.out / "vader-hf.log", regress=True),
            "scratch": tformer(scratch_epochs, args.out / "vader-scratch", ["task=regress"])}


def main(argv: list[str] | None = None) -> None:
    """Run the comparisons, print the tables, write the JSON."""
    args = parse_args(argv)
    from transformer_cli.pretrained.source import builtin_dir

    results = {**section(args), "cpu_threads": os.cpu_count()}
    if args.vader:
        results["vader"] = vader(args, builtin_dir("all-minilm-l6-v2"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps(results, indent=2))
    show(results, Console())


def show(results: dict[str, Any], console: Console) -> None:
    """The comparison tables and the differences that remain."""
    from scripts.bench.report import finetune_table

    console.print(finetune_table(results))
    if "vader" in results:
        v = results["vader"]
        vt = Table(title="VADER ratings (task=regress), test split")
        for col in ("", "pearson", "rmse", "wall s"):
            vt.add_column(col, justify="right")
        for key, name in (("tformer", "tformer, MiniLM"), ("hf", "transformers loop, MiniLM"),
                          ("scratch", "tformer, from scratch (default)")):
            test = v[key]["metrics"]["test"]
            vt.add_row(name, f"{test['pearson']:.4f}", f"{test['rmse']:.4f}", f"{v[key]['wall_seconds']:.0f}")
        console.print(vt)


if __name__ == "__main__":
    main()
