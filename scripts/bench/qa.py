"""`python -m scripts.bench.qa`: extractive question answering with the built-in MiniLM, tformer against a plain
Hugging Face loop, on the same SQuAD v1.1 subset, side by side in one run.

It prepares built-in SQuAD (`data=squad`), writes seeded subsets as JSON Lines (--train questions of the
training split, --validation of the validation split, --test of the official dev set), then times two whole
commands seed by seed in alternating order:
  * tformer: `tformer train experiment=squad_minilm data=local_qa data.train=... seed=S`;
  * Hugging Face: `python -m scripts.bench.hf_qa` (scripts/bench/hf_qa.py): AutoModelForQuestionAnswering in a
    plain PyTorch loop with run_qa.py's windows and postprocessing, on the same model directory and files, with
    the same epochs, batch, learning rate, warmup, decay policy, clipping, window length, stride, answer length,
    n-best and dropout, and fused AdamW.
It also scores two baselines on the test subset: the context's first sentence, and a random span of the
context (as many words as the shortest reference, at a seeded random position).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scripts.bench.command import TFORMER, run, summary_of
from scripts.bench.finetune import mean
from scripts.bench.hf_qa import squad_scores

# The preset's settings, passed to both sides (the tformer preset holds the same values).
SETTINGS = {"epochs": 2, "batch_size": 16, "lr": 1e-4, "warmup_ratio": 0.1, "weight_decay": 0.01,
            "max_length": 256, "doc_stride": 64, "max_answer_length": 30, "n_best": 20}
DIFFERENCES = ("tformer groups windows of similar length into batches (the loop: uniform shuffle, each batch "
               "padded to its longest)",
               "tformer searches the n-best starts and ends among context tokens (run_qa: among all positions, "
               "then drops those outside the context)",
               "tformer also writes checkpoints, metrics files, plots and a run card, and evaluates validation "
               "after each epoch (the loop: once, at the end)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.qa", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--train", type=int, default=1000, help="training questions (default 1000)")
    p.add_argument("--validation", type=int, default=200, help="validation questions (default 200)")
    p.add_argument("--test", type=int, default=600, help="test questions from the official dev set (default 600)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    p.add_argument("--smoke", action="store_true", help="a few examples and steps: checks the script runs")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/qa"), help="run directories and JSON")
    return p.parse_args(argv)


def read_split(path: Path) -> list[dict[str, Any]]:
    """A prepared SQuAD split (CSV, answers as JSON) as examples."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{**row, "answers": json.loads(row["answers"])} for row in csv.DictReader(f)]


def write_subsets(args: argparse.Namespace) -> dict[str, Path]:
    """Seeded subsets of built-in SQuAD as JSON Lines files under --out; their paths by split."""
    from transformer_cli.data.builtin import prepare_builtin

    prepared = prepare_builtin("squad")
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    if args.smoke:
        sizes = {"train": 48, "validation": 16, "test": 16}
    paths = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for split, size in sizes.items():
        rows = read_split(prepared[split])
        chosen = sorted(random.Random(0).sample(range(len(rows)), size))
        paths[split] = args.out / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            for i in chosen:
                f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
    return paths


