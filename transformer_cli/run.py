"""train(cfg) and evaluate(cfg): data -> model -> loss -> loop -> metrics and checkpoints in the run dir."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from transformer_cli.allocator import tune_malloc
from transformer_cli.checkpoint import (
    CheckpointDir,
    corrupt,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from transformer_cli.data.loading import RawSplit, load_splits, read_eval_file
from transformer_cli.device import Precision, resolve_device, resolve_precision
from transformer_cli.distributed import Dist, rank_seed
from transformer_cli.distributed import setup as setup_distributed
from transformer_cli.distributed import teardown as teardown_distributed
from transformer_cli.errors import TformerError
from transformer_cli.files import jsonable, write_json
from transformer_cli.loop import FitState, Fitter, steps_per_epoch, total_steps
from transformer_cli.loop import evaluate as evaluate_batches
from transformer_cli.losses import Loss, build_loss
from transformer_cli.model import count_parameters
from transformer_cli.optim import build_optimizer, build_scheduler
from transformer_cli.plots import plot_curves
from transformer_cli.prepare import Prepared, prepare_training_data
from transformer_cli.pretrained.settings import Start, start_from
from transformer_cli.restore import Restored, restore, restore_loss
from transformer_cli.results import print_results
from transformer_cli.resume import carry_over, continue_metrics, resume_from
from transformer_cli.rng import seed_everything
from transformer_cli.run_card import write_run_card
from transformer_cli.runlock import RunLock
from transformer_cli.tasks import TASKS, monitor_of
from transformer_cli.validate import check_train_config
from transformer_cli.version import __version__
from transformer_cli.writers import NullWriter, Writer, open_writers

log = logging.getLogger("tformer")


@dataclass
class Session:
    """One training process, set up: where it writes, what it trains and how."""

    cfg: DictConfig
    run_dir: Path
    dist: Dist
    precision: Precision
    prep: Prepared
    model: torch.nn.Module
    loss_fn: Loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    monitor: tuple[str, str]  # the validation metric that picks the best checkpoint, and max or min
    resumed: Restored | None
    ckpts: CheckpointDir


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Train on the configured data, keep the best checkpoint, report validation and test metrics.

    Returns the best value of the monitored validation metric (what Hydra sweepers optimise)."""
    start = time.time()
    check_train_config(cfg)
    tune_malloc()  # the CLI did already; a call from Python gets it here
    dist, device = setup_distributed(resolve_device(cfg.trainer.device))
    try:
        run_dir = Path(dist.broadcast(str(run_dir)))  # rank 0's run dir for all
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            logging.getLogger().setLevel(logging.WARNING)  # one log: rank 0's
        with RunLock(run_dir) if dist.is_main else contextlib.nullcontext():  # one training per run dir
            if dist.is_main:
                CheckpointDir(run_dir / "checkpoints", cfg.trainer.keep_last).remove_debris()
            cfg, resumed = resume_from(cfg, run_dir, dist)
            cfg, begin = start_from(cfg, dist) if resumed is None else (cfg, None)
            return _train(start_session(cfg, run_dir, dist, device, resumed, begin), start)
    finally:
        teardown_distributed()


def start_session(cfg: DictConfig, run_dir: Path, dist: Dist, device: torch.device, resumed: Restored | None,
                  begin: Start | None) -> Session:
    """Data, task, model, loss, optimizer and schedule on this process's device: resumed from a checkpoint,
    started from a pretrained or earlier encoder (`begin`), or from scratch."""
    seed_everything(cfg.seed, cfg.trainer.deterministic, cfg.trainer.threads)
    prep = prepare_training_data(cfg, resumed, dist, begin)
    model = resumed.model if resumed else prep.task.build_model(cfg.model, prep.tokenizer.get_vocab_size())
    if begin is not None:
        begin.load(model)
    if cfg.model.freeze_layers:  # not stored in a checkpoint: a resumed run freezes again
        model.encoder.freeze(cfg.model.freeze_layers)
    model.to(device)
    if dist.rank > 0:  # the same initial weights (DDP also broadcasts rank 0's), but its own dropout stream
        torch.manual_seed(rank_seed(cfg.seed, dist.rank))
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, optimizer, total_steps(prep.splits["train"], cfg.trainer))
    return Session(cfg=cfg, run_dir=run_dir, dist=dist, precision=resolve_precision(cfg.trainer.precision, device),
                   prep=prep, model=model, loss_fn=build_loss(cfg.loss, prep.loss_context), optimizer=optimizer,
                   scheduler=scheduler, monitor=monitor_of(cfg.task.name, cfg.trainer.monitor), resumed=resumed,
                   ckpts=CheckpointDir(run_dir / "checkpoints", cfg.trainer.keep_last))


