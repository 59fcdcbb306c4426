"""Sequence-to-sequence metrics: teacher-forced token accuracy and perplexity, and BLEU, chrF, ROUGE, exact
match, WER and PER of decoded text."""

from __future__ import annotations

from typing import Any, Hashable, Sequence

from torch import Tensor

from transformer_cli.metrics.common import safe_div
from transformer_cli.metrics.rouge import rouge
from transformer_cli.metrics.tokens import TokenMetrics


class Seq2SeqMetrics:
    """Teacher-forced token accuracy and perplexity (streaming) plus metrics of decoded text.

    Every reference is kept by its source; each distinct source is decoded once. Sources are the examples'
    source texts (the task's `keys`), not what is left of them after truncation: two descriptions that open
    alike stay two sources. A source with several references (a word with several pronunciations, rows of the
    same text) counts as correct when its output matches any of them:
    `wer` and `per` are scored that way (PER against the closest reference), as G2P papers do, and ROUGE
    takes its best reference; `wer_single` and `per_single` score every (source, reference) row on its own,
    as do BLEU and chrF. Decoded text is
    kept as strings because corpus BLEU and chrF (sacrebleu) are computed over the whole set."""

    def __init__(self, keys: Sequence[Hashable] | None = None) -> None:
        self.keys = keys  # each example's source, by its index in the split (None: sources are keyed by their ids)
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self.token_metrics = TokenMetrics()
        self.refs: dict[Hashable, list[str]] = {}  # source -> its references, in order of arrival
        self.hyps: dict[Hashable, str] = {}  # source -> the decoded output

    def update_tokens(self, logits: Tensor, labels: Tensor, ignore_index: int = -100) -> None:
        """(N, V) next-token logits and (N,) labels; ignored positions are skipped."""
        self.token_metrics.update(logits, labels, ignore_index)

    def add_references(self, sources: list[Hashable], refs: list[str]) -> None:
        """The reference text of each row, by its source."""
        for source, ref in zip(sources, refs):
            self.refs.setdefault(source, []).append(ref)

    def add_hypotheses(self, sources: list[Hashable], hyps: list[str]) -> None:
        """The decoded text of each (distinct) source."""
        self.hyps.update(zip(sources, hyps))

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Protocol form: (N, V) logits and (N,) labels."""
        self.update_tokens(preds, targets)

    def compute(self) -> dict[str, float]:
        """token_accuracy, perplexity; with decoded text also bleu, chrf, rouge1/2/L (best reference),
        exact_match, wer, per (any reference) and wer_single, per_single (each row)."""
        out: dict[str, float] = self.token_metrics.compute()
        count = out.pop("count")
        groups = [(self.hyps[s], refs) for s, refs in self.refs.items() if s in self.hyps]
        if groups:
            import sacrebleu

            rows = [(h, r) for h, group in groups for r in group]
            hyps, refs = [h for h, _ in rows], [r for _, r in rows]
            closest = [min(group, key=lambda r, h=h: (edit_distance(h.split(), r.split()), len(r.split())))
                       for h, group in groups]
            correct = sum(h in group for h, group in groups) / len(groups)
            out.update(bleu=sacrebleu.corpus_bleu(hyps, [refs]).score,
                       chrf=sacrebleu.corpus_chrf(hyps, [refs]).score,
                       exact_match=correct, wer=1.0 - correct, per=_unit_error_rate([h for h, _ in groups], closest),
                       wer_single=1.0 - sum(h == r for h, r in rows) / len(rows),
                       per_single=_unit_error_rate(hyps, refs))
            out.update(rouge(groups))
        out["count"] = count
        out["decoded"] = len(groups)
        return out

    def details(self) -> dict[str, Any]:
        """A few decoded examples with all their references."""
        shown = [(self.hyps[s], refs) for s, refs in self.refs.items() if s in self.hyps][:10]
        return {"examples": [{"references": refs, "hypothesis": h} for h, refs in shown]}


def _unit_error_rate(hyps: list[str], refs: list[str]) -> float:
    """Edit distance over space-separated units, summed, over the references' units (phoneme error rate)."""
    edits = sum(edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs))
    return safe_div(edits, sum(len(r.split()) for r in refs))


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]
