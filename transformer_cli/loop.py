"""The training loop in plain PyTorch: steps with accumulation and clipping, evaluation, early stopping.

It knows nothing about the model's insides: a batch goes in, outputs come out, the task turns them into
what the loss expects, and the loss returns a summed value with its weight.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from transformer_cli.data.batching import Batch, EncodedSplit
from transformer_cli.device import Precision
from transformer_cli.distributed import SINGLE, Dist, rank_seed
from transformer_cli.errors import Preempted, TformerError
from transformer_cli.losses.base import Loss, LossValue
from transformer_cli.rng import rng_state, set_rng_state
from transformer_cli.tasks.protocol import Task

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """Where training stands: counters, position in the epoch, the best monitored value, early stopping."""

    step: int = 0  # optimizer updates applied
    epoch: int = 0  # epochs completed
    windows_done: int = 0  # accumulation windows consumed in the current epoch (applied or skipped)
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    evaluated_at: int = -1  # step of the latest evaluation
    saved_at: int = -1  # step of the latest checkpoint
    consecutive_skips: int = 0  # non-finite steps skipped in a row (nan_policy=skip)
    skipped_steps: int = 0
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


class NonFiniteError(TformerError):
    """A loss or gradient became NaN or infinite."""


STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)


def compute_loss(model: nn.Module, batch: Batch, task: Task, loss_fn: Loss, precision: Precision) -> tuple[LossValue, Tensor]:
    """Forward one batch and score it: (loss value, raw outputs)."""
    with precision.autocast():
        outputs = task.forward(model, batch)  # a task may feed the model more than the source (seq2seq)
    return loss_fn(*task.loss_inputs(outputs, batch.targets)), outputs


@dataclass
class StepResult:
    """What one optimizer step did: the window's summed loss and weight (over all ranks), and whether it was
    applied; tokens and examples it trained on, and whether any rank was asked to stop."""

    total: Tensor
    weight: Tensor
    applied: bool = True
    tokens: int = 0
    examples: int = 0
    stop: bool = False


def train_step(model: nn.Module, micro: list[Batch], task: Task, loss_fn: Loss, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, precision: Precision, grad_clip: float,
               check_finite: bool = False, dist: Dist = SINGLE, stop: bool = False) -> StepResult:
    """One optimizer update over `micro` batches, equal to one update on their union.

    Each micro-batch backpropagates its summed loss; the gradients are divided by the window's total
    weight afterwards, so padding, batch sizes and accumulation never change the normalisation.
    With several processes, `micro` is this rank's share: DDP averages the gradients over ranks and the
    loss sums, weights, counts and `stop` flags are summed over ranks, so the update equals one process's.
    With check_finite, a non-finite loss or gradient norm skips the update (one host sync per step)."""
    totals, weights = [], []
    for i, batch in enumerate(micro):
        with dist.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext():  # reduce once per window
            value, _ = compute_loss(model, batch.to(precision.device), task, loss_fn, precision)
            total_b, weight_b = (value.total * 0, value.weight * 0) if batch.placeholder else (value.total, value.weight)
            scaler.scale(total_b).backward()
        totals.append(total_b.detach())
        weights.append(weight_b.detach())
    total, weight = torch.stack(totals).sum(), torch.stack(weights).sum()
    tokens, examples = sum(b.real_tokens for b in micro), sum(b.examples for b in micro)
    divisor = weight
    if dist.enabled:  # one small reduction per step (a host sync on CUDA)
        stats = torch.tensor([0.0, 0.0, tokens, examples, float(stop)], dtype=torch.float64, device=total.device)
        stats[0], stats[1] = total.double(), weight.double()
        dist.sum(stats)
        total, weight = stats[0].to(total.dtype), stats[1].to(weight.dtype)
        tokens, examples, stop = int(stats[2]), int(stats[3]), bool(stats[4] > 0)
        divisor = weight / dist.world  # DDP averaged the gradients: (sum over ranks) / world
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch._foreach_div_(grads, divisor.clamp_min(1e-12))
    if grad_clip > 0 or check_finite:
        scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    if check_finite:
        norm = norm if norm is not None else torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        # fp16 overflow in the gradients is the scaler's business (it skips and rescales); the loss is ours.
        bad = not bool(torch.isfinite(total)) or (precision.name != "fp16" and not bool(torch.isfinite(norm)))
        if bad:
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            return StepResult(total, weight, False, tokens, examples, stop)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, weight, True, tokens, examples, stop)


@contextlib.contextmanager
def nonfinite_hooks(model: nn.Module) -> Iterator[None]:
    """While active, the first module whose forward output is NaN/inf raises, naming the module."""

    def hook(module: nn.Module, _inputs: Any, output: Any, name: str = "") -> None:
        if isinstance(output, Tensor) and output.is_floating_point() and not bool(torch.isfinite(output).all()):
            raise NonFiniteError(f"module '{name}' ({type(module).__name__}) produced a non-finite output",
                                 hint="inspect its inputs and weights; lower optim.lr or check the data")

    handles = [m.register_forward_hook(functools.partial(hook, name=n or "model")) for n, m in model.named_modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], task: Task, loss_fn: Loss, precision: Precision,
             progress: bool = False, desc: str = "eval",
             side: Sequence[Any] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Loss and task metrics over every batch of a split whose side records are `side` (EncodedSplit.side):
    (scalar metrics, details such as the confusion matrix)."""
    was_training = model.training
    model.eval()
    metrics = task.new_metrics(side)
    total = torch.zeros((), dtype=torch.float64, device=precision.device)
    weight = torch.zeros((), dtype=torch.float64, device=precision.device)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        batch = batch.to(precision.device)
        value, outputs = compute_loss(model, batch, task, loss_fn, precision)
        total += value.total.double()
        weight += value.weight.double()
        task.observe(metrics, model, batch, outputs)  # a task that decodes needs the model and the batch
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
    return -(-train.num_batches(cfg.batch_size, cfg.max_tokens) // cfg.grad_accum)


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


def promotable(scalars: dict[str, float], monitor: str) -> bool:
    """Whether an evaluation may become `best`: its loss and monitored value are finite (a model whose loss is
    NaN or infinite gives useless predictions, even if a metric such as accuracy still looks finite)."""
    return all(math.isfinite(float(scalars[k])) for k in {"loss", monitor} if k in scalars)


class Fitter:
    """Runs the loop for one model; `on_checkpoint(state, metrics, improved)` saves (metrics None: not an eval).

    With several processes (`dist`), every rank runs this loop in step: rank 0 evaluates and decides, the
    others follow its decisions (transformer_cli/distributed.py)."""

    def __init__(self, model: nn.Module, task: Task, loss_fn: Loss, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, precision: Precision, cfg: Any, seed: int,
                 monitor: tuple[str, str], writer: Any,
                 on_checkpoint: Callable[[FitState, dict[str, float] | None, bool], str], dist: Dist = SINGLE) -> None:
        self.model, self.task, self.loss_fn = model, task, loss_fn
        self.optimizer, self.scheduler, self.precision = optimizer, scheduler, precision
        self.cfg, self.seed = cfg, seed
        self.monitor, self.mode = monitor  # the validation metric that picks the best checkpoint, max or min
        self.writer, self.on_checkpoint = writer, on_checkpoint
        self.dist = dist
        self.train_model = model  # DistributedDataParallel around `model` while fitting with several processes
        self.state = FitState()
        self.scaler = precision.scaler()
        self.meter = _Meter()
        self.stop_signal: int | None = None
        self.stop_agreed = False  # with several processes: some rank got a stop signal (known after a step)

    def fit(self, train: EncodedSplit, val: EncodedSplit) -> FitState:
        """Train until max_steps, max_epochs or early stopping; evaluate on `val` along the way.

        Raises Preempted after saving a checkpoint when SIGTERM, SIGINT or SIGUSR1 arrives."""
        state = self.state
        limit = total_steps(train, self.cfg)
        self.model.train()
        self.train_model = self.dist.wrap(self.model, self.precision.device)
        if self.cfg.compile:  # dynamic shapes: batches differ in length; evaluation stays eager
            self.train_model = torch.compile(self.train_model, dynamic=True)
        # Redraw often on a terminal, rarely in a log file.
        self.bar = tqdm(total=limit, initial=state.step, desc="train", disable=not (self.cfg.progress and self.dist.is_main),
                        dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        with self._catch_signals():
            while state.step < limit and not state.stop_reason and not self._epochs_done():
                if self._epoch(train, val, limit):
                    state.epoch += 1
                    state.windows_done = 0
                    if self.cfg.eval_every <= 0:
                        self._evaluate(val)
            if state.evaluated_at != state.step:
                self._evaluate(val)  # the final weights always get a validation record and a checkpoint
        self.bar.close()
        state.stop_reason = state.stop_reason or "completed"
        return state

    def _epochs_done(self) -> bool:
        """Whether max_epochs passes are complete (skipped non-finite steps do not buy extra data)."""
        return self.cfg.max_epochs > 0 and self.state.epoch >= self.cfg.max_epochs

    def _epoch(self, train: EncodedSplit, val: EncodedSplit, limit: int) -> bool:
        """Run optimizer steps over (the rest of) one epoch; True when the whole epoch was consumed."""
        cfg, state = self.cfg, self.state
        per_epoch = steps_per_epoch(train, cfg)
        batches = train.batches(cfg.batch_size, shuffle=True, bucket=cfg.bucket_by_length, seed=self.seed,
                                epoch=state.epoch, pin=self.precision.device.type == "cuda",
                                skip=state.windows_done * cfg.grad_accum, max_tokens=cfg.max_tokens,
                                shard=self.dist.shard if self.dist.enabled else None)
        for micro in windows(batches, cfg.grad_accum):
            self._step(micro)
            state.windows_done += 1
            if cfg.eval_every > 0 and state.step % cfg.eval_every == 0 and state.evaluated_at != state.step:
                self._evaluate(val)
            if cfg.save_every > 0 and state.step % cfg.save_every == 0 and state.saved_at != state.step:
                self._save(None, False)
            if self._stop_requested():
                self._preempt()
            if state.step >= limit or state.stop_reason:
                break
        return state.windows_done >= per_epoch

    def _step(self, micro: list[Batch]) -> None:
        """One optimizer step, with the non-finite policy applied; logs at log_every."""
        cfg, state = self.cfg, self.state
        guard = nonfinite_hooks(self.model) if cfg.detect_anomaly else contextlib.nullcontext()
        with guard:
            result = train_step(self.train_model, micro, self.task, self.loss_fn, self.optimizer, self.scaler,
                                self.precision, cfg.grad_clip, check_finite=cfg.nan_policy != "off", dist=self.dist,
                                stop=self.stop_signal is not None)
        self.stop_agreed = self.stop_agreed or result.stop
        if not result.applied:
            self._non_finite(micro)
            return
        state.consecutive_skips = 0
        self.scheduler.step()
        state.step += 1
        self.meter.add(result.total, result.weight, result.tokens, result.examples)
        self.bar.update(1)
        if state.step % cfg.log_every == 0:
            self._log_train()

    def _non_finite(self, micro: list[Batch]) -> None:
        """Apply nan_policy to a step whose loss or gradients were not finite (the weights were not touched)."""
        state, cfg = self.state, self.cfg
        rows = sorted(int(i) for b in micro for i in b.index.tolist())
        where = f"step {state.step + 1} (epoch {state.epoch}, batch of training examples {_short(rows)})"
        if cfg.nan_policy == "error":
            raise NonFiniteError(f"non-finite loss or gradient at {where}; no update was applied",
                                 hint="lower optim.lr, check the data, set trainer.detect_anomaly=true to find the "
                                 "module, or trainer.nan_policy=skip")
        state.consecutive_skips += 1
        state.skipped_steps += 1
        self.writer.write({"event": "skipped", "split": "train", "step": state.step, "epoch": state.epoch,
                           "examples": rows, "time": time.time()})
        log.warning("skipped a non-finite update at %s", where)
        if state.consecutive_skips > cfg.max_consecutive_skips:
            raise NonFiniteError(f"{state.consecutive_skips} non-finite steps in a row, the last at {where}",
                                 hint="the run has diverged: lower optim.lr or check the data")

    def _log_train(self) -> None:
        """Write one training record and refresh the progress bar (the only host sync of the step loop)."""
        loss, tps, eps = self.meter.flush()
        lr = self.scheduler.get_last_lr()[0]
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.writer.write({"event": "train", "split": "train", "step": self.state.step, "epoch": self.state.epoch,
                           "lr": lr, "loss": loss, "tokens_per_s": tps, "examples_per_s": eps, "time": time.time()})

    def _evaluate(self, val: EncodedSplit) -> None:
        """Evaluate, record, track the best value and early stopping, then checkpoint."""
        state, cfg = self.state, self.cfg
        if self.meter.weight is not None:
            self._log_train()  # the training loss up to this point, so curves line up with evaluations
        state.evaluated_at = state.step
        start = time.perf_counter()
        scalars = None
        if self.dist.is_main:  # the whole split on rank 0: the same metrics as one process; the others wait
            batches = val.batches(cfg.eval_batch_size, shuffle=False, bucket=True)
            scalars, _ = evaluate(self.model, batches, self.task, self.loss_fn, self.precision, side=val.side)
        scalars = self.dist.broadcast(scalars)
        value = scalars[self.monitor]
        improved = promotable(scalars, self.monitor) and is_better(value, state.best_value, self.mode)
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
        self._save(scalars, improved)

    def _save(self, scalars: dict[str, float] | None, improved: bool) -> str:
        """Checkpoint the current step (weights and everything needed to resume it exactly)."""
        self.state.saved_at = self.state.step
        return self.on_checkpoint(self.state, scalars, improved)

    def _stop_requested(self) -> bool:
        """Whether to save and stop here: this process got a signal (or, with several, any rank did)."""
        return self.stop_agreed if self.dist.enabled else self.stop_signal is not None

    def _preempt(self) -> None:
        """Save at this step boundary and stop with Preempted."""
        signum = self.stop_signal or signal.SIGTERM  # with several processes another rank may have got it
        path = self._save(None, False) if self.state.saved_at != self.state.step else "(already saved)"
        self.writer.write({"event": "preempted", "split": "train", "step": self.state.step, "epoch": self.state.epoch,
                           "signal": signal.Signals(signum).name, "time": time.time()})
        self.bar.close()
        raise Preempted(signal.Signals(signum).name, self.state.step, path)

    @contextlib.contextmanager
    def _catch_signals(self) -> Iterator[None]:
        """Turn SIGTERM/SIGINT/SIGUSR1 into a save-and-stop at the next step boundary (a second SIGINT aborts)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT and self.stop_signal == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.warning("received %s: saving a checkpoint at the next step boundary", signal.Signals(signum).name)

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def capture(self) -> dict[str, Any]:
        """Everything besides the weights that an exact resume needs (tensors and plain values)."""
        s = self.state
        rngs = self.dist.gather(rng_state())  # every rank's dropout stream (a collective: all ranks call capture)
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rngs[0],
            **({"rng_other_ranks": rngs[1:]} if self.dist.enabled else {}),
            "fit": {k: getattr(s, k) for k in ("step", "epoch", "windows_done", "best_value", "best_step",
                                               "evals_without_improvement", "evaluated_at", "skipped_steps")},
            "meter": self.meter.state(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Put optimizer, scheduler, scaler, RNGs, counters and running averages back as captured."""
        optimizer = dict(saved["optimizer"])
        optimizer["state"] = {int(k): v for k, v in optimizer["state"].items()}  # JSON made the ids strings
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict({**saved["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        for key, value in saved["fit"].items():
            setattr(self.state, key, value)
        self.state.saved_at = self.state.step
        self.meter.load(saved["meter"])
        self._restore_rng(saved)

    def _restore_rng(self, saved: dict[str, Any]) -> None:
        """This rank's saved random state; a rank the checkpoint did not have (more processes now) reseeds."""
        ranks = [saved["rng"], *saved.get("rng_other_ranks", [])]
        if self.dist.rank < len(ranks):
            set_rng_state(ranks[self.dist.rank])
        else:
            torch.manual_seed(rank_seed(self.seed, self.dist.rank, self.state.step))


def _scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's counters (its lambdas are rebuilt from config, not stored)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def _short(rows: list[int], limit: int = 12) -> str:
    """A list of example indices, shortened for a message."""
    head = ", ".join(map(str, rows[:limit]))
    return f"[{head}{', ...' if len(rows) > limit else ''}] ({len(rows)} examples)"


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

    def state(self) -> dict[str, Any]:
        """The running sums, for a checkpoint."""
        return {"total": None if self.total is None else self.total.detach().cpu(),
                "weight": None if self.weight is None else self.weight.detach().cpu(),
                "tokens": self.tokens, "examples": self.examples}

    def load(self, saved: dict[str, Any]) -> None:
        """Continue from saved running sums."""
        self.total, self.weight = saved["total"], saved["weight"]
        self.tokens, self.examples = saved["tokens"], saved["examples"]


def _fmt(scalars: dict[str, float]) -> str:
    """Metrics as a short one-line string for the log."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())