def _train(s: Session, start: float) -> float:
    """Fit, then (rank 0) evaluate the best weights and write the summary, card, plots and results table."""
    log_start(s)
    if s.dist.is_main:
        (s.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(s.cfg, resolve=True))
        if s.resumed is not None:
            continue_metrics(s.resumed.path, s.run_dir / "metrics.jsonl", int(s.resumed.checkpoint.meta["step"]))
    writers = open_writers(OmegaConf.select(s.cfg, "logger"), s.run_dir, s.cfg) if s.dist.is_main else NullWriter()
    with writers as writer:  # metrics.jsonl, .csv, [tensorboard], [mlflow]
        fitter = make_fitter(s, writer)
        train_start = time.time()
        state = fitter.fit(s.prep.splits["train"], s.prep.splits["validation"])
        train_seconds = time.time() - train_start
        if not s.dist.is_main:  # rank 0 evaluates the best weights and writes the summary
            return _best(state)
        if state.best_step is None:
            raise TformerError(f"no validation evaluation of this run gave a finite loss and {s.monitor[0]}, so no "
                               "checkpoint was promoted to best (the run diverged)",
                               hint="lower optim.lr or set trainer.grad_clip; trainer.nan_policy=error stops at the "
                                    f"first non-finite step; the checkpoints in {s.ckpts.root} are kept")
        best = load_checkpoint(s.ckpts.root / "best")
        load_weights(s.model, best.weights, best.path)
        final = final_evaluation(s, writer, state)
        summary = summarize(s, state, final, train_seconds, time.time() - start)
        write_json(s.run_dir / "summary.json", summary)
        write_run_card(s.run_dir, s.cfg, jsonable(summary))
        writer.finish(result_files(s.run_dir), s.ckpts.root / "best")  # e.g. MLflow uploads them
    monitor = s.monitor[0]
    print_results(f"{s.cfg.task.name} / {s.cfg.loss.name}: best {monitor}={state.best_value:.4f} at step "
                  f"{state.best_step}", {k: v["metrics"] for k, v in final.items()})
    log.info("run directory: %s", s.run_dir)
    return _best(state)


def result_files(run_dir: Path) -> list[Path]:
    """What a completed run wrote besides its metrics and checkpoints: the writers' artifacts."""
    return [run_dir / name for name in ("README.md", "summary.json", "config.yaml", "curves.png")]


def log_start(s: Session) -> None:
    """What is about to be trained, in the log."""
    cfg, train_split = s.cfg, s.prep.splits["train"]
    log.info("task=%s loss=%s device=%s precision=%s params=%s steps=%d (%d per epoch)%s", cfg.task.name,
             cfg.loss.name, s.precision.device, s.precision.name, f"{count_parameters(s.model):,}",
             total_steps(train_split, cfg.trainer), steps_per_epoch(train_split, cfg.trainer),
             f", {s.dist.world} processes" if s.dist.enabled else "")
    log.info("examples: %s, vocabulary: %d", s.prep.sizes, s.prep.tokenizer.get_vocab_size())


