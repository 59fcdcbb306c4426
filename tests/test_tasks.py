"""Tasks: label sets, target encoding, heads, predictions, loss contexts, and the task table's promises."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from transformer_cli.config import ModelConfig, conf_dir
from transformer_cli.data.batching import Batch
from transformer_cli.errors import TformerError
from transformer_cli.losses import LOSSES
from transformer_cli.losses.bce import auto_pos_weight
from transformer_cli.tasks import TASKS
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.multilabel import (
    MultiLabelConfig,
    MultiLabelTask,
    split_labels,
)
from transformer_cli.tasks.regress import RegressConfig, RegressTask

TRAIN = Where(split="train", source="train.csv")
VAL = Where(split="validation", source="data/val.csv")


def task_cfg(schema: type, **overrides: Any) -> DictConfig:
    """A typed task config with `overrides` applied."""
    return OmegaConf.merge(OmegaConf.structured(schema), overrides)


def classify(values: list[Any], loss_kind: str = "index", fixed: list[str] | None = None) -> ClassifyTask:
    """A classification task fitted on `values`."""
    cfg = task_cfg(ClassifyConfig)
    return ClassifyTask(cfg, loss_kind, ClassifyTask.fit_state(values, cfg, fixed, "train.csv"))


def regress(values: list[Any], standardize: bool = True) -> RegressTask:
    """A regression task fitted on `values`."""
    cfg = task_cfg(RegressConfig, standardize=standardize)
    return RegressTask(cfg, "real", RegressTask.fit_state(values, cfg, None, "train.csv"))


def multilabel(values: list[Any], fixed: list[str] | None = None, **overrides: Any) -> MultiLabelTask:
    """A multi-label task fitted on `values`."""
    cfg = task_cfg(MultiLabelConfig, **overrides)
    return MultiLabelTask(cfg, "multilabel", MultiLabelTask.fit_state(values, cfg, fixed, "train.csv"))


def hidden(batch: int = 3, length: int = 5, d_model: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, T, D) hidden states and a (B, T) mask with some padding."""
    h = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    return h, mask


def head_of(task: Any, d_model: int = 16) -> torch.nn.Module:
    """The pooling head the task puts on a d_model-wide encoder."""
    return task.build_model(ModelConfig(d_model=d_model, n_layers=1, n_heads=2, d_ff=32), 50).head


def observe(task: Any, metrics: Any, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Feed one evaluated batch (its outputs and targets) to the task's metrics, as the loop does."""
    n = len(targets)
    batch = Batch(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.bool), targets, torch.arange(n))
    task.observe(metrics, None, batch, outputs)


# ----------------------------------------------------------------------------- classify


def test_labels_sorted_alphabetically() -> None:
    """String labels are sorted; each becomes the index of its position."""
    task = classify(["pos", "neg", "neutral", "pos"])
    assert task.labels == ["neg", "neutral", "pos"]
    assert task.encode_targets(["pos", "neg", "neutral"], TRAIN).tolist() == [2, 0, 1]


def test_numeric_labels_sorted_numerically() -> None:
    """Integer labels sort as numbers, so '2' comes before '10' and '-1' first."""
    assert classify(["10", "2", "1", "2"]).labels == ["1", "2", "10"]
    assert classify([10, 2, -1]).labels == ["-1", "2", "10"]


def test_int_float_and_string_labels_are_one_class() -> None:
    """1, 1.0, '1' and ' 1 ' name the same class; so do True and 1."""
    task = classify([1, 1.0, "1", 0, 0.0, " 0 "])
    assert task.labels == ["0", "1"]
    assert task.encode_targets([1, 1.0, "1", " 1", True, 0.0, "0", False], TRAIN).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_fixed_label_order_is_respected() -> None:
    """data.labels fixes the class indices, whatever order the data suggests."""
    task = classify(["neg", "pos"], fixed=["pos", "neg"])
    assert task.labels == ["pos", "neg"]
    assert task.encode_targets(["neg", "pos"], TRAIN).tolist() == [1, 0]
    with pytest.raises(TformerError, match="'meh'"):
        task.encode_targets(["pos", "meh"], TRAIN)


@pytest.mark.parametrize("fixed,match", [(["a", "a"], "repeats"), (["a"], "1 distinct")])
def test_bad_fixed_label_sets(fixed: list[str], match: str) -> None:
    """data.labels with a repeat or a single class is refused."""
    with pytest.raises(TformerError, match=match):
        classify(["a", "b"], fixed=fixed)


def test_single_training_label_is_refused() -> None:
    """A classifier needs two classes; the message names the file."""
    with pytest.raises(TformerError, match="train.csv"):
        classify(["a", "a", None])


