"""Regression: one real value per example, learned on standardised targets, MSE/RMSE/R2/correlations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import RegressionMetrics
from transformer_cli.model import SequenceModel
from transformer_cli.tasks.common import Rows, Where, encode_rows, one_per_row, sequence_forward, sequence_model
from transformer_cli.tasks.protocol import Readout

# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "mse": "min", "rmse": "min", "mae": "min", "r2": "max", "pearson": "max", "spearman": "max"}
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"mean": float, "std": float}


@dataclass
class RegressConfig:
    """Settings of the regression task."""

    name: str = "regress"
    pooling: str = "mean"  # cls (first token) | mean (over real tokens)
    head_dropout: float = 0.1
    standardize: bool = True  # train on (y - mean) / std of the training targets; report on y's scale


class RegressTask:
    """Parses numeric targets, standardises them for the loss, reports metrics on the original scale."""

    loss_kind = "real"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.mean = float(state["mean"])
        self.std = float(state["std"])

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """Training target mean and std (0 and 1 when standardisation is off)."""
        standardize = bool(cfg.standardize)
        ys = [_number(v) for v in values]
        ys = [y for y in ys if y is not None and math.isfinite(y)]
        if not standardize or len(ys) < 2:
            return {"mean": 0.0, "std": 1.0}
        t = torch.tensor(ys, dtype=torch.float64)
        std = float(t.std())
        return {"mean": float(t.mean()), "std": std if std > 0 else 1.0}

    def build_model(self, model_cfg: Any, vocab_size: int) -> SequenceModel:
        """The encoder and a one-output head."""
        return sequence_model(model_cfg, vocab_size, 1, self.cfg, squeeze=True)

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """One input per row and its target (see encode_targets)."""
        return encode_rows(rows, tokenizer, labelled, self.encode_targets)

    def encode_targets(self, values: Sequence[Any], where: Where) -> Tensor:
        """Values -> (N,) float32 standardised targets; a missing, non-numeric or non-finite value is an error."""
        out = torch.empty(len(values), dtype=torch.float64)
        for i, v in enumerate(values):
            y = _number(v)
            if y is None or not math.isfinite(y):
                raise TformerError(
                    f"target {v!r} at {where.at(i)} is not a finite number",
                    hint="regression targets must be numbers: fix or drop that row, or check data.label_column",
                )
            out[i] = y
        return ((out - self.mean) / self.std).float()

    def loss_context(self, targets: Tensor) -> LossContext:
        """Regression losses need only the output width."""
        return LossContext(num_outputs=1, num_examples=len(targets))

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """(B,) standardised predictions."""
        return sequence_forward(model, batch)

    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) predictions and (B,) targets, both standardised, in float32."""
        return outputs.float(), targets.float()

    def original_scale(self, values: Tensor) -> Tensor:
        """Standardised values -> the targets' own scale, in float64."""
        return values.double() * self.std + self.mean

    def new_metrics(self, side: Sequence[Any] | None = None) -> RegressionMetrics:
        """Fresh streaming metrics."""
        return RegressionMetrics()

    def observe(self, metrics: RegressionMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Add one batch, predictions and targets both on the original scale."""
        metrics.update(self.original_scale(outputs).cpu(), self.original_scale(batch.targets).cpu())

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """One record per example: the value on the original target scale (top_k does not apply)."""
        return self.records(self.forward(model, batch), top_k)

    def records(self, outputs: Tensor, top_k: int) -> list[dict[str, Any]]:
        """Prediction records from raw outputs (see predict)."""
        return [{"value": value} for value in self.original_scale(outputs).cpu().tolist()]

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One input per row: the records as they are."""
        return one_per_row(records, encoded)

    def readout(self) -> Readout:
        """Exported output: the prediction on the original target scale (the un-scaling is in the graph)."""
        return Readout(("prediction",), lambda out: (out.float() * self.std + self.mean,),
                       {"target_scale": {"mean": self.mean, "std": self.std, "applied": "inside the model"}})

    def final_decoding(self) -> None:
        """Nothing to switch: every evaluation scores every example."""

    def describe(self) -> str:
        """Target scaling and pooling, for `tformer plan`."""
        scale = (f"targets standardised (mean {self.mean:.4g}, std {self.std:.4g}), metrics on their own scale"
                 if self.cfg.standardize else "targets as they are")
        return f"one value per example; {scale}; {self.cfg.pooling} pooling"

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"mean": self.mean, "std": self.std}


def _number(value: Any) -> float | None:
    """A float from a cell, or None when it is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
