"""Whole commands: `tformer train` (the default run) against the Hugging Face Trainer script on the same CSV splits.

Both are timed from outside, process start to exit, repetition by repetition in alternating order. Each side's
validation accuracy after every epoch is stamped with the wall-clock time it was written (tformer: the eval
events of metrics.jsonl; the Trainer script: its per-epoch log), so the time each first reached an accuracy both
reached can be read off on the same clock.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from .command import TFORMER, run, summary_of
from .flops import summary

SCRIPT = "scripts.bench.hf_trainer_glue"


@dataclass(frozen=True)
class CommandSizes:
    """One mode of the whole-command comparison: `tformer train`'s overrides and the repetitions."""

    overrides: tuple[str, ...]  # on top of the default run; the Trainer script gets the same sizes from them
    reps: int
    max_train_examples: int = 0  # the Trainer script's --max-examples (tformer: data.max_train_examples)
    max_eval_examples: int = 0


SIZES: dict[str, CommandSizes] = {
    "full": CommandSizes((), reps=3),  # `tformer train` as it ships: 4 epochs of the small model
    "smoke": CommandSizes(("model=tiny", "data.max_train_examples=200", "data.max_eval_examples=64",
                           "data.tokenizer.vocab_size=500", "trainer.max_epochs=2"), reps=1,
                          max_train_examples=200, max_eval_examples=64),
}

DIFFERENCES = (
    "model layout: tformer is pre-norm with fixed sinusoidal positions and sqrt(d) embedding scale, and its last "
    "layer computes only the [CLS] position; BERT is post-norm with learned positions, token types, an embedding "
    "LayerNorm, its pooler (no dropout before the dense layer) and its own initialisation; the same sizes, GELU, "
    "LayerNorm epsilon, dropout rates and head dropout",
    "dropout: torch's nn.Dropout in BERT; tformer draws 16 random bits per element",
    "allocator: tformer raises glibc malloc's thresholds (blocks up to 1 GiB reuse freed heap memory); the Trainer "
    "script runs with glibc's defaults (blocks above 32 MiB mapped afresh each time)",
    "batches: tformer's length-bucketed batches; Trainer's group_by_length (mega-batches of 50 batches sorted by "
    "length: more padding)",
    "evaluation: tformer evaluates length-sorted batches; Trainer in file order, each batch padded to its longest",
    "tokenizer: the same recipe (BPE, NFKC + lowercase, word starts marked, punctuation split, the same vocabulary "
    "size and minimum frequency), learned in every run on both sides (tformer starts with an empty tokenized cache, "
    "as a first run does)",
    "warmup: Trainer's first step runs at learning rate 0, tformer's at 1/warmup of the peak; otherwise the same "
    "warmup length, cosine decay, fused AdamW with tformer's weight-decay groups, clipping and batch sizes",
    "outputs: both write a checkpoint every epoch and load the best (by validation accuracy) for the final "
    "evaluation; tformer also writes metrics.jsonl/csv, a curves plot, summary.json and a run card",
)


def trainer_flags(cfg: DictConfig) -> list[str]:
    """The Trainer script's options for the sizes and settings of `tformer train`'s composed config."""
    m, tok, tr, opt, sch = cfg.model, cfg.data.tokenizer, cfg.trainer, cfg.optim, cfg.schedule
    unlike = {"tokenizer kind": tok.kind != "bpe" or not tok.lowercase or tok.train_sample,
              "schedule": sch.name not in ("cosine", "linear") or sch.min_lr_ratio or sch.warmup_steps,
              "optimizer": opt.name != "adamw" or opt.layer_decay != 1.0,
              "batching": tr.max_tokens or tr.grad_accum != 1 or tr.max_steps > 0 or tr.eval_every,
              "task": cfg.task.name != "classify" or cfg.task.pooling != "cls" or cfg.data.text_pair_column}
    if any(unlike.values()):
        raise SystemExit(f"the Trainer script cannot match these settings: {[k for k, v in unlike.items() if v]}")
    return [f"--d-model={m.d_model}", f"--layers={m.n_layers}", f"--heads={m.n_heads}", f"--d-ff={m.d_ff}",
            f"--max-positions={m.max_positions}", f"--norm-eps={m.norm_eps}", f"--dropout={m.dropout}", f"--attn-dropout={m.attn_dropout}",
            f"--head-dropout={cfg.task.head_dropout}", f"--vocab-size={tok.vocab_size}",
            f"--min-frequency={tok.min_frequency}", f"--max-length={tok.max_length}", f"--epochs={tr.max_epochs}",
            f"--batch-size={tr.batch_size}", f"--eval-batch-size={tr.eval_batch_size}", f"--lr={opt.lr}",
            f"--weight-decay={opt.weight_decay}", f"--warmup-ratio={sch.warmup_ratio}", f"--schedule={sch.name}",
            f"--grad-clip={tr.grad_clip}", f"--seed={cfg.seed}", f"--label-column={cfg.data.label_column}"]


def compose_default(overrides: tuple[str, ...]) -> DictConfig:
    """`tformer train`'s composed config with the mode's overrides."""
    from hydra import compose, initialize_config_dir

    from transformer_cli.config import conf_dir
    from transformer_cli.validate import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def cold_cache(folder: Path) -> Path:
    """A tformer cache folder with no tokenized splits: links to the real cache's prepared datasets, archives
    and models, so a run prepares nothing again but learns its tokenizer and tokenizes, as a first run does."""
    from transformer_cli.data.builtin import default_cache_dir

    real = default_cache_dir()
    shutil.rmtree(folder / "tokenized", ignore_errors=True)  # a previous run's splits
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("datasets", "archives", "models"):
        (real / name).mkdir(parents=True, exist_ok=True)
        link = folder / name
        if not link.exists():
            link.symlink_to((real / name).resolve(), target_is_directory=True)
    return folder


