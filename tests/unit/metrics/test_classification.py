"""Classification metrics against hand arithmetic, the binary MCC formula and Gorodkin's triple sum."""

from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np
import pytest
import torch

from transformer_cli.errors import TformerError
from transformer_cli.metrics import ClassificationMetrics


def test_classification_hand_example_with_unpredicted_class_and_ignored_target() -> None:
    # rows = true, cols = predicted:
    #   true 0: [2, 1, 0]
    #   true 1: [0, 2, 0]
    #   true 2: [1, 1, 0]   <- class 2 is never predicted
    # The last item has target -100 (ignored); its prediction 2 must not count.
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, -100])
    preds = torch.tensor([0, 0, 1, 1, 1, 0, 1, 2])
    m = ClassificationMetrics(3, ["a", "b", "c"])
    m.update(preds, targets)

    d = m.details()
    assert d["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 1, 0]]
    # class a: P = 2/3, R = 2/3, F1 = 2/3
    # class b: P = 2/4, R = 2/2, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3
    # class c: no predictions and no hits -> P = R = F1 = 0 (zero_division=0)
    expected = {
        "a": (2 / 3, 2 / 3, 2 / 3, 3),
        "b": (1 / 2, 1.0, 2 / 3, 2),
        "c": (0.0, 0.0, 0.0, 2),
    }
    for name, (p, r, f1, support) in expected.items():
        got = d["per_class"][name]
        assert got["precision"] == pytest.approx(p)
        assert got["recall"] == pytest.approx(r)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == support

    # s = 7 counted, c = 4 correct; predicted p = [3, 4, 0], true t = [3, 2, 2]
    # c*s - p.t = 28 - (9 + 8 + 0) = 11; s^2 - p.p = 49 - 25 = 24; s^2 - t.t = 49 - 17 = 32
    out = m.compute()
    assert out["count"] == 7
    assert out["accuracy"] == pytest.approx(4 / 7)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert out["mcc"] == pytest.approx(11 / math.sqrt(24 * 32))
    json.dumps(d)  # details are JSON-serialisable as they are


def test_two_class_mcc_equals_binary_formula() -> None:
    # TP = 3, FN = 2, FP = 1, TN = 4 (class 1 is "positive")
    targets = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    preds = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    tp, fn, fp, tn = 3, 2, 1, 4
    binary = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert binary == pytest.approx(10 / math.sqrt(600))
    m = ClassificationMetrics(2, ["neg", "pos"])
    m.update(preds, targets)
    assert m.compute()["mcc"] == pytest.approx(binary)


def _gorodkin_triple_sum(cm: np.ndarray) -> float:
    """R_K in Gorodkin's original triple-sum form (independent of the p/t-count form used in code)."""
    k = cm.shape[0]
    num = sum(
        cm[a, a] * cm[b, c] - cm[a, b] * cm[c, a]
        for a in range(k)
        for b in range(k)
        for c in range(k)
    )
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    den_t = sum(rows[a] * (rows.sum() - rows[a]) for a in range(k))
    den_p = sum(cols[a] * (cols.sum() - cols[a]) for a in range(k))
    return float(num / math.sqrt(den_t * den_p))


@pytest.mark.parametrize("num_classes", [3, 4])
def test_multiclass_mcc_matches_gorodkin_triple_sum(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    targets = rng.integers(0, num_classes, size=300)
    preds = np.where(rng.random(300) < 0.6, targets, rng.integers(0, num_classes, size=300))
    m = ClassificationMetrics(num_classes, [f"c{i}" for i in range(num_classes)])
    m.update(torch.from_numpy(preds), torch.from_numpy(targets))
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets, preds), 1)
    assert m.details()["confusion_matrix"] == cm.tolist()
    assert m.compute()["mcc"] == pytest.approx(_gorodkin_triple_sum(cm), rel=1e-12)


def test_mcc_is_zero_when_every_prediction_is_one_class() -> None:
    m = ClassificationMetrics(3, ["a", "b", "c"])
    m.update(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 1, 2, 1]))
    out = m.compute()
    assert out["mcc"] == 0.0
    assert out["accuracy"] == pytest.approx(0.5)


def test_classification_streaming_equals_one_shot(random_splits: Callable) -> None:
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(-1, 5, size=1000))  # -1 = ignored
    preds = torch.from_numpy(rng.integers(0, 5, size=1000))
    names = list("vwxyz")
    whole, streamed = ClassificationMetrics(5, names), ClassificationMetrics(5, names)
    whole.update(preds, targets)
    for part in random_splits(1000, rng):
        streamed.update(preds[part], targets[part])
    assert streamed.compute() == whole.compute()
    assert streamed.details() == whole.details()
    assert whole.compute()["count"] == int((targets >= 0).sum())


def test_classification_accepts_token_shapes_and_resets() -> None:
    m = ClassificationMetrics(2, ["o", "x"])
    m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [-100, 0]]))  # (B, T)
    assert m.details()["confusion_matrix"] == [[1, 1], [0, 1]]
    m.reset()
    assert m.compute()["count"] == 0
    assert math.isnan(m.compute()["accuracy"])  # nothing measured is not a score of 0 or 1


def test_classification_rejects_out_of_range_target() -> None:
    m = ClassificationMetrics(3, ["a", "b", "c"])
    with pytest.raises(TformerError, match="target class 3"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        ClassificationMetrics(3, ["a", "b"])
