"""`tformer plan`: check a training config and measure what it will cost, before any compute is spent.

The config is composed exactly as `tformer train` composes it; the data is loaded and the tokenizer trained
(seconds), so the step counts come from the real training split through the same functions the loop uses
(loop.steps_per_epoch, loop.total_steps, optim.warmup_steps_of, optim.schedule_fn), and the batch order is
the one the loop will draw (batching.batch_order with the run's seed), which gives the exact padded token
count of every step. The model is built on the meta device: parameters are counted, nothing is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import nn

from transformer_cli.console import plain_console, styled
from transformer_cli.data.batching import EncodedSplit, batch_order
from transformer_cli.device import resolve_device, resolve_precision
from transformer_cli.loop import steps_per_epoch, total_steps
from transformer_cli.optim import schedule_fn, warmup_steps_of
from transformer_cli.prepare import prepare_training_data
from transformer_cli.pretrained.settings import Start, start_from
from transformer_cli.tasks import monitor_of
from transformer_cli.validate import check_train_config

PROCESSES = 1  # as planned here; under torchrun trainer.batch_size stays the global batch, split over processes
BYTES_FP32 = 4


@dataclass
class Tokens:
    """What the optimizer steps of a run will feed the model, counted batch by batch."""

    real: int = 0  # non-padding tokens
    padded: int = 0  # sum of B x T over micro-batches: what the model computes on
    attention: int = 0  # sum of B x T^2 over micro-batches: the attention score entries
    longest: int = 0  # longest micro-batch T


@dataclass
class Plan:
    """Everything `tformer plan` reports, as numbers (tests compare them with real runs)."""

    task: str
    loss: str
    monitor: str
    mode: str
    device: str
    precision: str
    examples: dict[str, int]
    vocab_size: int
    parameters: int
    embedding_parameters: int
    steps_per_epoch: int
    total_steps: int
    epochs: float
    warmup_steps: int
    evaluations: int  # validation passes, the final one of the best checkpoint included
    batch_size: int
    grad_accum: int
    processes: int
    effective_batch: int
    tokens_per_epoch: int  # real tokens in one pass over the training split
    train_tokens: Tokens
    truncated: float  # fraction of training examples cut at data.tokenizer.max_length
    train_flops: float
    eval_flops: float
    memory: dict[str, int]  # bytes, an estimate
    lr: list[float] = field(repr=False)  # learning rate of each optimizer step
    warnings: list[str] = field(default_factory=list)
    task_line: str = ""  # what the task learned from the data and how it predicts (Task.describe)
    model_line: str = ""  # the encoder, and where its weights start from
    data_cache: str = "off"  # the tokenized cache: 'reused <folder>', 'written <folder>' or 'off'


def make_plan(cfg: DictConfig) -> Plan:
    """Check the config, load and tokenize the data, count parameters, steps, tokens, FLOPs and memory."""
    check_train_config(cfg)  # loss fits task, monitor is the task's, sizes agree: before reading any data
    monitor, mode = monitor_of(cfg.task.name, cfg.trainer.monitor)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    cfg, begin = start_from(cfg)  # a pretrained or earlier model's architecture comes with it
    prep = prepare_training_data(cfg, start=begin)  # a missing file or column fails here, naming it
    with torch.device("meta"):
        model = prep.task.build_model(cfg.model, prep.tokenizer.get_vocab_size())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    train = prep.splits["train"]
    t = cfg.trainer
    per_epoch, total = steps_per_epoch(train, t), total_steps(train, t)
    tokens = count_tokens(train, t, cfg.seed, total)
    evaluations = count_evaluations(per_epoch, total, t.eval_every)
    lr = [cfg.optim.lr * f for f in map(schedule_fn(cfg.schedule, total), range(total))]
    plan = Plan(
        task=cfg.task.name, loss=cfg.loss.name, monitor=monitor, mode=mode, device=str(device),
        precision=precision.name, examples=prep.sizes, vocab_size=prep.tokenizer.get_vocab_size(),
        parameters=params, embedding_parameters=embedding, steps_per_epoch=per_epoch, total_steps=total,
        epochs=total / max(1, per_epoch), warmup_steps=warmup_of(cfg.schedule, total), evaluations=evaluations,
        batch_size=t.batch_size, grad_accum=t.grad_accum, processes=PROCESSES,
        effective_batch=t.batch_size * t.grad_accum, tokens_per_epoch=int(train.lengths.sum()),
        train_tokens=tokens, truncated=float(np.mean(train.lengths >= cfg.data.tokenizer.max_length)),
        train_flops=training_flops(params - embedding, cfg.model, tokens),
        eval_flops=evaluations * forward_flops(params - embedding, cfg.model, prep.splits["validation"])
        + (forward_flops(params - embedding, cfg.model, prep.splits["test"]) if "test" in prep.splits else 0.0),
        memory=memory_estimate(cfg, params, tokens.longest, precision.name), lr=lr)
    plan.warnings = warnings_of(plan, cfg)
    plan.task_line = prep.task.describe()
    plan.model_line = describe_model(cfg.model, begin)
    plan.data_cache = prep.cache
    return plan


def describe_cache(note: str) -> str:
    """Whether training will tokenize the data or reuse the cache, in words."""
    state, _, folder = note.partition(" ")
    if state == "reused":
        return f"in the cache ({folder}): training reuses it, nothing is tokenized again"
    if state == "written":
        return f"tokenized now into the cache ({folder}): training reuses it"
    return "tokenized in memory by every run (data.cache=false, or hub data)"


def describe_model(model: Any, begin: Start | None) -> str:
    """The encoder's shape, and whether it starts from earlier weights (which, and what stays frozen)."""
    shape = f"{model.n_layers} layers, d_model {model.d_model}, {model.n_heads} heads, {model.norm}-norm"
    if begin is None:
        return f"from scratch: {shape}"
    frozen = f"; embeddings and {model.freeze_layers} layer(s) frozen" if model.freeze_layers else ""
    return f"{begin.description}: {shape}{frozen}"