def fresh(folder: Path) -> Path:
    """`folder`, emptied of an earlier benchmark run's files (a run directory of this benchmark's own)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def first_reached(epochs: list[dict[str, float]], target: float) -> float | None:
    """Seconds after the process started at which validation accuracy first reached `target` (None: never)."""
    return next((e["elapsed_s"] for e in epochs if e["accuracy"] >= target), None)


def tformer_epochs(run_dir: Path, start: float) -> list[dict[str, float]]:
    """tformer's validation accuracy after each evaluation, with the seconds since `start` (the process start)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], "accuracy": r["accuracy"], "elapsed_s": r["time"] - start}
            for r in rows if r.get("event") == "eval" and r.get("split") == "validation"]


def run_tformer(sizes: CommandSizes, out: Path, rep: int) -> dict[str, Any]:
    """One `tformer train` (the default run with the mode's overrides), timed from outside."""
    run_dir = fresh(out / f"tformer-{rep}")
    cmd = [*TFORMER, "train", *sizes.overrides, "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TFORMER_CACHE": str(cold_cache(out / f"cache-{rep}"))}
    start = time.time()  # the clock of tformer's metrics.jsonl and the Trainer script's log
    wall, _ = run(cmd, run_dir.with_suffix(".log"), env)
    final = summary_of(run_dir)["final"]
    return {"wall_s": wall, "epochs": tformer_epochs(run_dir, start),
            "validation_accuracy": final["validation"]["accuracy"], "test_accuracy": final["test"]["accuracy"]}


def run_trainer(sizes: CommandSizes, flags: list[str], splits: dict[str, Path], out: Path, rep: int
                ) -> dict[str, Any]:
    """One run of the Trainer script with the same sizes, timed from outside."""
    cmd = [sys.executable, "-m", SCRIPT, *(str(splits[s]) for s in ("train", "validation", "test")), *flags,
           f"--output-dir={fresh(out / f'trainer-{rep}')}", f"--max-examples={sizes.max_train_examples}",
           f"--max-eval-examples={sizes.max_eval_examples}"]
    start = time.time()  # the clock of tformer's metrics.jsonl and the Trainer script's log
    wall, stdout = run(cmd, out / f"trainer-{rep}.log")
    result = json.loads(stdout.strip().splitlines()[-1])
    epochs = [{"epoch": e["epoch"], "accuracy": e["accuracy"], "elapsed_s": e["time"] - start}
              for e in result["epochs"]]
    return {"wall_s": wall, "epochs": epochs, "validation_accuracy": result["metrics"]["validation"]["accuracy"],
            "test_accuracy": result["metrics"]["test"]["accuracy"], "tokenizer_s": result["tokenizer_seconds"]}


def paired(tformer: dict[str, Any], trainer: dict[str, Any]) -> dict[str, Any]:
    """One repetition's comparison: whole-command seconds, and when each first reached the accuracy both reached
    (the lower of the two best validation accuracies)."""
    target = min(max(e["accuracy"] for e in tformer["epochs"]), max(e["accuracy"] for e in trainer["epochs"]))
    ours, theirs = first_reached(tformer["epochs"], target), first_reached(trainer["epochs"], target)
    return {"wall_ratio": tformer["wall_s"] / trainer["wall_s"], "target_accuracy": target,
            "tformer_time_to_target_s": ours, "trainer_time_to_target_s": theirs, "time_to_target_ratio": ours / theirs}


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (min-max) over the repetitions of every figure of the section."""
    sides = {side: {key: summary([r[side][key] for r in reps])
                    for key in ("wall_s", "validation_accuracy", "test_accuracy")} for side in ("tformer", "trainer")}
    sides["trainer"]["tokenizer_s"] = summary([r["trainer"]["tokenizer_s"] for r in reps])
    keys = ("wall_ratio", "target_accuracy", "tformer_time_to_target_s", "trainer_time_to_target_s",
            "time_to_target_ratio")
    return {**sides, "paired": {key: summary([r["paired"][key] for r in reps]) for key in keys}}


def compare(mode: str, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole-command section: both commands, `reps` times in alternating order, and their figures."""
    from transformer_cli.data.builtin import prepare_builtin

    sizes = SIZES[mode]
    cfg = compose_default(sizes.overrides)
    flags = trainer_flags(cfg)
    splits = prepare_builtin(cfg.data.name)  # fetched and prepared once, before anything is timed
    reps = []
    for rep in range(sizes.reps):
        order = ("tformer", "trainer") if rep % 2 == 0 else ("trainer", "tformer")
        row: dict[str, Any] = {"order": list(order)}
        for side in order:
            row[side] = run_tformer(sizes, out, rep) if side == "tformer" else run_trainer(sizes, flags, splits, out,
                                                                                          rep)
            log(f"whole command {side}, repetition {rep + 1}/{sizes.reps}: {row[side]['wall_s']:.1f} s")
        row["paired"] = paired(row["tformer"], row["trainer"])
        reps.append(row)
    m = cfg.model
    return {"mode": mode, "tformer_command": " ".join(["tformer train", *sizes.overrides]),
            "trainer_command": " ".join([f"python -m {SCRIPT} TRAIN VALIDATION TEST", *flags]),
            "dataset": cfg.data.name, "epochs": cfg.trainer.max_epochs, "batch_size": cfg.trainer.batch_size,
            "model_summary": f"d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads, FFN {m.d_ff}",
            "reps": reps, **summarise(reps), "differences": list(DIFFERENCES)}
