"""Binary cross-entropy on logits, for binary and multi-label targets, with pos_weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext, LossValue
from transformer_cli.losses.cross_entropy import float_list


@dataclass
class BCEConfig:
    """Settings of the ``bce`` loss."""

    name: str = "bce"  # the loss table key; selects this schema
    pos_weight: Any = None  # weight of positive targets: None, "auto" (n_neg / n_pos), a float, or L floats


class BCEWithLogitsLoss(nn.Module):
    """Summed binary cross-entropy on logits, and the number of elements it covers."""

    def __init__(self, pos_weight: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, outputs: Tensor, targets: Tensor) -> LossValue:
        """outputs (N,) or (N, L) logits, targets of the same shape, float in {0, 1}."""
        if outputs.shape != targets.shape:
            raise ValueError(f"bce: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(outputs)  # () or (L,)
        total = F.binary_cross_entropy_with_logits(
            outputs, targets.to(outputs.dtype), pos_weight=pos_weight, reduction="sum"
        )
        return LossValue(total, total.new_tensor(float(outputs.numel())))


def build_bce(cfg: BCEConfig, ctx: LossContext) -> BCEWithLogitsLoss:
    """Check the ``bce`` settings against the task and build the loss."""
    return BCEWithLogitsLoss(resolve_pos_weight(cfg.pos_weight, ctx))


def resolve_pos_weight(value: Any, ctx: LossContext) -> Tensor | None:
    """Turn None, "auto", a float or a list of L floats into a () or (L,) float32 tensor (or None)."""
    field = "loss.pos_weight"
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise TformerError(f'{field} is "{value}"; use null, "auto", a number or a list of numbers')
        return auto_pos_weight(ctx)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        weights = torch.tensor(float_list([value], field)[0])  # ()
    else:
        numbers = float_list(value, field)
        if len(numbers) != ctx.num_outputs:
            raise TformerError(
                f"{field} has {len(numbers)} values but the task has {ctx.num_outputs} labels",
                hint=f'give one weight per label, a single number, or {field}="auto"',
            )
        weights = torch.tensor(numbers)  # (L,)
    if bool((weights < 0).any()):
        raise TformerError(f"{field} must be >= 0; got {weights.tolist()}")
    return weights.to(torch.float32)


def auto_pos_weight(ctx: LossContext) -> Tensor:
    """n_negative / n_positive per label from the training counts; 1.0 where a label lacks either side.

    Binary tasks (one output) give label_counts = [n_neg, n_pos]; multi-label tasks give positives
    per label plus num_examples. A label never (or always) positive in training has no finite
    balancing ratio, so it keeps the neutral weight 1.0.
    """
    field = "loss.pos_weight"
    if ctx.label_counts is None:
        raise TformerError(
            f'{field}="auto" needs the training label counts, but none were given for this task',
            hint=f"give {field} as a number or a list of {ctx.num_outputs} numbers instead",
        )
    counts = ctx.label_counts.detach().to("cpu", torch.float64).flatten()
    if ctx.num_outputs == 1 and counts.numel() == 2:
        negatives, positives = counts[:1], counts[1:]  # (1,), (1,)
    elif counts.numel() == ctx.num_outputs and ctx.num_examples is not None:
        positives = counts  # (L,)
        negatives = ctx.num_examples - counts  # (L,)
    else:
        raise TformerError(f'{field}="auto": label counts {counts.tolist()} do not fit this task')
    if bool((negatives < 0).any()) or bool((positives < 0).any()):
        raise TformerError(f'{field}="auto": label counts {counts.tolist()} are inconsistent')
    usable = (positives > 0) & (negatives > 0)
    ratio = torch.where(usable, negatives / positives.clamp_min(1.0), torch.ones_like(positives))
    return (ratio.squeeze(0) if ctx.num_outputs == 1 else ratio).to(torch.float32)  # () or (L,)
