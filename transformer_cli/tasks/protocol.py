"""The task contract: everything the loop, run, eval, predict, export and plan may ask of a task.

A task is one kind of problem (classify, regress, ...). It encodes data rows into model inputs and targets,
builds the model for its outputs, feeds batches to that model, says what the loss sees, keeps its metrics, writes
prediction records and names what an export returns. Nothing outside tasks/ looks inside a task or asks
it anything not listed here; a task file implements every method (no base class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import Metrics
from transformer_cli.tasks.common import Rows

Targets = Tensor | list[np.ndarray]  # (N, ...) values, or one id array per example (generated text)


@dataclass(frozen=True)
class Readout:
    """What an exported graph returns: named tensors computed from the model's raw outputs."""

    names: tuple[str, ...]
    compute: Callable[[Tensor], tuple[Tensor, ...]]  # raw outputs -> one tensor per name
    card: dict[str, Any] = field(default_factory=dict)  # what the outputs mean, for export.json (labels, ...)


class Task(Protocol):
    """One kind of problem; built by its TaskSpec (tasks/__init__.py) from config, loss kind and state."""

    loss_kind: str  # what the loss consumes: index | binary | multilabel | real (losses/base.py)

    def build_model(self, model_cfg: Any, vocab_size: int) -> nn.Module:
        """The whole model for this task's outputs (an encoder and head, or an encoder-decoder)."""
        ...

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """Data rows -> model inputs (one per row, or several: windows of a long context), their targets (zeros
        when not `labelled`: texts to predict) and the side records its metrics and predictions read. The loop,
        eval, predict and the tokenized cache all encode through here; a value the task cannot take is an error
        naming its row."""
        ...

    def loss_context(self, targets: Targets) -> LossContext:
        """What the loss may need from the training targets (class counts for `auto` weights)."""
        ...

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """Run the model on a batch: the raw outputs (a tensor, or a tuple of them) the loss and metrics read."""
        ...

    def loss_inputs(self, outputs: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(outputs, targets) as the loss of `loss_kind` expects them."""
        ...

    def new_metrics(self, side: Sequence[Any] | None = None) -> Metrics:
        """Fresh streaming metrics for one evaluation of a split whose side records (Encoded.side) are `side`."""
        ...

    def observe(self, metrics: Metrics, model: nn.Module, batch: Batch, outputs: Any) -> None:
        """Add one evaluated batch to the metrics (a generating task also decodes here)."""
        ...

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """One prediction record per example of a batch (labels and probabilities, a value, or text)."""
        ...

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One record per data row, in row order, from predict's records of `encoded`'s inputs (in input order):
        the records themselves when each row is one input."""
        ...

    def readout(self) -> Readout | None:
        """What an export returns, or None when the task cannot be exported as one forward pass."""
        ...

    def final_decoding(self) -> None:
        """From now on evaluate as the final evaluation does (a generating task: every example, full beam)."""
        ...

    def describe(self) -> str:
        """One line for `tformer plan`: what the task learned from the data and how it predicts."""
        ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (task.json) to rebuild this task exactly."""
        ...
