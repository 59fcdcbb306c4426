"""Multi-class focal loss (Lin et al., 2017): cross-entropy that down-weights easy examples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext, LossValue
from transformer_cli.losses.cross_entropy import counted_weight, resolve_class_weights


@dataclass
class FocalConfig:
    """Settings of the ``focal`` loss."""

    name: str = "focal"  # the loss table key; selects this schema
    gamma: float = 2.0  # focusing exponent >= 0; 0 gives plain cross-entropy
    alpha: Any = None  # per-class weights: None, "auto" (balanced, as ce) or a list of C floats
    ignore_index: int = -100  # targets equal to this value count for nothing


class FocalLoss(nn.Module):
    """FL_i = -alpha[y_i] * (1 - p_i)^gamma * log p_i, with p_i the softmax probability of y_i.

    Normalisation follows cross-entropy's weighted mean: ``weight`` is the number of non-ignored
    items, or the sum of alpha[y_i] over them when alpha is set. So gamma=0 equals ``ce`` exactly,
    with ``alpha`` playing ``class_weights``.
    """

    def __init__(self, gamma: float, alpha: Tensor | None, ignore_index: int) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, outputs: Tensor, targets: Tensor) -> LossValue:
        """outputs (N, C) logits, targets (N,) class indices; extra trailing dims (N, C, d...) also work."""
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        keep = targets != self.ignore_index  # (N,)
        safe = torch.where(keep, targets, torch.zeros_like(targets))  # ignored targets may be out of range
        log_p = F.log_softmax(outputs, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (N,)
        # 1 - p as -expm1(log p) keeps precision when p is near 1. The clamp keeps gradients finite:
        # d/dq q^gamma = gamma * q^(gamma-1) is infinite at q=0 for gamma < 1, and inf * 0 = NaN. It only
        # acts where q < tiny, and there -log p ~= q is below tiny too, so the loss value is unchanged.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)  # (N,)
        per_item = -one_minus_p.pow(self.gamma) * log_p  # (N,)
        alpha = None if self.alpha is None else self.alpha.to(outputs)  # (C,)
        if alpha is not None:
            per_item = per_item * alpha[safe]
        total = torch.where(keep, per_item, per_item.new_zeros(())).sum()
        return LossValue(total, counted_weight(targets, self.ignore_index, alpha, outputs.dtype))


def build_focal(cfg: FocalConfig, ctx: LossContext) -> FocalLoss:
    """Check the ``focal`` settings against the task and build the loss."""
    gamma = float(cfg.gamma)
    if not (math.isfinite(gamma) and gamma >= 0.0):
        raise TformerError(f"loss.gamma is {gamma} but must be >= 0", hint="the paper's default is 2.0")
    alpha = resolve_class_weights(cfg.alpha, ctx, "loss.alpha")
    return FocalLoss(gamma, alpha, int(cfg.ignore_index))
