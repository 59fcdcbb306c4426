"""Streaming metrics, updated batch by batch, and the writer of metrics files.

Every metric object keeps small float64 / int64 state on the CPU and never holds an epoch's logits:
the loop turns outputs into predictions (argmax, threshold, squeeze) and calls ``update`` per batch.

Conventions shared by every metric here:
  * ``compute()`` returns flat scalars (``name -> float``, plus an int ``count``), ready to log;
    ``details()`` returns the larger, JSON-serialisable breakdown (per class, confusion matrix).
  * A ratio whose denominator is zero (precision of a class never predicted, a correlation of a
    constant input, R2 of constant targets) is 0.0, as scikit-learn's ``zero_division=0``.
  * With nothing counted (``count == 0``) every metric is NaN: "nothing measured" must never look
    like a perfect score to a checkpoint monitor (NaN never compares better than anything).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from transformer_cli.errors import TformerError

# Whether a higher ("max") or lower ("min") value is better, for every monitorable scalar that a
# metric object or the loop reports. ``count`` is bookkeeping, not something to monitor.
METRIC_MODES: dict[str, str] = {
    "loss": "min",
    # ClassificationMetrics
    "accuracy": "max",
    "macro_f1": "max",  # also MultiLabelMetrics
    "mcc": "max",
    # RegressionMetrics
    "mse": "min",
    "rmse": "min",
    "mae": "min",
    "r2": "max",
    "pearson": "max",
    "spearman": "max",
    # MultiLabelMetrics
    "micro_f1": "max",
    "subset_accuracy": "max",
    "hamming_loss": "min",
    # Seq2SeqMetrics
    "token_accuracy": "max",
    "perplexity": "min",
    "bleu": "max",
    "chrf": "max",
    "exact_match": "max",
    "wer": "min",  # fraction of outputs with any error (G2P's word error rate)
    "per": "min",  # edit distance over space-separated units / reference units (G2P's phoneme error rate)
}


class Metrics(Protocol):
    """What the loop needs from any metric object."""

    def update(self, preds: Tensor, targets: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def details(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


# ----------------------------------------------------------------------------- shared helpers


def _safe_div(num: float, den: float) -> float:
    """num / den, or 0.0 when den is zero (the zero_division=0 convention)."""
    return num / den if den != 0 else 0.0


def _on_cpu(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached CPU copy in dtype: state lives on the CPU, whatever device the batch came from."""
    return x.detach().to(device="cpu", dtype=dtype)


def _check_same_shape(preds: Tensor, targets: Tensor) -> None:
    """Fail loudly on mismatched shapes rather than silently broadcasting."""
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ")


def _f1_from_counts(tp: Tensor, n_pred: Tensor, n_true: Tensor) -> Tensor:
    """Per-entry F1 = 2tp / (n_pred + n_true), 0.0 where both are zero; all args (K,) -> (K,)."""
    den = (n_pred + n_true).to(torch.float64)
    return torch.where(den > 0, 2 * tp.to(torch.float64) / den.clamp_min(1), 0.0)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """Element-wise num / den in float64, 0.0 where den is zero; (K,) -> (K,)."""
    den = den.to(torch.float64)
    return torch.where(den > 0, num.to(torch.float64) / den.clamp_min(1), 0.0)


def _prf_table(
    names: list[str], tp: Tensor, n_pred: Tensor, n_true: Tensor
) -> dict[str, dict[str, float]]:
    """Per-name precision / recall / F1 / support from (K,) counts, as plain Python numbers."""
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
    f1 = _f1_from_counts(tp, n_pred, n_true)
    return {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(n_true[k]),
        }
        for k, name in enumerate(names)
    }


def _check_names(names: list[str], expected: int, what: str) -> list[str]:
    """Validate that there is one distinct name per class / label."""
    if expected < 1:
        raise ValueError(f"need at least one {what}, got {expected}")
    if len(names) != expected or len(set(names)) != expected:
        raise ValueError(f"need {expected} distinct {what} names, got {names!r}")
    return list(names)