def warmup_of(schedule: Any, total: int) -> int:
    """Warmup steps of any schedule: the warmup/decay family reads warmup_ratio too."""
    if schedule.name in ("constant", "linear", "cosine"):
        return warmup_steps_of(schedule, total)
    return int(schedule.warmup_steps)


def micro_batches(lengths: np.ndarray, t: Any, seed: int, steps: int) -> Iterator[np.ndarray]:
    """Example indices of each micro-batch the first `steps` optimizer steps consume, in the loop's order."""
    done, epoch = 0, 0
    while done < steps:
        order = batch_order(lengths, t.batch_size, shuffle=True, bucket=t.bucket_by_length, seed=seed, epoch=epoch,
                            max_tokens=t.max_tokens)
        for start in range(0, len(order), t.grad_accum):
            yield from order[start : start + t.grad_accum]
            done += 1
            if done == steps:
                return
        epoch += 1


def count_tokens(train: EncodedSplit, t: Any, seed: int, steps: int) -> Tokens:
    """Real and padded tokens, and attention entries, over the run's micro-batches."""
    out = Tokens()
    for idx in micro_batches(train.lengths, t, seed, steps):
        lengths = train.lengths[idx]
        T = int(lengths.max())
        out.real += int(lengths.sum())
        out.padded += len(idx) * T
        out.attention += len(idx) * T * T
        out.longest = max(out.longest, T)
    return out


def count_evaluations(per_epoch: int, total: int, eval_every: int) -> int:
    """Validation passes during training (the loop always evaluates the final weights) plus the final one."""
    during = total // eval_every if eval_every > 0 else total // max(1, per_epoch)
    at_end = int(during == 0 or (total % eval_every if eval_every > 0 else total % max(1, per_epoch)) != 0)
    return during + at_end + 1  # + the final evaluation of the best checkpoint