def test_unknown_validation_label_names_label_split_row_and_file() -> None:
    """A validation label never seen in training is named with its split, row and file."""
    task = classify(["neg", "pos"])
    where = Where(split="validation", source="data/val.csv", rows=[4, 9, 17])
    with pytest.raises(TformerError) as err:
        task.encode_targets(["pos", "neg", "neutral"], where)
    msg = str(err.value)
    assert "'neutral'" in msg and "row 17 " in msg and "validation" in msg and "data/val.csv" in msg
    assert "neg, pos" in msg


def test_missing_label_names_the_row() -> None:
    """A missing label (an empty cell) is an error at its row, not a class."""
    task = classify(["neg", "pos", None])
    assert task.labels == ["neg", "pos"]
    with pytest.raises(TformerError, match="row 2 "):
        task.encode_targets(["neg", None], VAL)


def test_binary_loss_needs_two_classes() -> None:
    """A binary loss on three classes is refused, pointing at the losses that fit."""
    with pytest.raises(TformerError, match="exactly 2 classes") as err:
        classify(["a", "b", "c"], loss_kind="binary")
    assert "loss=ce" in str(err.value)


def test_binary_head_outputs_and_probabilities() -> None:
    """With a binary loss the head gives (B,) logits and probabilities are (B, 2) rows summing to 1."""
    task = classify(["neg", "pos"], loss_kind="binary")
    assert task.num_outputs == 1
    h, mask = hidden()
    out = head_of(task)(h, mask)
    assert out.shape == (3,)
    probs = task.probabilities(out)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    logits = torch.tensor([-2.0, 0.5, 3.0])
    assert task.decide(logits).tolist() == [0, 1, 1]
    assert task.probabilities(logits).argmax(-1).tolist() == [0, 1, 1]
    targets = task.encode_targets(["neg", "pos", "pos"], TRAIN)
    outputs, loss_targets = task.loss_inputs(logits, targets)
    assert loss_targets.dtype == torch.float32 and loss_targets.tolist() == [0.0, 1.0, 1.0]
    ctx = task.loss_context(targets)
    assert ctx.num_outputs == 1 and ctx.label_counts.tolist() == [1, 2] and ctx.num_examples == 3
    assert float(auto_pos_weight(ctx)) == pytest.approx(0.5)


def test_index_head_outputs_and_probabilities() -> None:
    """With an index loss the head gives (B, C) logits and softmax probabilities."""
    task = classify(["a", "b", "c"])
    h, mask = hidden()
    out = head_of(task)(h, mask)
    assert out.shape == (3, 3)
    probs = task.probabilities(out)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert task.decide(out).tolist() == out.argmax(-1).tolist()
    targets = task.encode_targets(["c", "a", "c", "c"], TRAIN)
    assert targets.dtype == torch.int64
    ctx = task.loss_context(targets)
    assert ctx.num_outputs == 3 and ctx.label_counts.tolist() == [1, 0, 3] and ctx.num_examples == 4


def test_classify_metrics_and_state() -> None:
    """Metrics count class indices; the state rebuilds the same task."""
    task = classify(["a", "b", "c"])
    metrics = task.new_metrics()
    observe(task, metrics, torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 2, 1]))
    assert metrics.compute()["accuracy"] == pytest.approx(0.75)
    again = ClassifyTask(task.cfg, "index", json.loads(json.dumps(task.state())))
    assert again.labels == task.labels


# ----------------------------------------------------------------------------- regress


