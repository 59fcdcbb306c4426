"""Optimizers and learning-rate schedules, chosen by name from the tables at the bottom."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from transformer_cli.errors import TformerError


@dataclass
class AdamWConfig:
    """AdamW (decoupled weight decay)."""

    name: str = "adamw"
    lr: float = 1e-3  # peak learning rate (with noam: the schedule's factor)
    weight_decay: float = 0.01  # not applied to biases, norms and embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool = True  # one fused kernel for the update (CPU and CUDA); false: torch's per-tensor-list version
    layer_decay: float = 1.0  # < 1: each encoder layer below the top learns at this fraction of the one above


@dataclass
class SGDConfig:
    """Stochastic gradient descent with optional (Nesterov) momentum."""

    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0  # not applied to biases, norms and embeddings
    momentum: float = 0.9
    nesterov: bool = False
    layer_decay: float = 1.0  # < 1: each encoder layer below the top learns at this fraction of the one above


@dataclass
class WarmupDecayConfig:
    """Linear warmup, then constant, linear or cosine decay to min_lr_ratio x peak."""

    name: str = "cosine"  # constant | linear | cosine
    warmup_steps: int = 0  # takes precedence over warmup_ratio when > 0
    warmup_ratio: float = 0.06  # fraction of total steps spent warming up (used when warmup_steps is 0)
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of the peak


@dataclass
class InverseSqrtConfig:
    """Linear warmup, then decay proportional to 1/sqrt(step) (fairseq's inverse_sqrt)."""

    name: str = "inverse_sqrt"
    warmup_steps: int = 1000


@dataclass
class NoamConfig:
    """The schedule of "Attention Is All You Need": lr x d_model^-0.5 x min(s^-0.5, s x w^-1.5)."""

    name: str = "noam"
    warmup_steps: int = 4000
    d_model: int = 128  # the YAML ties it to ${model.d_model}


def param_groups(model: nn.Module, weight_decay: float, lr: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Split trainable parameters: decay matrices, but not biases, norm weights or embeddings; with
    layer_decay < 1, encoder layer i of L learns at lr x layer_decay^(L + 1 - i) (embeddings: i = 0)."""
    if not 0.0 < layer_decay <= 1.0:
        raise TformerError(f"optim.layer_decay must be in (0, 1], got {layer_decay}")
    top = len(model.encoder.layers) + 1 if layer_decay < 1.0 else 0
    params: dict[int, nn.Parameter] = {}
    keys: dict[int, tuple[bool, int]] = {}  # id -> (exempt from decay, depth); a tied weight takes the lower
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = name == "bias" or isinstance(module, (nn.LayerNorm, nn.Embedding))
            was_exempt, was_depth = keys.get(id(p), (False, top))
            keys[id(p)] = (was_exempt or exempt, min(was_depth, depth(module_name, top)))
            params[id(p)] = p
    groups: dict[tuple[bool, int], list[nn.Parameter]] = {(False, top): [], (True, top): []}
    for i, key in keys.items():
        groups.setdefault(key, []).append(params[i])
    return [{"params": group, "weight_decay": 0.0 if exempt else weight_decay, "lr": lr * layer_decay ** (top - level)}
            for (exempt, level), group in sorted(groups.items(), key=lambda kv: (kv[0][1] != top, kv[0]))]


def depth(module_name: str, top: int) -> int:
    """How deep in the encoder a module sits: 0 for the embeddings, i + 1 for layer i, `top` for the rest."""
    parts = module_name.split(".")
    if parts[:2] == ["encoder", "embed"]:
        return 0
    if parts[:2] == ["encoder", "layers"] and len(parts) > 2:
        return int(parts[2]) + 1
    return top


def build_adamw(cfg: AdamWConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups."""
    if len(cfg.betas) != 2:
        raise TformerError(f"optim.betas needs two values, got {list(cfg.betas)}")
    fused = cfg.fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay), lr=cfg.lr,
                             betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, fused=fused or None)


def build_sgd(cfg: SGDConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over the model's parameter groups."""
    return torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay), lr=cfg.lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov)


def warmup_steps_of(cfg: Any, total_steps: int) -> int:
    """Warmup length in optimizer steps, from warmup_steps or warmup_ratio."""
    if cfg.warmup_steps > 0:
        return int(cfg.warmup_steps)
    return int(round(getattr(cfg, "warmup_ratio", 0.0) * total_steps))


def warmup_decay(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """LR multiplier at `step` (0-based count of finished updates) for constant/linear/cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def inverse_sqrt(step: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1, then sqrt(warmup / step)."""
    s = step + 1
    if s < warmup:
        return s / warmup
    return math.sqrt(max(warmup, 1) / s)


def noam(step: int, warmup: int, d_model: int) -> float:
    """LR multiplier of the Noam schedule; multiplied by optim.lr, which acts as its factor."""
    s = step + 1
    return d_model**-0.5 * min(s**-0.5, s * max(warmup, 1) ** -1.5)


def schedule_fn(cfg: Any, total_steps: int) -> Callable[[int], float]:
    """The multiplier function of the configured schedule."""
    name = cfg.name
    if name in ("constant", "linear", "cosine"):
        return partial(warmup_decay, warmup=warmup_steps_of(cfg, total_steps), total=total_steps,
                       kind=name, min_ratio=cfg.min_lr_ratio)
    if name == "inverse_sqrt":
        return partial(inverse_sqrt, warmup=cfg.warmup_steps)
    if name == "noam":
        return partial(noam, warmup=cfg.warmup_steps, d_model=cfg.d_model)
    raise TformerError(f"unknown schedule '{name}'", hint=f"choose one of: {', '.join(SCHEDULES)}")


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that multiplies each group's base lr by the schedule."""
    if cfg.name in ("constant", "linear", "cosine") and not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise TformerError(f"schedule.min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg, total_steps))


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its schema and builder."""

    schema: type
    build: Callable[[Any, nn.Module], torch.optim.Optimizer]
    summary: str


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: its schema."""

    schema: type
    summary: str


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(AdamWConfig, build_adamw, "AdamW with decoupled weight decay"),
    "sgd": OptimizerSpec(SGDConfig, build_sgd, "SGD with (Nesterov) momentum"),
}

SCHEDULES: dict[str, ScheduleSpec] = {
    "constant": ScheduleSpec(WarmupDecayConfig, "linear warmup, then constant"),
    "linear": ScheduleSpec(WarmupDecayConfig, "linear warmup, then linear decay"),
    "cosine": ScheduleSpec(WarmupDecayConfig, "linear warmup, then cosine decay"),
    "inverse_sqrt": ScheduleSpec(InverseSqrtConfig, "linear warmup, then 1/sqrt(step)"),
    "noam": ScheduleSpec(NoamConfig, "Attention Is All You Need: d_model^-0.5 min(s^-0.5, s w^-1.5)"),
}


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters."""
    from transformer_cli.errors import choose

    spec = choose(OPTIMIZERS, cfg.name, "optimizer")
    if cfg.lr <= 0:
        raise TformerError(f"optim.lr must be positive, got {cfg.lr}")
    return spec.build(cfg, model)
