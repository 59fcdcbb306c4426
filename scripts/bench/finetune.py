"""`python -m scripts.bench.finetune`: fine-tuning the built-in MiniLM, tformer against a plain Hugging Face loop.

In one run, seed by seed in alternating order, it times two whole commands on the same machine:
  * tformer: `tformer train experiment=sentiment_minilm seed=S` (data loading, tokenization, training,
    evaluation of validation and test, checkpoints, plots: everything the command does);
  * Hugging Face: `python -m scripts.bench.hf_finetune` (scripts/bench/hf_finetune.py), transformers'
    AutoModelForSequenceClassification in a plain PyTorch loop on the same model directory and the same CSV
    splits, with the same epochs, batch size, learning rate, warmup and linear decay, weight-decay policy,
    gradient clipping, maximum length and dropout (hidden, attention and classifier 0.1), and fused AdamW.
What still differs, and is printed beside the figures: tformer groups examples of similar length into
batches (less padding) where the loop shuffles them uniformly; tformer tokenizes each split once where the
loop tokenizes every batch; tformer's last layer computes only the [CLS] position its head reads; tformer
also writes checkpoints, metrics files and plots.
With --vader it then fine-tunes MiniLM on VADER's sentiment ratings (task=regress) and compares the Pearson
correlation with the from-scratch default (`tformer train task=regress`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scripts.bench.command import TFORMER, run, summary_of

DIFFERENCES = ("tformer buckets examples by length (the loop: uniform shuffle, each batch padded to its longest)",
               "tformer tokenizes each split once; the loop tokenizes every batch with AutoTokenizer",
               "tformer's last layer computes only the [CLS] position the head reads",
               "tformer also writes checkpoints, metrics files, plots and a run card")


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
    """One whole `tformer train` command: its wall time and its summary."""
    smoke = ["data.max_train_examples=96", "data.max_eval_examples=64", "trainer.max_steps=3"] if args.smoke else []
    cmd = [*TFORMER, "train", *overrides, f"trainer.max_epochs={args.epochs}",
           "trainer.progress=false", f"hydra.run.dir={run_dir}", *smoke]
    wall, _ = run(cmd, run_dir.with_suffix(".log"))
    summary = summary_of(run_dir)
    return {"wall_seconds": wall, "train_seconds": summary["train_seconds"], "steps": summary["steps"],
            "metrics": summary["final"]}


def hugging_face(args: argparse.Namespace, splits: dict[str, Path], model_dir: Path, seed: int, log: Path,
                 regress: bool = False) -> dict[str, Any]:
    """One whole run of the plain transformers loop: its wall time and metrics."""
    cmd = [sys.executable, "-m", "scripts.bench.hf_finetune", str(model_dir), *(str(splits[s]) for s in
           ("train", "validation", "test")), f"--seed={seed}", f"--epochs={args.epochs}"]
    cmd += ["--regress", "--label-column=score"] if regress else []
    cmd += ["--max-examples=96", "--max-steps=3"] if args.smoke else []
    wall, out = run(cmd, log)
    return {"wall_seconds": wall, **json.loads(out.strip().splitlines()[-1])}


def sentiment(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Rotten Tomatoes: both sides for each seed, alternating which goes first."""
    from transformer_cli.data.builtin import prepare_builtin

    splits = prepare_builtin("rotten_tomatoes")
    rows: dict[str, list[dict[str, Any]]] = {"tformer": [], "hf": []}
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        order = ["tformer", "hf"] if i % 2 == 0 else ["hf", "tformer"]
        for side in order:
            if side == "tformer":
                rows[side].append(tformer(args, args.out / f"rt-tformer-{seed}", ["experiment=sentiment_minilm",
                                                                                  f"seed={seed}"]))
            else:
                rows[side].append(hugging_face(args, splits, model_dir, seed, args.out / f"rt-hf-{seed}.log"))
    return rows


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

    model_dir = builtin_dir("all-minilm-l6-v2")  # fetched once, before anything is timed
    results: dict[str, Any] = {"sentiment": sentiment(args, model_dir), "differences": DIFFERENCES,
                               "cpu_threads": os.cpu_count(), "epochs": args.epochs, "smoke": args.smoke}
    if args.vader:
        results["vader"] = vader(args, model_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps(results, indent=2))
    show(results, Console())


def mean(values: list[float], digits: int = 4) -> str:
    """Mean +- sample standard deviation."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def show(results: dict[str, Any], console: Console) -> None:
    """The comparison tables and the differences that remain."""
    rows = results["sentiment"]
    table = Table(title=f"MiniLM on Rotten Tomatoes, {results['epochs']} epoch(s), batch 32, lr 5e-5 "
                        f"({len(rows['tformer'])} seeds)")
    for col in ("", "test accuracy", "validation accuracy", "wall s (whole command)",
                "fit s (tformer: with its evaluations)"):
        table.add_column(col, justify="right")
    for side, name in (("tformer", "tformer train"), ("hf", "transformers, plain loop")):
        runs = rows[side]
        table.add_row(name, mean([r["metrics"]["test"]["accuracy"] for r in runs]),
                      mean([r["metrics"]["validation"]["accuracy"] for r in runs]),
                      mean([r["wall_seconds"] for r in runs], 0), mean([r["train_seconds"] for r in runs], 0))
    console.print(table)
    ratio = statistics.mean(r["wall_seconds"] for r in rows["hf"]) / statistics.mean(
        r["wall_seconds"] for r in rows["tformer"])
    console.print(f"whole command, transformers loop / tformer: {ratio:.2f}x")
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
    console.print("still different: " + "; ".join(results["differences"]))


if __name__ == "__main__":
    main()