def training_flops(dense_params: int, model: Any, tokens: Tokens) -> float:
    """6 x non-embedding parameters x tokens computed (padding included), plus attention, 12 L d T^2 per row."""
    return 6.0 * dense_params * tokens.padded + 12.0 * model.n_layers * model.d_model * tokens.attention


def forward_flops(dense_params: int, model: Any, split: EncodedSplit) -> float:
    """One forward pass over a split, sorted by length as evaluation batches are: 2 N D + 4 L d T^2."""
    lengths = np.sort(split.lengths).astype(np.float64)  # padding within a sorted batch is small: ignored
    return 2.0 * dense_params * lengths.sum() + 4.0 * model.n_layers * model.d_model * float((lengths**2).sum())


def memory_estimate(cfg: DictConfig, params: int, longest: int, precision: str) -> dict[str, int]:
    """Bytes of weights, gradients, optimizer state and the activations of the largest micro-batch.

    Activations per layer and token, kept for the backward pass: about 9 d_model + 2 d_ff values (norm
    inputs and outputs, QKV, attention output, feed-forward hidden before and after the activation), plus
    the H x T attention weights when the fused kernel is not used; 2 bytes each under bf16/fp16 autocast."""
    m = cfg.model
    value_bytes = 2 if precision in ("bf16", "fp16") else BYTES_FP32
    state = {"adamw": 2, "sgd": 1 if cfg.optim.get("momentum", 0) else 0}.get(cfg.optim.name, 2)
    rows = cfg.trainer.batch_size * longest
    per_layer = rows * (9 * m.d_model + 2 * m.d_ff + m.n_heads * longest)
    activations = value_bytes * (m.n_layers * per_layer + 2 * rows * m.d_model)
    out = {"weights": params * BYTES_FP32, "gradients": params * BYTES_FP32,
           "optimizer": state * params * BYTES_FP32, "activations": activations}
    out["total"] = sum(out.values())
    return out


def warnings_of(plan: Plan, cfg: DictConfig) -> list[str]:
    """Things that are legal but probably not meant."""
    out = []
    if plan.total_steps == 0:
        out.append("the run takes no optimizer step")
    if plan.warmup_steps >= plan.total_steps > 0:
        out.append(f"warmup ({plan.warmup_steps} steps) is not shorter than training ({plan.total_steps} steps)")
    if cfg.trainer.eval_every > plan.total_steps > 0:
        out.append(f"trainer.eval_every={cfg.trainer.eval_every} exceeds the run: only the final weights are evaluated")
    if plan.truncated > 0.05:
        out.append(f"{plan.truncated:.0%} of training examples are cut at data.tokenizer.max_length="
                   f"{cfg.data.tokenizer.max_length}")
    return out


# ----------------------------------------------------------------------------- printing


def plan_command(cfg: DictConfig) -> Plan:
    """Make the plan and print it."""
    plan = make_plan(cfg)
    print_plan(plan, cfg)
    return plan


def print_plan(plan: Plan, cfg: DictConfig, console: Console | None = None) -> None:
    """The checks, the numbers and a preview of the learning-rate schedule."""
    console = console or plain_console()
    console.print(styled(("plan", "bold"), f": task={plan.task} loss={plan.loss} data={cfg.data.name or cfg.data.train} "
                  f"on {plan.device} ({plan.precision})"))
    console.print(styled(("ok", "green"), f" loss {plan.loss} fits task {plan.task}; monitor {plan.monitor} "
                  f"({'higher' if plan.mode == 'max' else 'lower'} is better) is one of its metrics; "
                  "data read: " + ", ".join(f"{k} {v:,}" for k, v in plan.examples.items())))
    console.print(styled(("tokenized data", "bold"), f": {describe_cache(plan.data_cache)}"))
    console.print(styled(("model", "bold"), f": {plan.model_line}"))
    console.print(styled(("task", "bold"), f": {plan.task_line}"))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for row in _rows(plan, cfg):
        table.add_row(*row)
    console.print(table)
    console.print(styled(("learning rate", "bold"), f" ({cfg.schedule.name}, peak {max(plan.lr, default=0):.3g}, "
                  f"warmup {plan.warmup_steps} steps)"))
    for line in lr_chart(plan.lr):
        console.print(line)
    for warning in plan.warnings:
        console.print(styled(("warning:", "yellow"), f" {warning}"))