def test_standardisation_round_trip() -> None:
    """Targets are trained standardised, and predict() maps them back to the original scale."""
    ys = [10.0, 20.0, 30.0, 45.5, -3.25]
    task = regress(ys)
    t = torch.tensor(ys, dtype=torch.float64)
    assert task.mean == pytest.approx(float(t.mean())) and task.std == pytest.approx(float(t.std()))
    encoded = task.encode_targets(ys, TRAIN)
    assert encoded.dtype == torch.float32
    assert float(encoded.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(encoded.std()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(task.original_scale(encoded), t, rtol=0, atol=1e-5)


def test_string_targets_and_no_standardisation() -> None:
    """Numeric strings are numbers; with standardize off the targets pass through unchanged."""
    task = regress(["1.5", " 2 ", 3], standardize=False)
    assert (task.mean, task.std) == (0.0, 1.0)
    assert task.encode_targets(["1.5", " 2 ", 3], TRAIN).tolist() == [1.5, 2.0, 3.0]


def test_constant_targets_keep_unit_scale() -> None:
    """A constant target has std 0: the scale stays 1 rather than dividing by zero."""
    task = regress([4.0, 4.0, 4.0])
    assert task.std == 1.0 and task.encode_targets([4.0, 5.0], TRAIN).tolist() == [0.0, 1.0]


def test_regression_metrics_on_the_original_scale() -> None:
    """Metrics compare predictions and targets in the data's units, not standardised ones."""
    ys = [0.0, 100.0, 200.0, 300.0]
    task = regress(ys)
    assert task.std > 50  # so a standardised-scale error would be far smaller than 2
    preds = [y + 2.0 for y in ys]
    metrics = task.new_metrics()
    observe(task, metrics, task.encode_targets(preds, TRAIN), task.encode_targets(ys, TRAIN))
    scalars = metrics.compute()
    assert scalars["mae"] == pytest.approx(2.0, rel=1e-4)
    assert scalars["rmse"] == pytest.approx(2.0, rel=1e-4)
    assert scalars["mse"] == pytest.approx(4.0, rel=1e-3)


@pytest.mark.parametrize("bad", ["abc", float("nan"), None, "", "inf", float("-inf"), True, [1.0]])
def test_bad_regression_target_names_the_row(bad: Any) -> None:
    """A missing, non-numeric or non-finite target is an error at its row and file."""
    task = regress([1.0, 2.0, 3.0])
    where = Where(split="validation", source="data/val.csv", rows=[2, 5, 8])
    with pytest.raises(TformerError) as err:
        task.encode_targets([1.0, 2.0, bad], where)
    msg = str(err.value)
    assert "row 8 " in msg and "data/val.csv" in msg and "validation" in msg


def test_fit_state_skips_bad_targets() -> None:
    """fit_state uses the finite numbers only (encode_targets reports the rest)."""
    task = regress([1.0, "x", None, float("nan"), 3.0])
    assert task.mean == pytest.approx(2.0)


# ----------------------------------------------------------------------------- multilabel


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


def test_multilabel_head_and_predictions() -> None:
    """The head gives (B, L) logits; predictions are the labels above the threshold."""
    task = multilabel(["a,b", "c"], threshold=0.7)
    h, mask = hidden()
    assert head_of(task)(h, mask).shape == (3, 3)
    logits = torch.tensor([[0.0, 1.0, 3.0]])  # sigmoid: 0.5, 0.73, 0.95
    assert task.decide(logits).tolist() == [[0, 1, 1]]
    metrics = task.new_metrics()
    observe(task, metrics, logits, torch.tensor([[0.0, 1.0, 1.0]]))
    assert metrics.compute()["subset_accuracy"] == 1.0


# ----------------------------------------------------------------------------- the task table


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_table_promises(name: str) -> None:
    """The natural loss exists and fits; metric names are known; the default monitor is reported."""
    spec = TASKS[name]
    assert spec.natural_loss in LOSSES
    assert set(LOSSES[spec.natural_loss].targets) & set(spec.target_kinds)
    assert all(kind in {k for s in LOSSES.values() for k in s.targets} for kind in spec.target_kinds)
    assert set(spec.metrics.values()) <= {"max", "min"} and spec.metrics["loss"] == "min"
    assert spec.default_monitor in spec.metric_names
    assert spec.default_monitor != "loss"  # the task's own metric, not the loss (which varies with loss=)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_yaml_brings_the_natural_loss(name: str) -> None:
    """conf/task/<name>.yaml exists, names the task and defaults to its natural loss."""
    doc = yaml.safe_load((conf_dir() / "task" / f"{name}.yaml").read_text())
    assert doc["name"] == name
    defaults = {k: v for d in doc["defaults"] if isinstance(d, dict) for k, v in d.items()}
    assert defaults["/loss@_global_.loss"] == TASKS[name].natural_loss


SAMPLES: dict[str, list[Any]] = {"classify": ["a", "b", "a"], "regress": [1.0, 2.0, 4.0],
                                 "multilabel": ["a,b", "b", ""]}


@pytest.mark.parametrize("name", sorted(set(TASKS) - {"seq2seq"}))  # seq2seq decodes: tests/test_seq2seq.py
def test_task_metrics_report_every_listed_name(name: str) -> None:
    """Each metric a task lists (besides the loss, which the loop adds) comes out of its metrics object."""
    spec = TASKS[name]
    cfg = OmegaConf.structured(spec.schema)
    state = spec.fit_state(SAMPLES[name], cfg, None, "train.csv")
    loss_kind = next(k for k in LOSSES[spec.natural_loss].targets if k in spec.target_kinds)
    task = spec.build(cfg, loss_kind, json.loads(json.dumps(state)))  # the state survives task.json
    targets = task.encode_targets(SAMPLES[name], TRAIN)
    outputs = head_of(task).eval()(*hidden(batch=len(targets)))
    metrics = task.new_metrics()
    observe(task, metrics, outputs, targets)
    scalars = metrics.compute()
    missing = [m for m in spec.metric_names if m != "loss" and m not in scalars]
    assert not missing
    unlisted = set(scalars) - {"count", "decoded"} - set(spec.metrics)  # every reported scalar has a direction
    assert not unlisted
    assert all(isinstance(scalars[m], float) or math.isnan(scalars[m]) for m in spec.metric_names if m != "loss")
