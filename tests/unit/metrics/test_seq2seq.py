"""Seq2seq metrics: edit distance on token lists."""

from __future__ import annotations

from transformer_cli.metrics import edit_distance


def test_edit_distance() -> None:
    """Levenshtein distance on token lists."""
    assert edit_distance("K AE1 T".split(), "K AE1 T".split()) == 0
    assert edit_distance("K AH0 T S".split(), "K AE1 T".split()) == 2
    assert edit_distance([], ["a", "b"]) == 2
