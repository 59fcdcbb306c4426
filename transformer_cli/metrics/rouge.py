"""ROUGE-1, ROUGE-2 and ROUGE-L of decoded text, computed by Google's `rouge-score` package.

Each decoded source scores its F-measure against each of its references (the best reference counts, for
each ROUGE type on its own, as rouge_score's score_multi does); the figures are means over sources, in
percent. Words are lowercased, split on anything but [a-z0-9] and Porter-stemmed (use_stemmer=True): the
settings of the summarization literature. The tokenizer drops non-ASCII letters, so on other languages than
English ROUGE is not meaningful.
"""

from __future__ import annotations

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(groups: list[tuple[str, list[str]]]) -> dict[str, float]:
    """{rouge1, rouge2, rougeL}: mean over (hypothesis, its references) of the best F-measure, in percent."""
    from rouge_score import rouge_scorer  # imports nltk (about 3 s): only once text was decoded

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in groups:
        best = scorer.score_multi(refs, hyp)
        for name in ROUGE_TYPES:
            totals[name] += best[name].fmeasure
    return {name: 100.0 * total / len(groups) for name, total in totals.items()} if groups else {}
