"""Multi-label metrics against hand arithmetic."""

from __future__ import annotations

import pytest
import torch

from transformer_cli.errors import TformerError
from transformer_cli.metrics import MultiLabelMetrics


def test_multilabel_hand_example() -> None:
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    preds = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    m = MultiLabelMetrics(3, ["x", "y", "z"])
    m.update(preds[:1], targets[:1])
    m.update(preds[1:], targets[1:])
    # label x: tp 2, fp 0, fn 0 -> P 1, R 1, F1 1
    # label y: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3
    # label z: tp 0, fp 1, fn 1 -> P 0, R 0, F1 0
    per = m.details()["per_label"]
    assert per["x"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert per["y"]["recall"] == pytest.approx(1 / 2) and per["y"]["f1"] == pytest.approx(2 / 3)
    assert per["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    out = m.compute()
    # micro: tp 3, fp 1, fn 2 -> 2*3 / (2*3 + 1 + 2) = 2/3
    assert out["micro_f1"] == pytest.approx(2 / 3)
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["subset_accuracy"] == pytest.approx(2 / 4)  # rows 1 and 3 exactly right
    assert out["hamming_loss"] == pytest.approx(3 / 12)  # 1 wrong cell in row 0, 2 in row 2
    assert out["count"] == 4


def test_multilabel_rejects_non_binary_values() -> None:
    m = MultiLabelMetrics(2, ["a", "b"])
    with pytest.raises(TformerError, match="0 or 1"):
        m.update(torch.tensor([[0.3, 1.0]]), torch.tensor([[0.0, 1.0]]))
