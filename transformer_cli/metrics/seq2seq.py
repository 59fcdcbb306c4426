"""Sequence-to-sequence metrics: teacher-forced token accuracy and perplexity, and BLEU, chrF, exact
match, WER and PER of decoded text."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from transformer_cli.metrics.common import safe_div


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
            "token_accuracy": safe_div(self.correct, self.tokens) if self.tokens else math.nan,
            "perplexity": math.exp(min(self.nll / self.tokens, 700.0)) if self.tokens else math.nan,
        }
        if self.hyps:
            import sacrebleu

            exact = sum(h == r for h, r in zip(self.hyps, self.refs)) / len(self.hyps)
            out.update(bleu=sacrebleu.corpus_bleu(self.hyps, [self.refs]).score,
                       chrf=sacrebleu.corpus_chrf(self.hyps, [self.refs]).score,
                       exact_match=exact, wer=1.0 - exact, per=safe_div(self.edits, self.ref_units))
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
