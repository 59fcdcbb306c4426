"""`python -m scripts.bench.lowlabel`: few labels, with and without masked-language pretraining on the texts.

On Rotten Tomatoes it runs `tformer train experiment=rt_mlm` once (masked-language modelling on all the
training texts; their labels are not read), then, for each seed, `experiment=rt_lowlabel` (classification
on 1,000 labelled training examples) starting from that encoder and from scratch, and prints the test
accuracy of both with its mean and spread. Every run is a whole `tformer train` command; the pretraining's
time is reported beside it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from scripts.bench.command import TFORMER, run, summary_of
from transformer_cli.files import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.lowlabel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--labels", type=int, default=1000, help="labelled training examples (default 1000)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/lowlabel"))
    p.add_argument("--pretrained", type=Path, default=None,
                   help="a finished experiment=rt_mlm run to fine-tune from, instead of pretraining again")
    p.add_argument("--smoke", action="store_true", help="a few steps: checks the script runs")
    return p.parse_args(argv)


def train(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """One whole `tformer train`: its summary and wall time."""
    wall, _ = run([*TFORMER, "train", *overrides, "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                  run_dir.with_suffix(".log"))
    summary = summary_of(run_dir)
    return {"wall_seconds": wall, "final": summary["final"], "steps": summary["steps"]}


def main(argv: list[str] | None = None) -> None:
    """Pretrain once, fine-tune per seed from it and from scratch, print and save."""
    args = parse_args(argv)
    smoke = ["trainer.max_steps=4", "data.max_eval_examples=64"] if args.smoke else []
    if args.pretrained is None:
        pretrain_dir = args.out / "rt_mlm"
        pretrain = train(pretrain_dir, ["experiment=rt_mlm", *smoke])
    else:
        pretrain_dir = args.pretrained
        summary = summary_of(pretrain_dir)
        pretrain = {"wall_seconds": None, "final": summary["final"], "steps": summary["steps"]}
    rows: dict[str, list[float]] = {"after MLM": [], "from scratch": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, start in (("after MLM", str(pretrain_dir)), ("from scratch", "null")):
            run = train(args.out / f"{name.replace(' ', '_')}-{seed}",
                        ["experiment=rt_lowlabel", f"seed={seed}", f"data.max_train_examples={args.labels}",
                         f"model.init_from={start}", *smoke])
            rows[name].append(run["final"]["test"]["accuracy"])
    results = {"pretrain": pretrain, "test_accuracy": rows, "labels": args.labels}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "lowlabel.json", results)
    took = "not timed here" if pretrain["wall_seconds"] is None else f"{pretrain['wall_seconds']:.0f} s"
    print(f"MLM pretraining on the training texts: {took}, {pretrain['steps']} steps, "
          f"held-out perplexity {pretrain['final']['validation']['perplexity']:.1f}")
    for name, values in rows.items():
        spread = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        print(f"{args.labels} labels, {name:>12}: test accuracy {statistics.mean(values):.4f}{spread} "
              f"({', '.join(f'{v:.4f}' for v in values)})")
    gain = statistics.mean(rows["after MLM"]) - statistics.mean(rows["from scratch"])
    print(f"difference: {gain:+.4f}")


if __name__ == "__main__":
    main()
