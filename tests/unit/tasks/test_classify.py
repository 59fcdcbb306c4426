"""The classification task: label sets, target encoding, its head, probabilities, loss contexts and metrics."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.losses.bce import auto_pos_weight
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask
from transformer_cli.tasks.common import Where

TRAIN = Where(split="train", source="train.csv")
VAL = Where(split="validation", source="data/val.csv")


def classify(values: list[Any], loss_kind: str = "index", fixed: list[str] | None = None) -> ClassifyTask:
    """A classification task fitted on `values`."""
    cfg = OmegaConf.structured(ClassifyConfig)
    return ClassifyTask(cfg, loss_kind, ClassifyTask.fit_state(values, cfg, fixed, "train.csv"))


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


@pytest.mark.parametrize(("values", "odd"), [
    ([0, 1] * 200 + [-3], "'-3'"),  # a typo in a 0/1 column: a one-example class outside the range
    (["pos", "neg"] * 200 + ["Pos"], "'Pos'"),  # one example
    ([1, 2, 3] * 100 + [30, 30], "'30'"),  # out of the contiguous range 1..3
])
def test_rare_or_out_of_range_training_labels_warn(values: list[Any], odd: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A label with a single example, or an integer outside the contiguous range of the others, is warned of."""
    with caplog.at_level("WARNING"):
        classify(values)
    assert odd in caplog.text and "data.labels" in caplog.text


def test_balanced_labels_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """Contiguous integer labels, or names with several examples each, give no warning."""
    with caplog.at_level("WARNING"):
        classify([0, 1, 2] * 50)
        classify(["a", "b"] * 3 + ["c", "c"])
    assert caplog.text == ""


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


def test_binary_head_outputs_and_probabilities(hidden: Callable, head_of: Callable) -> None:
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


def test_index_head_outputs_and_probabilities(hidden: Callable, head_of: Callable) -> None:
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


def test_classify_metrics_and_state(observe: Callable) -> None:
    """Metrics count class indices; the state rebuilds the same task."""
    task = classify(["a", "b", "c"])
    metrics = task.new_metrics()
    observe(task, metrics, torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 2, 1]))
    assert metrics.compute()["accuracy"] == pytest.approx(0.75)
    again = ClassifyTask(task.cfg, "index", json.loads(json.dumps(task.state())))
    assert again.labels == task.labels
