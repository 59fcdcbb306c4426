"""Regression losses on real targets: mse, l1, huber, smooth_l1 (torch's own) and log_cosh."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext, LossValue


@dataclass
class MSEConfig:
    """Settings of the ``mse`` loss."""

    name: str = "mse"  # the loss table key; selects this schema


@dataclass
class L1Config:
    """Settings of the ``l1`` loss."""

    name: str = "l1"  # the loss table key; selects this schema


@dataclass
class HuberConfig:
    """Settings of the ``huber`` loss."""

    name: str = "huber"  # the loss table key; selects this schema
    delta: float = 1.0  # > 0: residual size where the loss turns from quadratic to linear


@dataclass
class SmoothL1Config:
    """Settings of the ``smooth_l1`` loss."""

    name: str = "smooth_l1"  # the loss table key; selects this schema
    beta: float = 1.0  # > 0: residual size where the loss turns from quadratic to linear (huber / beta)


@dataclass
class LogCoshConfig:
    """Settings of the ``log_cosh`` loss."""

    name: str = "log_cosh"  # the loss table key; selects this schema


SumFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> () summed loss


class ElementwiseLoss(nn.Module):
    """An element-wise regression loss, summed, and the number of elements it covers."""

    def __init__(self, summed: SumFn) -> None:
        super().__init__()
        self.summed = summed

    def forward(self, outputs: Tensor, targets: Tensor) -> LossValue:
        """outputs (N,) or (N, K) real values, targets of the same shape."""
        if outputs.shape != targets.shape:
            # torch would broadcast (N, 1) against (N,) into (N, N) and quietly learn the wrong thing.
            raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        total = self.summed(outputs, targets.to(outputs.dtype))
        return LossValue(total, total.new_tensor(float(outputs.numel())))


def log_cosh_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum of log cosh(residual), as |x| + log1p(exp(-2|x|)) - log 2 so cosh never overflows."""
    x = (outputs - targets).abs()
    return (x + torch.log1p(torch.exp(-2.0 * x)) - math.log(2.0)).sum()


def build_mse(cfg: MSEConfig, ctx: LossContext) -> ElementwiseLoss:
    """Mean squared error."""
    return ElementwiseLoss(partial(F.mse_loss, reduction="sum"))


def build_l1(cfg: L1Config, ctx: LossContext) -> ElementwiseLoss:
    """Mean absolute error."""
    return ElementwiseLoss(partial(F.l1_loss, reduction="sum"))


def build_huber(cfg: HuberConfig, ctx: LossContext) -> ElementwiseLoss:
    """Huber loss: quadratic within delta, linear (slope delta) beyond."""
    return ElementwiseLoss(partial(F.huber_loss, reduction="sum", delta=positive(cfg.delta, "loss.delta")))


def build_smooth_l1(cfg: SmoothL1Config, ctx: LossContext) -> ElementwiseLoss:
    """Smooth L1: huber divided by beta, so slope 1 beyond beta."""
    return ElementwiseLoss(partial(F.smooth_l1_loss, reduction="sum", beta=positive(cfg.beta, "loss.beta")))


def build_log_cosh(cfg: LogCoshConfig, ctx: LossContext) -> ElementwiseLoss:
    """Log-cosh: about x^2 / 2 for small residuals, |x| - log 2 for large ones."""
    return ElementwiseLoss(log_cosh_sum)


def positive(value: float, field: str) -> float:
    """A finite number > 0, or a TformerError naming the field."""
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise TformerError(f"{field} is {number} but must be a number > 0", hint="the default is 1.0")
    return number
