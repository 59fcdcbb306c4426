"""The training loop in plain PyTorch: steps with accumulation and clipping, evaluation, early stopping.

It knows nothing about the model's insides: a batch goes in, outputs come out, the task turns them into
what the loss expects, and the loss returns a summed value with its weight.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from transformer_cli.data.batching import Batch, EncodedSplit
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import Loss, LossValue
from transformer_cli.metrics import METRIC_MODES, JsonlWriter
from transformer_cli.tasks.common import Task

log = logging.getLogger(__name__)


@dataclass
class Precision:
    """Autocast dtype and gradient scaling for one device."""

    name: str  # fp32 | bf16 | fp16
    device: torch.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward-pass context: autocast for bf16/fp16, nothing for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active only for fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TformerError(f"trainer.device={name} but CUDA is not available here", hint="use trainer.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise TformerError(f"trainer.device='{name}' is not a device", hint="use auto, cpu, cuda or cuda:N") from err


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto` -> bf16 on CUDA that supports it, fp32 elsewhere (CPU autocast without native bf16 is slow)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise TformerError("precision fp16 needs a CUDA device", hint="use precision=fp32 or bf16 on CPU")
    return Precision(name, device)


@dataclass
class FitState:
    """Where training stands: counters, the best monitored value, early stopping."""

    step: int = 0
    epoch: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def compute_loss(model: nn.Module, batch: Batch, task: Task, loss_fn: Loss, precision: Precision) -> tuple[LossValue, Tensor]:
    """Forward one batch and score it: (loss value, raw outputs)."""
    with precision.autocast():
        outputs = model(batch.input_ids, batch.mask)
    return loss_fn(*task.loss_inputs(outputs, batch.targets)), outputs


def train_step(model: nn.Module, micro: list[Batch], task: Task, loss_fn: Loss, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, precision: Precision, grad_clip: float) -> tuple[Tensor, Tensor]:
    """One optimizer update over `micro` batches, equal to one update on their union.

    Each micro-batch backpropagates its summed loss; the gradients are divided by the window's total
    weight afterwards, so padding, batch sizes and accumulation never change the normalisation.
    Returns the window's summed loss and weight (device tensors: no host sync here)."""
    totals, weights = [], []
    for batch in micro:
        value, _ = compute_loss(model, batch.to(precision.device), task, loss_fn, precision)
        scaler.scale(value.total).backward()
        totals.append(value.total.detach())
        weights.append(value.weight.detach())
    weight = torch.stack(weights).sum()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch._foreach_div_(grads, weight.clamp_min(1e-12))
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack(totals).sum(), weight


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], task: Task, loss_fn: Loss, precision: Precision,
             progress: bool = False, desc: str = "eval") -> tuple[dict[str, float], dict[str, Any]]:
    """Loss and task metrics over every batch: (scalar metrics, details such as the confusion matrix)."""
    was_training = model.training
    model.eval()
    metrics = task.new_metrics()
    total = torch.zeros((), dtype=torch.float64, device=precision.device)
    weight = torch.zeros((), dtype=torch.float64, device=precision.device)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        batch = batch.to(precision.device)
        value, outputs = compute_loss(model, batch, task, loss_fn, precision)
        total += value.total.double()
        weight += value.weight.double()
        task.update_metrics(metrics, outputs, batch.targets)
    model.train(was_training)
    scalars = {"loss": float(total / weight) if weight > 0 else math.nan, **metrics.compute()}
    return scalars, metrics.details()