def make_fitter(s: Session, writer: Writer) -> Fitter:
    """The loop for this session; it saves a complete checkpoint at each evaluation (and on request)."""
    task_json = {**s.prep.task.state(), "loss_kind": s.prep.task.loss_kind,
                 "loss_context": s.prep.loss_context.to_json()}

    def on_checkpoint(state: FitState, scalars: dict[str, float] | None, improved: bool) -> str:
        trainer_state = fitter.capture()  # every rank: it gathers their random states
        if not s.dist.is_main:
            return ""
        meta = {"step": state.step, "epoch": state.epoch, "monitor": s.monitor[0], "metrics": scalars}
        write = partial(save_checkpoint, model=s.model, config=s.cfg, tokenizer=s.prep.tokenizer,
                        task_state=task_json, meta=meta, trainer_state=trainer_state)
        return str(s.ckpts.save(state.step, write, best=improved))

    fitter = Fitter(s.model, s.prep.task, s.loss_fn, s.optimizer, s.scheduler, s.precision, s.cfg.trainer,
                    s.cfg.seed, s.monitor, writer, on_checkpoint, s.dist)
    if s.resumed is not None:
        try:
            fitter.restore(s.resumed.checkpoint.trainer_state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise corrupt(s.resumed.path, f"its training state does not fit this run ({str(err)[:200]})") from err
        if s.dist.is_main:
            carry_over(s.resumed, s.ckpts, fitter.state, s.monitor[0])
        log.info("resumed from %s at step %d (epoch %d)", s.resumed.path, fitter.state.step, fitter.state.epoch)
    return fitter


def final_evaluation(s: Session, writer: Writer, state: FitState) -> dict[str, dict[str, Any]]:
    """Evaluate the best weights on validation and test; write one 'final' record per split."""
    s.prep.task.final_decoding()
    out = {}
    for split in ("validation", "test"):
        if split not in s.prep.splits:
            continue
        batches = s.prep.splits[split].batches(s.cfg.trainer.eval_batch_size, shuffle=False, bucket=True)
        scalars, details = evaluate_batches(s.model, batches, s.prep.task, s.loss_fn, s.precision,
                                            side=s.prep.splits[split].side)
        writer.write({"event": "final", "split": split, "step": state.best_step, **scalars, "time": time.time()})
        out[split] = {"metrics": scalars, "details": details}
    return out


def summarize(s: Session, state: FitState, final: dict[str, dict[str, Any]], train_seconds: float,
              wall_seconds: float) -> dict[str, Any]:
    """summary.json: the best value and step, final metrics and details, checkpoints, sizes, times, versions."""
    epochs = state.step / max(1, steps_per_epoch(s.prep.splits["train"], s.cfg.trainer))
    root = s.ckpts.root
    summary = {
        "task": s.cfg.task.name, "loss": s.cfg.loss.name, "monitor": s.monitor[0], "mode": s.monitor[1],
        "best_value": state.best_value, "best_step": state.best_step, "steps": state.step, "epochs": epochs,
        "stop_reason": state.stop_reason,
        "final": {k: v["metrics"] for k, v in final.items()},
        "details": {k: v["details"] for k, v in final.items()},
        "checkpoints": {"best": str(root / "best"), "last": str(root / "last"),
                        "best_target": str((root / "best").resolve()),
                        "resumed_from": s.resumed and str(s.resumed.path)},
        "skipped_steps": state.skipped_steps,
        "parameters": count_parameters(s.model), "examples": s.prep.sizes,
        "vocab_size": s.prep.tokenizer.get_vocab_size(),
        "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(1e-9, epochs),
        "wall_seconds": wall_seconds, "device": str(s.precision.device), "precision": s.precision.name,
        "environment": environment(),
    }
    summary["plots"] = {"curves": str(plot_curves(s.run_dir / "metrics.jsonl", s.run_dir / "curves.png",
                                                  s.monitor[0]))}
    return summary


def _best(state: FitState) -> float:
    """The best monitored value as a float (NaN when no evaluation happened)."""
    return float(state.best_value) if state.best_value is not None else float("nan")


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Rebuild model, tokenizer and labels from a checkpoint alone and evaluate one split or file."""
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    restored = restore(cfg.ckpt)
    task = restored.task
    task.final_decoding()
    raw = eval_split(cfg, restored.config)
    split = task.encode(raw, restored.tokenizer).split()
    batch_size = cfg.batch_size or restored.config.trainer.eval_batch_size
    scalars, details = evaluate_batches(restored.model.to(precision.device),
                                        split.batches(batch_size, shuffle=False, bucket=True), task,
                                        restore_loss(restored), precision, progress=cfg.progress, side=split.side)
    result = {"checkpoint": str(restored.path), "split": raw.where.split, "source": raw.where.source,
              "examples": len(split), "step": restored.checkpoint.meta.get("step"), "metrics": scalars,
              "details": details}
    write_json(run_dir / "eval.json", result)
    print_results(f"eval {restored.path} ({raw.where.split}, {len(split)} examples)", {raw.where.split: scalars})
    return scalars


def eval_split(cfg: DictConfig, train_cfg: DictConfig) -> RawSplit:
    """The split to evaluate: one rebuilt exactly as in training, or a user's file with the same columns."""
    labels = TASKS[train_cfg.task.name].reads_labels
    if cfg.file:
        return read_eval_file(Path(cfg.file), train_cfg.data, labels)
    splits = load_splits(train_cfg.data, labels)
    if cfg.split not in splits:
        raise TformerError(f"split '{cfg.split}' does not exist for this checkpoint's data",
                           hint=f"choose one of: {', '.join(splits)}, or pass file=<path>")
    return splits[cfg.split]


def environment() -> dict[str, Any]:
    """Versions and hardware, for the record."""
    return {"tformer": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(),
            "malloc_tuned": tune_malloc()}