def tformer(args: argparse.Namespace, files: dict[str, Path], seed: int, run_dir: Path) -> dict[str, Any]:
    """One whole `tformer train` command: its wall time and its summary."""
    s = SETTINGS
    cmd = [*TFORMER, "train", "experiment=squad_minilm", "data=local_qa", f"seed={seed}",
           *(f"data.{split}={path}" for split, path in files.items()), "data.max_train_examples=null",
           "data.max_eval_examples=null", f"trainer.max_epochs={s['epochs']}", f"trainer.batch_size={s['batch_size']}",
           f"optim.lr={s['lr']}", f"data.tokenizer.max_length={s['max_length']}", f"task.doc_stride={s['doc_stride']}",
           f"task.max_answer_length={s['max_answer_length']}", f"task.n_best={s['n_best']}",
           f"trainer.threads={args.threads}", "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    cmd += ["trainer.max_steps=3"] if args.smoke else []
    wall, _ = run(cmd, run_dir.with_suffix(".log"))
    summary = summary_of(run_dir)
    return {"wall_seconds": wall, "train_seconds": summary["train_seconds"], "steps": summary["steps"],
            "metrics": summary["final"]}


def hugging_face(args: argparse.Namespace, files: dict[str, Path], model_dir: Path, seed: int,
                 log: Path) -> dict[str, Any]:
    """One whole run of the plain transformers loop: its wall time and metrics."""
    s = SETTINGS
    cmd = [sys.executable, "-m", "scripts.bench.hf_qa", str(model_dir),
           *(str(files[split]) for split in ("train", "validation", "test")), f"--seed={seed}",
           f"--epochs={s['epochs']}", f"--batch-size={s['batch_size']}", f"--lr={s['lr']}",
           f"--warmup-ratio={s['warmup_ratio']}", f"--weight-decay={s['weight_decay']}",
           f"--max-length={s['max_length']}", f"--doc-stride={s['doc_stride']}",
           f"--max-answer-length={s['max_answer_length']}", f"--n-best={s['n_best']}", f"--threads={args.threads}"]
    cmd += ["--max-steps=3"] if args.smoke else []
    wall, out = run(cmd, log)
    return {"wall_seconds": wall, **json.loads(out.strip().splitlines()[-1])}


def first_sentence(context: str) -> str:
    """The context up to its first sentence end (., ! or ? followed by a space), or all of it."""
    match = re.search(r"[.!?](\s|$)", context)
    return context[: match.start() + 1] if match else context


def random_span(context: str, answers: list[str], rng: random.Random) -> str:
    """As many words of the context as the shortest reference has, at a random position."""
    words = context.split()
    n = max(1, min(len(a.split()) for a in answers))
    start = rng.randrange(max(1, len(words) - n + 1))
    return " ".join(words[start : start + n])


def baselines(path: Path) -> dict[str, dict[str, float]]:
    """EM and F1 of the first-sentence and random-span baselines on a JSON Lines split."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(0)
    return {"first sentence": squad_scores([first_sentence(r["context"]) for r in rows], rows),
            "random span": squad_scores([random_span(r["context"], r["answers"]["text"], rng) for r in rows], rows)}


def main(argv: list[str] | None = None) -> None:
    """Prepare the subsets, run both sides per seed, print the table, write the JSON."""
    args = parse_args(argv)
    from transformer_cli.pretrained.source import builtin_dir

    model_dir = builtin_dir("all-minilm-l6-v2")  # fetched once, before anything is timed
    files = write_subsets(args)
    rows: dict[str, list[dict[str, Any]]] = {"tformer": [], "hf": []}
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        for side in (["tformer", "hf"] if i % 2 == 0 else ["hf", "tformer"]):
            if side == "tformer":
                rows[side].append(tformer(args, files, seed, args.out / f"tformer-{seed}"))
            else:
                rows[side].append(hugging_face(args, files, model_dir, seed, args.out / f"hf-{seed}.log"))
    results = {"runs": rows, "baselines": baselines(files["test"]), "settings": SETTINGS,
               "sizes": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in files.items()},
               "differences": DIFFERENCES, "cpu_threads": os.cpu_count(), "threads": args.threads,
               "smoke": args.smoke}
    (args.out / "qa.json").write_text(json.dumps(results, indent=2))
    show(results, Console())


def show(results: dict[str, Any], console: Console) -> None:
    """The comparison table and the differences that remain."""
    s, n = results["settings"], results["sizes"]
    table = Table(title=f"MiniLM extractive QA on SQuAD v1.1: {n['train']} training questions, {s['epochs']} "
                        f"epochs, batch {s['batch_size']}, lr {s['lr']}, windows {s['max_length']}/stride "
                        f"{s['doc_stride']}; test = {n['test']} questions of the official dev set")
    for col in ("", "test EM", "test F1", "validation F1", "wall s (whole command)", "fit s"):
        table.add_column(col, justify="right")
    for side, name in (("tformer", "tformer train"), ("hf", "transformers, plain loop")):
        runs = results["runs"][side]
        table.add_row(name, mean([r["metrics"]["test"]["exact_match"] for r in runs], 1),
                      mean([r["metrics"]["test"]["f1"] for r in runs], 1),
                      mean([r["metrics"]["validation"]["f1"] for r in runs], 1),
                      mean([r["wall_seconds"] for r in runs], 0), mean([r["train_seconds"] for r in runs], 0))
    for name, scores in results["baselines"].items():
        table.add_row(f"baseline: {name}", f"{scores['exact_match']:.1f}", f"{scores['f1']:.1f}", "", "", "")
    console.print(table)
    console.print("still different: " + "; ".join(results["differences"]))


if __name__ == "__main__":
    main()
