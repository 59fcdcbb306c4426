"""Extractive question answering: SQuAD v1.1's exact match and F1, with its official answer normalisation.

The answer of an example is its best-scoring span over all its windows (tasks/qa.py finds each window's);
the scores compare a predicted text against every reference answer and keep the best, as the official
evaluation script (evaluate-v1.1.py) does, and report percentages (0-100).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Sequence

from transformer_cli.metrics.common import safe_div

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a / an / the, and make whitespace single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two texts are equal once normalised."""
    return normalize_answer(prediction) == normalize_answer(reference)


def f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall of the normalised texts (0 when no token is shared)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_over_references(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of a prediction against the reference it fits best, each in [0, 1]."""
    return (max(float(exact_match(prediction, r)) for r in references),
            max(f1(prediction, r) for r in references))


class QAMetrics:
    """Exact match and F1 of the examples of one split, from the best span each window offers.

    `examples` maps an example's key (tasks/qa.py's side record "row") to its context and reference answers;
    `update` takes each window's best span, and `compute` scores the best per example (an example whose windows
    offered no span answers the empty string)."""

    def __init__(self, examples: dict[int, dict[str, Any]]) -> None:
        self.examples = examples
        self.reset()

    def reset(self) -> None:
        """Forget every span."""
        self.best: dict[int, tuple[float, int, int]] = {}  # example -> (score, first char, end char)

    def update(self, rows: Sequence[int], scores: Sequence[float], starts: Sequence[int], ends: Sequence[int]) -> None:
        """One batch of windows: each window's example, and its best span's score and character range
        (score -inf: the window offers none)."""
        for row, score, start, end in zip(rows, scores, starts, ends):
            if math.isfinite(score) and (row not in self.best or score > self.best[row][0]):
                self.best[row] = (score, start, end)

    def answer(self, row: int) -> str:
        """The predicted answer text of an example ('' when none of its windows offered a span)."""
        if row not in self.best:
            return ""
        _, start, end = self.best[row]
        return self.examples[row]["context"][start:end]

    def compute(self) -> dict[str, float]:
        """exact_match and f1 in percent over the examples with reference answers, and their count."""
        em = f = 0.0
        counted = 0
        for row, example in self.examples.items():
            references = example.get("answers") or []
            if not references:
                continue
            e, g = best_over_references(self.answer(row), references)
            em, f, counted = em + e, f + g, counted + 1
        if not counted:
            return {"exact_match": math.nan, "f1": math.nan, "count": 0}
        return {"exact_match": 100 * safe_div(em, counted), "f1": 100 * safe_div(f, counted), "count": counted}

    def details(self) -> dict[str, Any]:
        """How many examples got an answer from some window."""
        return {"answered": len(self.best), "examples": len(self.examples)}
