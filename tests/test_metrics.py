"""Streaming metrics against hand arithmetic and numpy / scipy references, and the JSONL writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from transformer_cli.errors import TformerError
from transformer_cli.metrics import (
    ClassificationMetrics,
    MultiLabelMetrics,
    RegressionMetrics,
    average_ranks,
)
from transformer_cli.writers import JsonlWriter, read_jsonl


def _random_splits(n: int, rng: np.random.Generator) -> list[slice]:
    """Cut range(n) into consecutive random-sized batches, including empty and size-1 ones."""
    cuts = np.sort(rng.integers(0, n + 1, size=12))
    bounds = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _assert_same_metrics(a: dict[str, float], b: dict[str, float], rel: float = 1e-12) -> None:
    """Same keys, values equal to within rel (counts exactly)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12), key


# ----------------------------------------------------------------------------- classification


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


def test_classification_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(-1, 5, size=1000))  # -1 = ignored
    preds = torch.from_numpy(rng.integers(0, 5, size=1000))
    names = list("vwxyz")
    whole, streamed = ClassificationMetrics(5, names), ClassificationMetrics(5, names)
    whole.update(preds, targets)
    for part in _random_splits(1000, rng):
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


# ----------------------------------------------------------------------------- regression


def _numpy_regression(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Two-pass float64 reference values."""
    err = p - t
    sst = ((t - t.mean()) ** 2).sum()
    return {
        "mse": float((err**2).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1 - (err**2).sum() / sst),
        "pearson": float(stats.pearsonr(p, t).statistic),
        "spearman": float(stats.spearmanr(p, t).statistic),
        "count": len(p),
    }


def _streamed_regression(p: np.ndarray, t: np.ndarray, seed: int) -> dict[str, float]:
    """RegressionMetrics fed in random batches."""
    m = RegressionMetrics()
    pt, tt = torch.from_numpy(p), torch.from_numpy(t)
    for part in _random_splits(len(p), np.random.default_rng(seed)):
        m.update(pt[part], tt[part])
    return m.compute()


def test_regression_matches_numpy_and_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    t = np.round(rng.normal(size=800) * 3)  # integers: plenty of ties for Spearman
    p = np.round(t + rng.normal(size=800) * 2)
    _assert_same_metrics(_streamed_regression(p, t, seed=2), _numpy_regression(p, t), rel=1e-10)


def test_regression_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(3)
    t, p = rng.normal(size=500), rng.normal(size=500)
    whole = RegressionMetrics()
    whole.update(torch.from_numpy(p), torch.from_numpy(t))
    _assert_same_metrics(_streamed_regression(p, t, seed=4), whole.compute())


def test_regression_keeps_precision_at_large_offset() -> None:
    rng = np.random.default_rng(5)
    t = 1e6 + rng.normal(size=2000) * 1e-2
    p = t + rng.normal(size=2000) * 5e-3
    reference = _numpy_regression(p, t)
    # The test has teeth: the one-pass textbook variance E[t^2] - E[t]^2 is badly off here.
    naive_var = (t**2).mean() - t.mean() ** 2
    assert abs(naive_var - t.var()) > 1e-3 * t.var()
    _assert_same_metrics(_streamed_regression(p, t, seed=6), reference, rel=1e-8)


def test_regression_constant_inputs_give_zero_not_nan() -> None:
    m = RegressionMetrics()
    for _ in range(3):  # 0.1 is not exact in binary: a variance tolerance would be fragile
        m.update(torch.full((7,), 0.1), torch.tensor([1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0]))
    out = m.compute()
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0
    assert out["r2"] < 0  # constant predictions, varied targets: R2 is defined

    m = RegressionMetrics()
    m.update(torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 0.1))
    m.update(torch.tensor([4.0]), torch.full((1,), 0.1))
    out = m.compute()
    assert out["r2"] == 0.0 and out["pearson"] == 0.0 and out["spearman"] == 0.0
    assert not any(math.isnan(v) for v in out.values())


def test_regression_empty_and_shapes() -> None:
    m = RegressionMetrics()
    out = m.compute()
    assert out["count"] == 0 and math.isnan(out["mse"])
    m.update(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]]))  # (N, 1) squeezed
    assert m.compute()["mae"] == pytest.approx(0.5)
    assert m.details() == {}
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 3), torch.zeros(2, 3))
    m.reset()
    assert m.compute()["count"] == 0


def test_average_ranks_matches_scipy() -> None:
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    expected = stats.rankdata(x.numpy(), method="average")
    assert average_ranks(x).tolist() == expected.tolist()  # [5, 1.5, 5, 3, 5, 1.5]


# ----------------------------------------------------------------------------- multi-label


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


# ----------------------------------------------------------------------------- modes and files


def _strict_loads(line: str) -> dict:
    """json.loads that refuses the non-standard NaN / Infinity tokens."""
    return json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_jsonl_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    record = {
        "step": 3,
        "loss": torch.tensor(0.5),
        "acc": np.float32(0.25),
        "bad": float("nan"),
        "big": torch.tensor(float("inf")),
        "nested": {"xs": [np.int64(7), float("-inf")], "cm": torch.tensor([[1, 2], [3, 4]])},
    }
    with JsonlWriter(path) as writer:
        writer.write(record)
        assert len(read_jsonl(path)) == 1  # flushed before close
    with JsonlWriter(path) as writer:  # reopening appends
        writer.write({"step": 4})

    lines = path.read_text().splitlines()
    assert [_strict_loads(line) for line in lines] == read_jsonl(path)
    assert read_jsonl(path) == [
        {
            "step": 3,
            "loss": 0.5,
            "acc": 0.25,
            "bad": None,
            "big": None,
            "nested": {"xs": [7, None], "cm": [[1, 2], [3, 4]]},
        },
        {"step": 4},
    ]
    with pytest.raises(ValueError):
        writer.write({"step": 5})  # closed


def test_read_jsonl_drops_only_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(TformerError, match=":2"):
        read_jsonl(path)
