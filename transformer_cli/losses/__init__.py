"""The loss table: every loss a config may name, and the one function that builds it."""

from __future__ import annotations

from typing import Any

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import Loss, LossContext, LossSpec, LossValue
from transformer_cli.losses.bce import BCEConfig, build_bce
from transformer_cli.losses.cross_entropy import CrossEntropyConfig, build_cross_entropy
from transformer_cli.losses.focal import FocalConfig, build_focal
from transformer_cli.losses.regression import (
    HuberConfig,
    L1Config,
    LogCoshConfig,
    MSEConfig,
    SmoothL1Config,
    build_huber,
    build_l1,
    build_log_cosh,
    build_mse,
    build_smooth_l1,
)

LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(
        CrossEntropyConfig, build_cross_entropy, ("index", "span"),
        "cross-entropy over classes (or over positions: qa spans); label smoothing, class weights, ignore_index",
    ),
    "focal": LossSpec(
        FocalConfig, build_focal, ("index",),
        "focal loss over classes, down-weights easy examples; gamma, alpha, ignore_index",
    ),
    "bce": LossSpec(
        BCEConfig, build_bce, ("binary", "multilabel"),
        "binary cross-entropy on logits, per label; pos_weight",
    ),
    "mse": LossSpec(MSEConfig, build_mse, ("real",), "mean squared error"),
    "l1": LossSpec(L1Config, build_l1, ("real",), "mean absolute error"),
    "huber": LossSpec(HuberConfig, build_huber, ("real",), "huber: squared within delta, linear beyond"),
    "smooth_l1": LossSpec(
        SmoothL1Config, build_smooth_l1, ("real",), "smooth L1: huber / beta, slope 1 beyond beta"
    ),
    "log_cosh": LossSpec(
        LogCoshConfig, build_log_cosh, ("real",),
        "log cosh of the residual: squared when small, linear when large",
    ),
}


def build_loss(cfg: Any, ctx: LossContext) -> Loss:
    """Build the loss named by ``cfg.name`` from its settings and what the data tells us."""
    name = getattr(cfg, "name", None)
    spec = LOSSES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise TformerError(
            f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}",
            hint="`tformer ls` lists each with what it does",
        )
    return spec.build(cfg, ctx)


__all__ = ["LOSSES", "Loss", "LossContext", "LossSpec", "LossValue", "build_loss"]