def _rows(plan: Plan, cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(label, value, note) lines of the plan table."""
    mem = plan.memory
    budget = cfg.trainer.max_tokens
    batching = (f"batches of at most {budget:,} padded tokens and {plan.batch_size} examples" if budget > 0
                else f"batch {plan.batch_size}")
    return [
        ("parameters", f"{plan.parameters:,}", f"{plan.parameters - plan.embedding_parameters:,} outside embeddings; "
                                                 f"vocabulary {plan.vocab_size:,}"),
        ("steps per epoch", f"{plan.steps_per_epoch:,}", f"{plan.examples['train']:,} examples / {batching} "
                                                         f"/ accumulation {plan.grad_accum}"),
        ("total steps", f"{plan.total_steps:,}", f"{plan.epochs:.2f} epochs (max_epochs={cfg.trainer.max_epochs}, "
                                                 f"max_steps={cfg.trainer.max_steps})"),
        ("warmup steps", f"{plan.warmup_steps:,}", cfg.schedule.name),
        ("effective batch", f"{plan.effective_batch:,}" if budget <= 0 else f"<= {plan.effective_batch:,}",
         f"batch {plan.batch_size} x accumulation {plan.grad_accum}, split over all processes under torchrun"),
        ("evaluations", f"{plan.evaluations:,}", "validation passes, the final one included"),
        ("tokens per epoch", f"{plan.tokens_per_epoch:,}", f"{plan.truncated:.1%} of examples truncated"),
        ("tokens computed", f"{plan.train_tokens.padded:,}", f"{plan.train_tokens.real:,} real + padding, "
                                                              f"longest batch {plan.train_tokens.longest} tokens"),
        ("training FLOPs", _si(plan.train_flops), "6 x non-embedding params x tokens + 12 L d T^2 attention"),
        ("evaluation FLOPs", _si(plan.eval_flops), "forward passes: validation each evaluation, test once"),
        ("memory (estimate)", _bytes(mem["total"]),
         f"weights {_bytes(mem['weights'])} + gradients {_bytes(mem['gradients'])} + optimizer "
         f"{_bytes(mem['optimizer'])} + activations {_bytes(mem['activations'])} (batch {plan.batch_size} x "
         f"{plan.train_tokens.longest} tokens); allocator and CUDA context not included"),
    ]


def lr_chart(lr: list[float], width: int = 64, height: int = 8) -> list[str]:
    """The schedule as a filled terminal chart, eighth blocks for vertical detail."""
    if not lr or max(lr) <= 0:
        return ["(no steps)"]
    top, n = max(lr), len(lr)
    cols = min(width, n)
    levels = [lr[round(c * (n - 1) / max(1, cols - 1))] / top * height * 8 for c in range(cols)]
    blocks = " ▁▂▃▄▅▆▇█"
    lines = []
    for row in range(height):
        floor = (height - 1 - row) * 8
        cells = "".join(blocks[int(min(8, max(0, round(v - floor))))] for v in levels)
        label = f"{top:9.2e} " if row == 0 else (f"{0:9.2e} " if row == height - 1 else " " * 10)
        lines.append(f"{label}│{cells}")
    lines.append(" " * 10 + "└" + "─" * cols)
    lines.append(" " * 11 + f"step 1{'':<{max(0, cols - 12 - len(str(n)))}}step {n}")
    return lines


def _si(x: float) -> str:
    """A count with an SI prefix: 1.23e12 -> 1.23 T."""
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}"
    return f"{x:.3g}"


def _bytes(n: float) -> str:
    """Bytes in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"

