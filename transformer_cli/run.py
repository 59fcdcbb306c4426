"""train(cfg) and evaluate(cfg): data -> model -> loss -> loop -> metrics and checkpoints in the run dir."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from transformer_cli import __version__
from transformer_cli.checkpoint import Checkpoint, CheckpointDir, load_checkpoint, load_weights, save_checkpoint
from transformer_cli.config import check_train_config, choose, load_train_config, to_plain
from transformer_cli.distributed import SINGLE, Dist, rank_seed, setup as setup_distributed, teardown as teardown_distributed
from transformer_cli.data.batching import EncodedSplit
from transformer_cli.data.loading import RawSplit, load_splits, read_eval_file
from transformer_cli.data.tokenize import encode, train_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.loop import FitState, Fitter, Precision, evaluate as evaluate_batches, resolve_device, resolve_precision, steps_per_epoch, total_steps
from transformer_cli.losses import LOSSES, build_loss
from transformer_cli.logging_backends import open_writers
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import METRIC_MODES, JsonlWriter, jsonable
from transformer_cli.model import Encoder, SequenceModel, count_parameters
from transformer_cli.optim import build_optimizer, build_scheduler
from transformer_cli.plots import plot_curves
from transformer_cli.report import print_results
from transformer_cli.run_card import write_run_card
from transformer_cli.tasks import TASKS
from transformer_cli.tasks.common import Task

log = logging.getLogger("tformer")


@dataclass
class Prepared:
    """Data, task and tokenizer ready for a model."""

    task: Task
    splits: dict[str, EncodedSplit]
    sizes: dict[str, int]
    tokenizer: Any
    loss_context: LossContext


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Train on the configured data, keep the best checkpoint, report validation and test metrics.

    Returns the best value of the monitored validation metric (what Hydra sweepers optimise)."""
    start = time.time()
    check_train_config(cfg)
    dist, device = setup_distributed(resolve_device(cfg.trainer.device))
    try:
        return _train(cfg, Path(dist.broadcast(str(run_dir))), dist, device, start)  # rank 0's run dir for all
    finally:
        teardown_distributed()


