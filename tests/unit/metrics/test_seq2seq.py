"""Seq2seq metrics: edit distance on token lists."""

from __future__ import annotations

import pytest

from transformer_cli.metrics import edit_distance


def test_edit_distance() -> None:
    """Levenshtein distance on token lists."""
    assert edit_distance("K AE1 T".split(), "K AE1 T".split()) == 0
    assert edit_distance("K AH0 T S".split(), "K AE1 T".split()) == 2
    assert edit_distance([], ["a", "b"]) == 2


def test_multi_reference_wer_and_per() -> None:
    """A source with several references is right when it matches any; PER counts edits to the closest one.
    Hand-computed: 'read' (two pronunciations) decoded as the second, 'cat' with one phoneme wrong."""
    from transformer_cli.metrics import Seq2SeqMetrics

    m = Seq2SeqMetrics()
    m.add_references(["read", "read", "cat"], ["R IY1 D", "R EH1 D", "K AE1 T"])
    m.add_hypotheses(["read", "cat"], ["R EH1 D", "K AH0 T"])
    out = m.compute()
    assert out["decoded"] == 2  # each word once, its alternates grouped
    assert out["wer"] == 0.5 and out["exact_match"] == 0.5  # 'read' right against its second reference
    assert out["per"] == pytest.approx(1 / 6)  # 0 edits to 'R EH1 D' + 1 to 'K AE1 T', over 3 + 3 phonemes
    assert out["wer_single"] == pytest.approx(2 / 3)  # rows: (read, R IY1 D) wrong, (read, R EH1 D) right, (cat) wrong
    assert out["per_single"] == pytest.approx(2 / 9)  # 1 + 0 + 1 edits over 3 + 3 + 3 phonemes
    assert m.details()["examples"][0] == {"references": ["R IY1 D", "R EH1 D"], "hypothesis": "R EH1 D"}


def test_per_takes_the_closest_reference() -> None:
    """Of two references, PER is counted against the one with fewer edits (then the shorter)."""
    from transformer_cli.metrics import Seq2SeqMetrics

    m = Seq2SeqMetrics()
    m.add_references(["w", "w"], ["A B C D", "A X"])
    m.add_hypotheses(["w"], ["A B"])
    assert m.compute()["per"] == 1 / 2  # 'A X' needs 1 edit (of 2 units); 'A B C D' needs 2 (of 4)
    tie = Seq2SeqMetrics()
    tie.add_references(["w", "w"], ["A B C", "A C"])  # one edit from either
    tie.add_hypotheses(["w"], ["A B"])
    assert tie.compute()["per"] == 1 / 2  # the tie goes to the shorter reference: the stricter count, not 1 / 3