def windows(batches: Iterator[Batch], size: int) -> Iterator[list[Batch]]:
    """Group micro-batches into accumulation windows (the last one may be shorter)."""
    window: list[Batch] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def steps_per_epoch(train: EncodedSplit, cfg: Any) -> int:
    """Optimizer steps in one pass over the training split."""
    return -(-train.num_batches(cfg.batch_size) // cfg.grad_accum)


def total_steps(train: EncodedSplit, cfg: Any) -> int:
    """Optimizer steps the run will take if it does not stop early."""
    by_epochs = steps_per_epoch(train, cfg) * cfg.max_epochs if cfg.max_epochs > 0 else math.inf
    by_steps = cfg.max_steps if cfg.max_steps >= 0 else math.inf
    return int(min(by_epochs, by_steps))


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether a monitored value improves on the best so far."""
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


class Fitter:
    """Runs the loop for one model, calling `on_eval(state, metrics, improved)` after each evaluation."""

    def __init__(self, model: nn.Module, task: Task, loss_fn: Loss, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, precision: Precision, cfg: Any, seed: int,
                 monitor: str, writer: JsonlWriter,
                 on_eval: Callable[[FitState, dict[str, float], bool], None]) -> None:
        self.model, self.task, self.loss_fn = model, task, loss_fn
        self.optimizer, self.scheduler, self.precision = optimizer, scheduler, precision
        self.cfg, self.seed, self.monitor, self.mode = cfg, seed, monitor, METRIC_MODES[monitor]
        self.writer, self.on_eval = writer, on_eval
        self.state = FitState()
        self.scaler = precision.scaler()
        self.meter = _Meter()

    def fit(self, train: EncodedSplit, val: EncodedSplit) -> FitState:
        """Train until max_steps, max_epochs or early stopping; evaluate on `val` along the way."""
        state = self.state
        limit = total_steps(train, self.cfg)
        self.model.train()
        # Redraw often on a terminal, rarely in a log file.
        self.bar = tqdm(total=limit, desc="train", disable=not self.cfg.progress, dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.evaluated_at = -1
        while state.step < limit and not state.stop_reason:
            if self._epoch(train, val, limit):
                state.epoch += 1
                if self.cfg.eval_every <= 0:
                    self._evaluate(val)
        if self.evaluated_at != state.step:
            self._evaluate(val)  # the final weights always get a validation record
        self.bar.close()
        state.stop_reason = state.stop_reason or "completed"
        return state

    def _epoch(self, train: EncodedSplit, val: EncodedSplit, limit: int) -> bool:
        """Run optimizer steps over one epoch; True when the whole epoch was consumed."""
        cfg, state = self.cfg, self.state
        scaler = self.scaler
        batches = train.batches(cfg.batch_size, shuffle=True, bucket=cfg.bucket_by_length, seed=self.seed,
                                epoch=state.epoch, pin=self.precision.device.type == "cuda")
        per_epoch = steps_per_epoch(train, cfg)
        for i, micro in enumerate(windows(batches, cfg.grad_accum)):
            total, weight = train_step(self.model, micro, self.task, self.loss_fn, self.optimizer, scaler,
                                       self.precision, cfg.grad_clip)
            self.scheduler.step()
            state.step += 1
            self.meter.add(total, weight, sum(b.real_tokens for b in micro), sum(len(b.index) for b in micro))
            self.bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == limit:
                self._log_train()
            if cfg.eval_every > 0 and state.step % cfg.eval_every == 0:
                self._evaluate(val)
            if state.step >= limit or state.stop_reason:
                return i + 1 == per_epoch
        return True

    def _log_train(self) -> None:
        """Write one training record and refresh the progress bar (the only host sync of the step loop)."""
        loss, tps, eps = self.meter.flush()
        lr = self.scheduler.get_last_lr()[0]
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.writer.write({"event": "train", "split": "train", "step": self.state.step, "epoch": self.state.epoch,
                           "lr": lr, "loss": loss, "tokens_per_s": tps, "examples_per_s": eps, "time": time.time()})

    def _evaluate(self, val: EncodedSplit) -> None:
        """Evaluate, record, track the best value and early stopping, then hand over to on_eval."""
        state, cfg = self.state, self.cfg
        self.evaluated_at = state.step
        start = time.perf_counter()
        batches = val.batches(cfg.eval_batch_size, shuffle=False, bucket=True)
        scalars, _ = evaluate(self.model, batches, self.task, self.loss_fn, self.precision)
        value = scalars[self.monitor]
        improved = is_better(value, state.best_value, self.mode)
        if improved:
            state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
        else:
            state.evals_without_improvement += 1
        record = {"event": "eval", "split": "validation", "step": state.step, "epoch": state.epoch,
                  "lr": self.scheduler.get_last_lr()[0], **scalars,
                  "eval_seconds": time.perf_counter() - start, "time": time.time()}
        self.writer.write(record)
        state.history.append(record)
        log.info("step %d validation: %s", state.step, _fmt(scalars))
        patience = cfg.early_stopping_patience
        if patience > 0 and state.evals_without_improvement >= patience:
            state.stop_reason = f"early stopping: {self.monitor} did not improve for {patience} evaluations"
            log.info(state.stop_reason)
        self.on_eval(state, scalars, improved)


class _Meter:
    """Running training loss and throughput between two log lines, kept on device until flushed."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.weight: Tensor | None = None
        self.tokens = 0
        self.examples = 0
        self.start = time.perf_counter()

    def add(self, total: Tensor, weight: Tensor, tokens: int, examples: int) -> None:
        """Accumulate one optimizer step."""
        self.total = total if self.total is None else self.total + total
        self.weight = weight if self.weight is None else self.weight + weight
        self.tokens += tokens
        self.examples += examples

    def flush(self) -> tuple[float, float, float]:
        """(mean loss, real tokens/s, examples/s) since the last flush, then reset."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss = float(self.total / self.weight) if self.total is not None else math.nan
        out = (loss, self.tokens / elapsed, self.examples / elapsed)
        self.__init__()
        return out


def _fmt(scalars: dict[str, float]) -> str:
    """Metrics as a short one-line string for the log."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())