# ----------------------------------------------------------------------------- classification


class ClassificationMetrics:
    """Accuracy, macro-F1 and multi-class MCC from a streaming (C, C) confusion matrix."""

    def __init__(self, num_classes: int, label_names: list[str]) -> None:
        self.num_classes = num_classes
        self.label_names = _check_names(label_names, num_classes, "class")
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64)  # (C, C) rows true, cols predicted

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch; targets < 0 (e.g. ignore_index -100) are skipped.

        preds and targets share any shape, (N,) or (B, T) for token tasks; each element counts once.
        """
        _check_same_shape(preds, targets)
        preds = _on_cpu(preds, torch.int64).reshape(-1)  # (N,)
        targets = _on_cpu(targets, torch.int64).reshape(-1)  # (N,)
        keep = targets >= 0
        preds, targets = preds[keep], targets[keep]  # (n,) counted items only
        self._check_range(preds, "predicted")
        self._check_range(targets, "target")
        c = self.num_classes
        counts = torch.bincount(targets * c + preds, minlength=c * c)  # (C*C,)
        self.confusion += counts.reshape(c, c)

    def _check_range(self, classes: Tensor, what: str) -> None:
        """Reject class indices outside [0, C): bincount would silently misfile them."""
        outside = classes[(classes < 0) | (classes >= self.num_classes)]
        if outside.numel():
            raise TformerError(
                f"{what} class {int(outside[0])} is outside [0, {self.num_classes})",
                hint="check that the task's num_classes matches the labels in the data",
            )

    def compute(self) -> dict[str, float]:
        """accuracy, macro_f1 (over all C classes), mcc (Gorodkin's R_K) and count."""
        cm = self.confusion
        count = int(cm.sum())
        if count == 0:
            return {"accuracy": math.nan, "macro_f1": math.nan, "mcc": math.nan, "count": 0}
        tp, n_pred, n_true = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)  # (C,) each
        return {
            "accuracy": int(tp.sum()) / count,
            "macro_f1": float(_f1_from_counts(tp, n_pred, n_true).mean()),
            "mcc": _multiclass_mcc(cm),
            "count": count,
        }

    def details(self) -> dict[str, Any]:
        """Per-class precision / recall / F1 / support and the confusion matrix (rows = true)."""
        cm = self.confusion
        tp, n_pred, n_true = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)  # (C,) each
        return {
            "per_class": _prf_table(self.label_names, tp, n_pred, n_true),
            "confusion_matrix": cm.tolist(),
        }


def _multiclass_mcc(confusion: Tensor) -> float:
    """Gorodkin's R_K from a (C, C) confusion matrix; equals the binary MCC for C = 2.

    R_K = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), with c correct,
    s total, p_k predicted and t_k true counts of class k. 0.0 when undefined (a constant side).
    """
    cm = confusion.to(torch.float64)  # float64: s^2 overflows int64 beyond ~3e9 items
    s, c = cm.sum(), cm.diagonal().sum()
    p, t = cm.sum(dim=0), cm.sum(dim=1)  # (C,) predicted, true
    cov_pt = c * s - (p * t).sum()
    cov_pp, cov_tt = s * s - (p * p).sum(), s * s - (t * t).sum()
    if cov_pp <= 0 or cov_tt <= 0:
        return 0.0
    return float(cov_pt / torch.sqrt(cov_pp * cov_tt))


# ----------------------------------------------------------------------------- regression


