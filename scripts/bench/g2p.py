"""`python -m scripts.bench.g2p`: the G2P recipe's curve, test WER and PER against minutes of training.

It runs `tformer train experiment=g2p_long` once, keeping the checkpoint of every epoch, then evaluates each
of them on the test split with `tformer eval` (beam search, as the run's final evaluation does). Minutes
are counted from the start of the training command to the end of that epoch, so data preparation and the
per-epoch validation are included. The schedule does not depend on the number of epochs, so the epoch-3
checkpoint is what `experiment=g2p` produces, and epoch E what `trainer.max_epochs=E` would.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from scripts.bench.command import TFORMER, run
from transformer_cli.files import read_json, write_json
from transformer_cli.writers import read_jsonl

METRICS = ("wer", "per", "wer_single", "per_single", "exact_match")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.g2p", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/g2p"))
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the epochs of an earlier (or stopped) run in OUT/run instead of training")
    p.add_argument("--smoke", action="store_true", help="a few steps on a few words: checks the script runs")
    return p.parse_args(argv)


def epoch_ends(run_dir: Path) -> dict[int, tuple[int, float]]:
    """For each epoch's evaluation: its step and the wall-clock time it ended."""
    ends: dict[int, tuple[int, float]] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        if record.get("event") == "eval" and record.get("split") == "validation":
            ends[int(record["epoch"])] = (int(record["step"]), float(record["time"]))
    return ends


def command_start(run_dir: Path) -> float:
    """When an earlier training command started: its run directory's creation, as Hydra makes it first."""
    return (run_dir / ".hydra" / "overrides.yaml").stat().st_mtime


def main(argv: list[str] | None = None) -> None:
    """Train once keeping every epoch, evaluate each on test, print and save the curve."""
    args = parse_args(argv)
    run_dir = args.out / "run"
    epochs = ["trainer.max_epochs=2", "data.max_train_examples=512", "data.max_eval_examples=32"] if args.smoke \
        else ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
    if args.evaluate_only:
        start, wall = command_start(run_dir), None
    else:
        start = time.time()
        wall, _ = run([*TFORMER, "train", "experiment=g2p_long", *epochs, "trainer.keep_last=1000",
                       "trainer.progress=false", f"hydra.run.dir={run_dir}"], args.out / "run.log")
    rows: list[dict[str, Any]] = []
    for epoch, (step, ended) in sorted(epoch_ends(run_dir).items()):
        ckpt = run_dir / "checkpoints" / f"step-{step:07d}"
        out = args.out / f"eval-epoch{epoch}"
        run([*TFORMER, "eval", f"ckpt={ckpt}", "split=test", "progress=false", f"hydra.run.dir={out}"],
            out.with_suffix(".log"))
        metrics = read_json(out / "eval.json")["metrics"]
        rows.append({"epoch": epoch, "step": step, "minutes": (ended - start) / 60,
                     **{name: metrics[name] for name in METRICS}})
    write_json(args.out / "g2p.json", {"wall_seconds": wall, "curve": rows})
    took = "" if wall is None else f": {wall / 60:.1f} min for the whole command"
    print(f"experiment=g2p_long{took}; test split, beam search")
    print("| epoch | minutes | WER | PER | WER (one reference) | PER (one reference) | exact match |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['epoch']} | {r['minutes']:.1f} | {r['wer']:.3f} | {r['per']:.3f} | {r['wer_single']:.3f} "
              f"| {r['per_single']:.3f} | {r['exact_match']:.3f} |")


if __name__ == "__main__":
    main()
