"""The multi-label task: label cells in every form, the label set, pos_weight contexts, head and predictions."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.losses.bce import auto_pos_weight
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.multilabel import (
    MultiLabelConfig,
    MultiLabelTask,
    split_labels,
)

TRAIN = Where(split="train", source="train.csv")
VAL = Where(split="validation", source="data/val.csv")


def multilabel(values: list[Any], fixed: list[str] | None = None, **overrides: Any) -> MultiLabelTask:
    """A multi-label task fitted on `values`."""
    cfg = OmegaConf.merge(OmegaConf.structured(MultiLabelConfig), overrides)
    return MultiLabelTask(cfg, "multilabel", MultiLabelTask.fit_state(values, cfg, fixed, "train.csv"))


@pytest.mark.parametrize("cell,expected", [
    ("a,b", ["a", "b"]),
    (" a , b ,", ["a", "b"]),
    ('["c", "a"]', ["c", "a"]),
    ("[1, 2.0]", ["1", "2"]),
    (["b", "d"], ["b", "d"]),
    (("x",), ["x"]),
    ("", []),
    ("[]", []),
    ([], []),
    (None, []),
    (3, ["3"]),
])
def test_split_labels(cell: Any, expected: list[str]) -> None:
    """Label cells: separated strings, JSON list strings, Python lists, empty cells."""
    assert split_labels(cell, ",") == expected


def test_multilabel_encodes_every_cell_form() -> None:
    """Each cell becomes one (L,) row of 0/1; an empty cell is an all-zero row."""
    cells = ["a,b", '["c", "a"]', ["b", "d"], "", None]
    task = multilabel(cells)
    assert task.labels == ["a", "b", "c", "d"]
    targets = task.encode_targets(cells, TRAIN)
    assert targets.shape == (5, 4)
    assert targets.tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_multilabel_separator_and_numeric_labels() -> None:
    """task.separator splits cells; integer label names sort numerically."""
    task = multilabel(["10|2", "1"], separator="|")
    assert task.labels == ["1", "2", "10"]
    assert task.encode_targets(["2|10"], TRAIN).tolist() == [[0, 1, 1]]


def test_multilabel_unknown_label_names_label_and_row() -> None:
    """A label outside the training set is an error naming it, its row and file."""
    task = multilabel(["a", "b"])
    with pytest.raises(TformerError) as err:
        task.encode_targets(["a", "b,zebra"], VAL)
    msg = str(err.value)
    assert "'zebra'" in msg and "row 2 " in msg and "data/val.csv" in msg


def test_multilabel_fixed_labels_and_bad_threshold() -> None:
    """data.labels fixes the label order; a threshold outside (0, 1) is refused."""
    assert multilabel(["a,b"], fixed=["b", "a"]).labels == ["b", "a"]
    with pytest.raises(TformerError, match="task.threshold"):
        multilabel(["a,b"], threshold=1.0)
    with pytest.raises(TformerError, match="1 distinct"):
        multilabel(["a", "a,a", ""])


def test_multilabel_auto_pos_weight_context() -> None:
    """The loss context carries positives per label and the row count, giving n_neg / n_pos."""
    cells = ["a,b", "a", "a", "", "c"]
    task = multilabel(cells)
    targets = task.encode_targets(cells, TRAIN)
    ctx = task.loss_context(targets)
    assert ctx.num_outputs == 3 and ctx.num_examples == 5
    assert ctx.label_counts.tolist() == [3, 1, 1]
    torch.testing.assert_close(auto_pos_weight(ctx), torch.tensor([2 / 3, 4.0, 4.0]))


def test_multilabel_head_and_predictions(hidden: Callable, head_of: Callable, observe: Callable) -> None:
    """The head gives (B, L) logits; predictions are the labels above the threshold."""
    task = multilabel(["a,b", "c"], threshold=0.7)
    h, mask = hidden()
    assert head_of(task)(h, mask).shape == (3, 3)
    logits = torch.tensor([[0.0, 1.0, 3.0]])  # sigmoid: 0.5, 0.73, 0.95
    assert task.decide(logits).tolist() == [[0, 1, 1]]
    metrics = task.new_metrics()
    observe(task, metrics, logits, torch.tensor([[0.0, 1.0, 1.0]]))
    assert metrics.compute()["subset_accuracy"] == 1.0
