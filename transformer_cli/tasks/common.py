"""Pieces the task files share: label sets, error locations, the task protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from torch import Tensor, nn

from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext


@dataclass(frozen=True)
class Where:
    """Where a column of values came from, so errors can name the file and row."""

    split: str
    source: str  # file path or hub dataset id
    rows: Sequence[int] | None = None  # 1-based data row of each value (header not counted)

    def row(self, i: int) -> int:
        """The 1-based row number of value i."""
        return self.rows[i] if self.rows is not None else i + 1

    def at(self, i: int) -> str:
        """A human description of value i's location."""
        return f"row {self.row(i)} of the {self.split} split ({self.source})"


class Task(Protocol):
    """What run.py and loop.py need from a task."""

    loss_kind: str

    def head(self, d_model: int) -> nn.Module: ...
    def encode_targets(self, values: Sequence[Any], where: Where) -> Tensor: ...
    def loss_context(self, targets: Tensor) -> LossContext: ...
    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]: ...
    def new_metrics(self) -> Any: ...
    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Tensor) -> None: ...
    def state(self) -> dict[str, Any]: ...


def is_missing(value: Any) -> bool:
    """An empty cell: None, or a float NaN as Parquet and JSON readers produce."""
    return value is None or (isinstance(value, float) and value != value)


def label_key(value: Any) -> str:
    """A label as the string we store: 1, 1.0 and '1' are the same class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    return str(value).strip()


def sorted_labels(keys: set[str]) -> list[str]:
    """Label names in class-index order: numeric order when all are integers, else alphabetical."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def check_label_set(labels: list[str], source: str) -> list[str]:
    """A label set must have at least two distinct names."""
    if len(labels) < 2:
        raise TformerError(
            f"the training data has {len(labels)} distinct label(s) {labels} ({source})",
            hint="a classifier needs at least two classes: check data.label_column",
        )
    if len(set(labels)) != len(labels):
        raise TformerError(f"data.labels repeats a name: {labels}")
    return labels


def unknown_label(value: Any, where: Where, i: int, labels: list[str]) -> TformerError:
    """The error for a label outside the known set."""
    shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
    return TformerError(
        f"label {value!r} at {where.at(i)} is not one of the {len(labels)} known labels: {shown}",
        hint="fix that row, or list every label in data.labels=[...]",
    )