@dataclass
class _Moments:
    """Count, means, centred second moments and co-moment of (p, t) pairs, merged Chan-style.

    Centred sums avoid the cancellation of sum(x^2) - n*mean^2, so targets like 1e6 + small noise
    keep their precision.
    """

    n: int = 0
    mean_p: float = 0.0
    mean_t: float = 0.0
    m2_p: float = 0.0  # sum (p - mean_p)^2
    m2_t: float = 0.0  # sum (t - mean_t)^2
    c_pt: float = 0.0  # sum (p - mean_p)(t - mean_t)

    @classmethod
    def of(cls, p: Tensor, t: Tensor) -> _Moments:
        """Moments of one batch, two-pass around the batch means; p, t (n,) float64."""
        if p.numel() == 0:
            return cls()
        mean_p, mean_t = _careful_mean(p), _careful_mean(t)
        dp, dt = p - mean_p, t - mean_t  # (n,)
        return cls(p.numel(), mean_p, mean_t, float(dp @ dp), float(dt @ dt), float(dp @ dt))

    def merge(self, other: _Moments) -> _Moments:
        """The moments of both sets together (Chan, Golub & LeVeque's pairwise update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        dp, dt = other.mean_p - self.mean_p, other.mean_t - self.mean_t
        w = self.n * other.n / n
        return _Moments(
            n=n,
            mean_p=self.mean_p + dp * other.n / n,
            mean_t=self.mean_t + dt * other.n / n,
            m2_p=self.m2_p + other.m2_p + dp * dp * w,
            m2_t=self.m2_t + other.m2_t + dt * dt * w,
            c_pt=self.c_pt + other.c_pt + dp * dt * w,
        )


def _careful_mean(x: Tensor) -> float:
    """Mean of (n,) float64 plus one correction pass, which removes most of the summation error."""
    m = x.mean()
    return float(m + (x - m).mean())


def _correlation(m: _Moments, constant: bool) -> float:
    """Pearson r from moments; 0.0 when either side is constant (r is undefined there)."""
    if constant or m.m2_p <= 0 or m.m2_t <= 0:
        return 0.0
    r = m.c_pt / math.sqrt(m.m2_p * m.m2_t)
    return min(1.0, max(-1.0, r))  # rounding may step a hair outside [-1, 1]


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N of (N,) values, ties sharing their mean rank (scipy's rankdata 'average')."""
    n = x.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    sorted_x, order = torch.sort(x, stable=True)  # (N,), (N,)
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sorted_x[1:] != sorted_x[:-1]  # (N,) True where a tie group begins
    group = torch.cumsum(starts, dim=0) - 1  # (N,) tie group of each sorted position
    sizes = torch.bincount(group).to(torch.float64)  # (G,)
    last = torch.cumsum(sizes, dim=0)  # (G,) 1-based rank of each group's last member
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (last - (sizes - 1) / 2)[group]  # mean of ranks last-size+1 .. last
    return ranks


class RegressionMetrics:
    """MSE, RMSE, MAE, R2, Pearson and Spearman of one real-valued output.

    All but Spearman come from running float64 sums. Spearman needs global ranks, so the (N,)
    predictions and targets are kept: one float each per example, never logits.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.moments = _Moments()
        self.sum_sq_err = 0.0  # sum (p - t)^2: errors are small even when p, t sit at 1e6
        self.sum_abs_err = 0.0  # sum |p - t|
        self.range_p = (math.inf, -math.inf)  # (min, max): exact constancy test for correlations
        self.range_t = (math.inf, -math.inf)
        self._kept_p: list[Tensor] = []  # (n_i,) float64 per batch, for Spearman
        self._kept_t: list[Tensor] = []

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch of (N,) predictions and targets ((N, 1) is accepted and squeezed)."""
        _check_same_shape(preds, targets)
        if preds.dim() == 2 and preds.shape[1] == 1:
            preds, targets = preds[:, 0], targets[:, 0]
        if preds.dim() != 1:
            raise ValueError(f"RegressionMetrics takes (N,) values, got {tuple(preds.shape)}")
        p, t = _on_cpu(preds, torch.float64), _on_cpu(targets, torch.float64)  # (N,) each
        if p.numel() == 0:
            return
        err = p - t  # (N,)
        self.sum_sq_err += float(err @ err)
        self.sum_abs_err += float(err.abs().sum())
        self.moments = self.moments.merge(_Moments.of(p, t))
        self.range_p = _widen(self.range_p, p)
        self.range_t = _widen(self.range_t, t)
        self._kept_p.append(p)
        self._kept_t.append(t)

    def compute(self) -> dict[str, float]:
        """mse, rmse, mae, r2, pearson, spearman and count; see the module notes for 0.0 / NaN."""
        m = self.moments
        if m.n == 0:
            names = ("mse", "rmse", "mae", "r2", "pearson", "spearman")
            return {**{k: math.nan for k in names}, "count": 0}
        mse = self.sum_sq_err / m.n
        constant = _is_constant(self.range_p) or _is_constant(self.range_t)
        return {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": self.sum_abs_err / m.n,
            "r2": 0.0 if _is_constant(self.range_t) else 1.0 - self.sum_sq_err / m.m2_t,
            "pearson": _correlation(m, constant),
            "spearman": self._spearman(constant),
            "count": m.n,
        }

    def _spearman(self, constant: bool) -> float:
        """Pearson r of the average ranks of everything kept."""
        rank_p = average_ranks(torch.cat(self._kept_p))  # (N,)
        rank_t = average_ranks(torch.cat(self._kept_t))  # (N,)
        return _correlation(_Moments.of(rank_p, rank_t), constant)

    def details(self) -> dict[str, Any]:
        """Nothing beyond the scalars for regression."""
        return {}


