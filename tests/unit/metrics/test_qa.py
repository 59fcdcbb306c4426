"""SQuAD v1.1 exact match and F1 against the official evaluation script (evaluate-v1.1.py), re-implemented here
line by line as the reference, on hand-made predictions."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from transformer_cli.metrics.qa import QAMetrics


# --- the official script's functions, as published --------------------------------------------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def evaluate(references, predictions):
    f1 = exact_match = total = 0
    for qid, ground_truths in references.items():
        total += 1
        prediction = predictions[qid]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}


# --- tricky cases: (prediction, references) ---------------------------------------------------------------
CASES = [
    ("Denver Broncos", ["Denver Broncos", "Denver Broncos", "Denver Broncos"]),
    ("the Denver Broncos", ["Denver Broncos"]),  # an article
    ("The Broncos.", ["Broncos"]),  # article and punctuation
    ("a cat", ["the cat", "an animal"]),
    ("Saint Bernadette Soubirous", ["Saint Bernadette Soubirous", "Bernadette"]),  # several references
    ("Bernadette Soubirous", ["Saint Bernadette Soubirous"]),  # partial overlap
    ("", ["Santa Clara"]),  # the empty prediction
    ("1,000", ["1000"]),  # punctuation inside a number
    ("U.S.", ["US", "United States"]),
    ("theater", ["the theater"]),  # 'the' inside a word stays
    ("an apple a day", ["apple day"]),
    ("  New   York  ", ["New York"]),  # whitespace
    ("New York City", ["New York"]),
    ("Paris, France", ["France", "Paris"]),
    ("the the the", ["the"]),  # only articles: both normalise to ''
    ("rock and roll", ["rock & roll", "rock-and-roll"]),
    ("CAFÉ", ["café"]),  # lower-casing beyond ASCII
    ("dogs dogs cats", ["dogs cats cats"]),  # repeated tokens: counts clip
    ("1990s", ["1990"]),
    ("Beyoncé's", ["Beyoncé"]),
    ("(A) answer", ["answer"]),
    ("Nikola Tesla", ["Thomas Edison"]),
]


@pytest.mark.parametrize("prediction,references", CASES)
def test_each_case_scores_as_the_official_script(prediction: str, references: list[str]) -> None:
    metrics = QAMetrics({1: {"row": 1, "context": prediction, "answers": references}})
    metrics.update([1], [0.0], [0], [len(prediction)])  # the whole context is the predicted span
    ours = metrics.compute()
    official = evaluate({1: references}, {1: prediction})
    assert ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-9)


def test_a_whole_set_scores_as_the_official_script() -> None:
    """Many examples at once, each answered by the best of several windows' spans."""
    examples = {i + 1: {"row": i + 1, "context": f"xx {p} yy", "answers": refs} for i, (p, refs) in enumerate(CASES)}
    metrics = QAMetrics(examples)
    for i, (prediction, _) in enumerate(CASES):
        metrics.update([i + 1], [1.0], [0], [2])  # a worse window's span: 'xx'
        metrics.update([i + 1], [5.0], [3], [3 + len(prediction)])
        metrics.update([i + 1], [float("-inf")], [0], [0])  # a window without any span
    ours = metrics.compute()
    official = evaluate({i + 1: refs for i, (_, refs) in enumerate(CASES)},
                        {i + 1: p for i, (p, _) in enumerate(CASES)})
    assert ours["exact_match"] == pytest.approx(official["exact_match"])
    assert ours["f1"] == pytest.approx(official["f1"])
    assert ours["count"] == len(CASES) and 0 < official["f1"] < 100


def test_an_example_without_any_span_answers_the_empty_string() -> None:
    metrics = QAMetrics({7: {"row": 7, "context": "abc", "answers": ["abc"]}})
    metrics.update([7], [float("-inf")], [0], [0])
    assert metrics.answer(7) == "" and metrics.compute()["f1"] == 0.0
    assert QAMetrics({}).compute()["count"] == 0