def _train(cfg: DictConfig, run_dir: Path, dist: Dist, device: torch.device, start: float) -> float:
    """train() on this process's device, as one rank of `dist` (rank 0 alone writes)."""
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        logging.getLogger().setLevel(logging.WARNING)  # one log: rank 0's
    task_spec = TASKS[cfg.task.name]
    monitor = cfg.trainer.monitor or task_spec.default_monitor
    resume = find_resume(cfg, run_dir) if dist.is_main else None
    if dist.enabled:  # every rank resumes from the checkpoint rank 0 chose
        chosen = dist.broadcast(None if resume is None else str(resume.path))
        if chosen is not None and not dist.is_main:
            resume = load_checkpoint(chosen, trainer_state=True)
    seed_everything(cfg.seed, cfg.trainer.deterministic, cfg.trainer.threads)
    precision = resolve_precision(cfg.trainer.precision, device)
    prep = prepare_training_data(cfg, resume, dist)
    model = build_model(cfg, prep.tokenizer.get_vocab_size(), prep.task).to(device)
    if dist.rank > 0:  # the same initial weights (DDP also broadcasts rank 0's), but its own dropout stream
        torch.manual_seed(rank_seed(cfg.seed, dist.rank))
    loss_fn = build_loss(cfg.loss, prep.loss_context)
    train_split, val_split = prep.splits["train"], prep.splits["validation"]
    steps = total_steps(train_split, cfg.trainer)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, optimizer, steps)
    n_params = count_parameters(model)
    log.info("task=%s loss=%s device=%s precision=%s params=%s steps=%d (%d per epoch)%s", cfg.task.name,
             cfg.loss.name, device, precision.name, f"{n_params:,}", steps, steps_per_epoch(train_split, cfg.trainer),
             f", {dist.world} processes" if dist.enabled else "")
    log.info("examples: %s, vocabulary: %d", prep.sizes, prep.tokenizer.get_vocab_size())
    ckpts = CheckpointDir(run_dir / "checkpoints", cfg.trainer.keep_last)
    task_json = {**prep.task.state(), "loss_kind": prep.task.loss_kind, "loss_context": _context_json(prep.loss_context)}
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if resume is not None:
            continue_metrics(resume.path, run_dir / "metrics.jsonl", int(resume.meta["step"]))

    writers = (open_writers(OmegaConf.select(cfg, "logger"), run_dir, cfg) if dist.is_main
               else contextlib.nullcontext(_NullWriter()))
    with writers as writer:  # metrics.jsonl, .csv, [tensorboard]
        def on_checkpoint(state: FitState, scalars: dict[str, float] | None, improved: bool) -> str:
            trainer_state = fitter.capture()  # every rank: it gathers their random states
            if not dist.is_main:
                return ""
            meta = {"step": state.step, "epoch": state.epoch, "monitor": monitor, "metrics": scalars}
            write = partial(save_checkpoint, model=model, config=cfg, tokenizer=prep.tokenizer, task_state=task_json,
                            meta=meta, trainer_state=trainer_state)
            return str(ckpts.save(state.step, write, best=improved))

        fitter = Fitter(model, prep.task, loss_fn, optimizer, scheduler, precision, cfg.trainer, cfg.seed,
                        monitor, writer, on_checkpoint, dist)
        if resume is not None:
            load_weights(model, resume.weights, resume.path)
            fitter.restore(resume.trainer_state)
            log.info("resumed from %s at step %d (epoch %d)", resume.path, fitter.state.step, fitter.state.epoch)
        train_start = time.time()
        state = fitter.fit(train_split, val_split)
        train_seconds = time.time() - train_start
        if not dist.is_main:  # rank 0 evaluates the best weights and writes the summary
            return float(state.best_value) if state.best_value is not None else float("nan")
        best = load_checkpoint(ckpts.root / "best")
        load_weights(model, best.weights, best.path)
        final = final_evaluation(model, prep, loss_fn, precision, cfg.trainer, writer, state)
    summary = {
        "task": cfg.task.name, "loss": cfg.loss.name, "monitor": monitor, "mode": METRIC_MODES[monitor],
        "best_value": state.best_value, "best_step": state.best_step, "steps": state.step,
        "epochs": state.step / max(1, steps_per_epoch(train_split, cfg.trainer)), "stop_reason": state.stop_reason,
        "final": {k: v["metrics"] for k, v in final.items()},
        "details": {k: v["details"] for k, v in final.items()},
        "checkpoints": {"best": str(ckpts.root / "best"), "last": str(ckpts.root / "last"),
                        "best_target": str((ckpts.root / "best").resolve()), "resumed_from": resume and str(resume.path)},
        "skipped_steps": state.skipped_steps,
        "parameters": n_params, "examples": prep.sizes, "vocab_size": prep.tokenizer.get_vocab_size(),
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(1e-9, state.step / max(1, steps_per_epoch(train_split, cfg.trainer))),
        "wall_seconds": time.time() - start, "device": str(device), "precision": precision.name,
        "environment": environment(),
    }
    summary["plots"] = {"curves": str(plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", monitor))}
    _write_json(run_dir / "summary.json", summary)
    write_run_card(run_dir, cfg, jsonable(summary))
    print_results(f"{cfg.task.name} / {cfg.loss.name}: best {monitor}={state.best_value:.4f} at step {state.best_step}",
                  {k: v["metrics"] for k, v in final.items()})
    log.info("run directory: %s", run_dir)
    return float(state.best_value) if state.best_value is not None else float("nan")


def final_evaluation(model: torch.nn.Module, prep: Prepared, loss_fn: Any, precision: Precision, trainer: Any,
                     writer: JsonlWriter, state: FitState) -> dict[str, dict[str, Any]]:
    """Evaluate the best weights on validation and test; write one 'final' record per split."""
    _final_decoding(prep.task)
    out = {}
    for split in ("validation", "test"):
        if split not in prep.splits:
            continue
        batches = prep.splits[split].batches(trainer.eval_batch_size, shuffle=False, bucket=True)
        scalars, details = evaluate_batches(model, batches, prep.task, loss_fn, precision)
        writer.write({"event": "final", "split": split, "step": state.best_step, **scalars, "time": time.time()})
        out[split] = {"metrics": scalars, "details": details}
    return out


def prepare_training_data(cfg: DictConfig, saved: Checkpoint | None = None, dist: Dist = SINGLE) -> Prepared:
    """Load splits, learn the label set and the vocabulary on train (or take them from `saved`), encode.

    With several processes rank 0 fetches the data first (one download into the cache) and learns the label
    set and vocabulary; the other ranks receive them, so every rank encodes with the same ones."""
    with dist.main_first():
        raw = load_splits(cfg.data)
    task_spec = TASKS[cfg.task.name]
    loss_kind = next(k for k in LOSSES[cfg.loss.name].targets if k in task_spec.target_kinds)
    train_raw = raw["train"]
    if saved is not None:
        task = rebuild_task(cfg, saved)
        tokenizer = saved.tokenizer
    else:
        state, tokenizer = _fit_vocabularies(cfg, train_raw) if dist.is_main else (None, None)
        if dist.enabled:  # every rank encodes with rank 0's label set and vocabulary
            state, vocab = dist.broadcast((state, tokenizer.to_str() if dist.is_main else None))
            tokenizer = Tokenizer.from_str(vocab)
        task = task_spec.build(cfg.task, loss_kind, state)
    targets = {name: task.encode_targets(split.labels, split.where) for name, split in raw.items()}
    splits = {name: EncodedSplit(encode(tokenizer, s.texts, s.pairs), targets[name]) for name, s in raw.items()}
    return Prepared(task=task, splits=splits, sizes={k: len(v) for k, v in raw.items()}, tokenizer=tokenizer,
                    loss_context=task.loss_context(targets["train"]))


def _fit_vocabularies(cfg: DictConfig, train_raw: RawSplit) -> tuple[dict[str, Any], Tokenizer]:
    """The task's state (labels, target scaling or vocabulary) and the input tokenizer, learned on train."""
    state = TASKS[cfg.task.name].build.fit_state(train_raw.labels, cfg.task, cfg.data.labels, train_raw.where.source)
    return state, train_tokenizer(train_raw.texts + (train_raw.pairs or []), cfg.data.tokenizer)


class _NullWriter:
    """The metrics writer of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop the record."""


def build_model(cfg: DictConfig, vocab_size: int, task: Task) -> SequenceModel:
    """The encoder and the task's head, from the model config (or the task's own model: seq2seq)."""
    build = getattr(task, "build_model", None)
    if build:
        return build(cfg.model, vocab_size)
    return SequenceModel(Encoder(vocab_size, cfg.model), task.head(cfg.model.d_model))


# Settings that may differ between a run and its resumption: how long to go on, where, how to show it.
RESUMABLE_CHANGES = ("resume", "trainer.max_steps", "trainer.max_epochs", "trainer.progress", "trainer.device",
                     "trainer.log_every", "trainer.save_every", "trainer.keep_last", "trainer.threads",
                     "trainer.early_stopping_patience", "trainer.nan_policy", "trainer.max_consecutive_skips",
                     "trainer.detect_anomaly", "trainer.compile", "data.archive", "data.cache_dir")


def find_resume(cfg: DictConfig, run_dir: Path) -> Checkpoint | None:
    """The checkpoint to resume from: none, this run dir's newest complete one (auto), or a given path."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = CheckpointDir(run_dir / "checkpoints", cfg.trainer.keep_last).newest_complete()
        if found is None:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh", run_dir / "checkpoints")
            return None
    else:
        path = Path(str(cfg.resume)).expanduser()
        found = path / "checkpoints" / "last" if (path / "checkpoints" / "last").is_dir() else path
    ckpt = load_checkpoint(found, trainer_state=True)
    check_resume_config(cfg, load_train_config(ckpt.config, source=str(ckpt.path / "config.yaml")), ckpt.path)
    return ckpt


def check_resume_config(cfg: DictConfig, saved: DictConfig, source: Path) -> None:
    """Refuse to resume with a config that would change what is being trained."""
    now, then = _flat(to_plain(cfg)), _flat(to_plain(saved))
    diffs = [k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)
             and not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {then.get(k)!r}, now {now.get(k)!r}" for k in diffs[:8])
        raise TformerError(f"cannot resume from {source}: the config differs ({shown})",
                           hint="resume with the same overrides as the original run (see its .hydra/overrides.yaml)")


def continue_metrics(ckpt_path: Path, target: Path, step: int) -> None:
    """Make `target` hold the source run's metrics up to the checkpoint's step, so the file continues."""
    source = ckpt_path.resolve().parent.parent / "metrics.jsonl"
    if not source.is_file():
        return
    kept = [line for line in source.read_text().splitlines()
            if line.strip() and _step_of(line) is not None and _step_of(line) <= step]  # type: ignore[operator]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, target)


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line (None for a torn last line)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Rebuild model, tokenizer and labels from a checkpoint alone and evaluate one split or file."""
    ckpt = load_checkpoint(cfg.ckpt)
    train_cfg = load_train_config(ckpt.config, source=str(ckpt.path / "config.yaml"))
    task = rebuild_task(train_cfg, ckpt)
    _final_decoding(task)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    raw = eval_split(cfg, train_cfg)
    split = EncodedSplit(encode(ckpt.tokenizer, raw.texts, raw.pairs), task.encode_targets(raw.labels, raw.where))
    model = build_model(train_cfg, ckpt.tokenizer.get_vocab_size(), task)
    load_weights(model, ckpt.weights, ckpt.path)
    model.to(device)
    ctx = ckpt.task_state.get("loss_context", {})
    loss_fn = build_loss(train_cfg.loss, _context_from_json(ctx))
    batch_size = cfg.batch_size or train_cfg.trainer.eval_batch_size
    scalars, details = evaluate_batches(model, split.batches(batch_size, shuffle=False, bucket=True), task, loss_fn,
                                        precision, progress=cfg.progress)
    result = {"checkpoint": str(ckpt.path), "split": raw.where.split, "source": raw.where.source,
              "examples": len(split), "step": ckpt.meta.get("step"), "metrics": scalars, "details": details}
    _write_json(run_dir / "eval.json", result)
    print_results(f"eval {ckpt.path} ({raw.where.split}, {len(split)} examples)", {raw.where.split: scalars})
    return scalars


def rebuild_task(train_cfg: DictConfig, ckpt: Checkpoint) -> Task:
    """The task exactly as trained: same labels or target scaling, same loss kind."""
    spec = choose(TASKS, train_cfg.task.name, "task")
    state = ckpt.task_state
    if "loss_kind" not in state:
        raise TformerError(f"{ckpt.path}/task.json lacks loss_kind; the checkpoint is not from this tformer")
    try:
        return spec.build(train_cfg.task, state["loss_kind"], state)
    except KeyError as err:
        raise TformerError(f"{ckpt.path}/task.json lacks {err}; the checkpoint is damaged") from err


def eval_split(cfg: DictConfig, train_cfg: DictConfig) -> RawSplit:
    """The split to evaluate: one rebuilt exactly as in training, or a user's file with the same columns."""
    if cfg.file:
        return read_eval_file(Path(cfg.file), train_cfg.data)
    splits = load_splits(train_cfg.data)
    if cfg.split not in splits:
        raise TformerError(f"split '{cfg.split}' does not exist for this checkpoint's data",
                           hint=f"choose one of: {', '.join(splits)}, or pass file=<path>")
    return splits[cfg.split]


def _final_decoding(task: Task) -> None:
    """Tasks that decode (seq2seq) decode every example with the full beam from here on."""
    final = getattr(task, "use_final_decoding", None)
    if final:
        final()


def seed_everything(seed: int, deterministic: bool, threads: int) -> None:
    """Seed Python, NumPy and torch; optionally deterministic kernels and a fixed thread count."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def environment() -> dict[str, Any]:
    """Versions and hardware, for the record."""
    return {"tformer": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads()}


def _context_json(ctx: LossContext) -> dict[str, Any]:
    """A LossContext as JSON (for `auto` weights at eval time)."""
    counts = None if ctx.label_counts is None else [int(c) for c in ctx.label_counts.tolist()]
    return {"num_outputs": ctx.num_outputs, "label_counts": counts, "num_examples": ctx.num_examples}


def _context_from_json(data: dict[str, Any]) -> LossContext:
    """The inverse of _context_json."""
    counts = data.get("label_counts")
    return LossContext(num_outputs=int(data.get("num_outputs", 1)),
                       label_counts=None if counts is None else torch.tensor(counts),
                       num_examples=data.get("num_examples"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON, non-finite floats as null."""
    path.write_text(json.dumps(jsonable(data), indent=2))