def _widen(bounds: tuple[float, float], x: Tensor) -> tuple[float, float]:
    """(min, max) extended by the values of (n,) x."""
    return min(bounds[0], float(x.min())), max(bounds[1], float(x.max()))


def _is_constant(bounds: tuple[float, float]) -> bool:
    """True when every value seen was equal (decided exactly, not by a variance tolerance)."""
    return bounds[0] == bounds[1]


# ----------------------------------------------------------------------------- multi-label


class MultiLabelMetrics:
    """Micro / macro F1, subset accuracy and Hamming loss of (N, L) 0/1 predictions."""

    def __init__(self, num_labels: int, label_names: list[str]) -> None:
        self.num_labels = num_labels
        self.label_names = _check_names(label_names, num_labels, "label")
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        z = torch.zeros(self.num_labels, dtype=torch.int64)
        self.tp, self.n_pred, self.n_true = z.clone(), z.clone(), z.clone()  # (L,) each
        self.rows = 0
        self.exact_rows = 0  # rows whose every label was right
        self.wrong_cells = 0  # (row, label) cells predicted wrong

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Count one batch of (N, L) 0/1 (or bool) predictions and targets."""
        _check_same_shape(preds, targets)
        if preds.dim() != 2 or preds.shape[1] != self.num_labels:
            raise ValueError(f"expected (N, {self.num_labels}) values, got {tuple(preds.shape)}")
        p, t = _as_binary(preds, "predictions"), _as_binary(targets, "targets")  # (N, L) bool each
        wrong = p != t  # (N, L)
        self.tp += (p & t).sum(dim=0)
        self.n_pred += p.sum(dim=0)
        self.n_true += t.sum(dim=0)
        self.rows += p.shape[0]
        self.exact_rows += int((~wrong.any(dim=1)).sum())
        self.wrong_cells += int(wrong.sum())

    def compute(self) -> dict[str, float]:
        """micro_f1, macro_f1 (over all L labels), subset_accuracy, hamming_loss and count."""
        if self.rows == 0:
            names = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
            return {**{k: math.nan for k in names}, "count": 0}
        micro = _f1_from_counts(self.tp.sum(), self.n_pred.sum(), self.n_true.sum())
        return {
            "micro_f1": float(micro),
            "macro_f1": float(_f1_from_counts(self.tp, self.n_pred, self.n_true).mean()),
            "subset_accuracy": self.exact_rows / self.rows,
            "hamming_loss": self.wrong_cells / (self.rows * self.num_labels),
            "count": self.rows,
        }

    def details(self) -> dict[str, Any]:
        """Per-label precision / recall / F1 / support (support = rows where the label is 1)."""
        return {"per_label": _prf_table(self.label_names, self.tp, self.n_pred, self.n_true)}


def _as_binary(x: Tensor, what: str) -> Tensor:
    """(N, L) 0/1 values as a CPU bool tensor; anything else is a mistake, not a threshold."""
    x = x.detach().cpu()
    if x.dtype != torch.bool:
        if ((x != 0) & (x != 1)).any():
            raise TformerError(
                f"multi-label {what} must be 0 or 1",
                hint="threshold the logits (e.g. logits > 0) before updating the metrics",
            )
        x = x != 0
    return x


# ----------------------------------------------------------------------------- metrics files


def jsonable(value: Any) -> Any:
    """A copy of value that json.dumps accepts strictly: tensors / numpy become Python numbers,
    and NaN / +-inf become None, since bare NaN / Infinity tokens are not valid JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (Tensor, np.ndarray, np.generic)):
        return jsonable(value.tolist())  # a 0-d tensor / numpy scalar gives a Python scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line and flushes each, so a killed run keeps every line written.

    Values are made strictly valid JSON: torch / numpy scalars and arrays become Python numbers and
    lists, and non-finite floats (NaN, +-inf) are written as ``null`` (read back as ``None``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append record as one line and flush it to the OS."""
        if self._file is None:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        line = json.dumps(jsonable(record), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()  # the OS keeps the line if the process dies; no fsync per step

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a half-written last line (run killed mid-write) is dropped."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")  # the piece after the final "\n" is "" for a cleanly ended file
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # no trailing newline: the write was cut short
                break
            raise TformerError(f"{path}:{number} is not valid JSON: {err.msg}") from err
    return records


class Seq2SeqMetrics:
    """Teacher-forced token accuracy and perplexity (streaming) plus metrics of decoded text.

    Decoded hypotheses and references are kept as strings (not logits) because corpus BLEU and chrF
    (sacrebleu, the comparable implementation) are computed over the whole set; training-time
    evaluations decode a bounded number of examples."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self.nll = 0.0
        self.tokens = 0
        self.correct = 0
        self.hyps: list[str] = []
        self.refs: list[str] = []
        self.edits = 0
        self.ref_units = 0

    def update_tokens(self, logits: Tensor, labels: Tensor, ignore_index: int = -100) -> None:
        """(N, V) next-token logits and (N,) labels; ignored positions are skipped."""
        keep = labels != ignore_index
        logits, labels = logits[keep].float(), labels[keep]
        logp = torch.log_softmax(logits, dim=-1)
        self.nll += float(-logp.gather(1, labels[:, None]).sum())
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.tokens += int(labels.numel())

    def update_text(self, hyps: list[str], refs: list[str]) -> None:
        """Decoded hypotheses and their references, as text."""
        self.hyps += hyps
        self.refs += refs
        for h, r in zip(hyps, refs):
            ref_units = r.split()
            self.edits += edit_distance(h.split(), ref_units)
            self.ref_units += len(ref_units)

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Protocol form: (N, V) logits and (N,) labels."""
        self.update_tokens(preds, targets)

    def compute(self) -> dict[str, float]:
        """token_accuracy, perplexity; with decoded text also bleu, chrf, exact_match, wer, per."""
        out: dict[str, float] = {
            "token_accuracy": _safe_div(self.correct, self.tokens) if self.tokens else math.nan,
            "perplexity": math.exp(min(self.nll / self.tokens, 700.0)) if self.tokens else math.nan,
        }
        if self.hyps:
            import sacrebleu

            exact = sum(h == r for h, r in zip(self.hyps, self.refs)) / len(self.hyps)
            out.update(bleu=sacrebleu.corpus_bleu(self.hyps, [self.refs]).score,
                       chrf=sacrebleu.corpus_chrf(self.hyps, [self.refs]).score,
                       exact_match=exact, wer=1.0 - exact, per=_safe_div(self.edits, self.ref_units))
        out["count"] = self.tokens
        out["decoded"] = len(self.hyps)
        return out

    def details(self) -> dict[str, Any]:
        """A few decoded examples."""
        return {"examples": [{"reference": r, "hypothesis": h} for h, r in zip(self.hyps[:10], self.refs[:10])]}


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]
