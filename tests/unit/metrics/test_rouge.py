"""ROUGE-1/2/L of decoded text equal Google's rouge-score called directly, and take the best reference."""

from __future__ import annotations

from rouge_score import rouge_scorer

from transformer_cli.metrics import Seq2SeqMetrics

# (hypothesis, reference): overlaps of every kind, stems (running / runs), case, punctuation, empty outputs
PAIRS = [
    ("real-time strategy game of ancient warfare", "Real-time strategy game of ancient warfare"),
    ("strategy game for ancient wars", "Real-time strategy game of ancient warfare"),
    ("tool to convert images", "command-line image conversion tools"),
    ("the cat sat on the mat", "the cat is on the mat"),
    ("runs tests quickly", "running the tests quick"),
    ("", "a non-empty reference"),
    ("fast Fourier transform library", "library for fast Fourier transforms"),
    ("GNU compiler for Fortran", "GNU Fortran 95 compiler"),
    ("music player for the desktop", "simple music player for GNOME"),
    ("a a a a", "a b a b"),
    ("daemon that monitors disks", "disk monitoring daemon"),
    ("text editor", "text editor with syntax highlighting for many programming languages"),
    ("web server and reverse proxy", "small, fast web server and reverse proxy"),
    ("password manager", "password manager"),
    ("chess engine", "free UCI chess engine, to calculate chess moves"),
    ("plugin framework for C", "C-Pluff, a plug-in framework for C - plugin loader"),
    ("sleep research manager", "Sleep-research experiment manager"),
    ("utilities for the X window system", "miscellaneous X utilities"),
    ("backup program with deduplication", "deduplicating backup program"),
    ("Ñandú ünïcode tèxt", "unicode text"),
]


def test_rouge_equals_rouge_score() -> None:
    """Mean F-measure of each pair, in percent, exactly as RougeScorer(use_stemmer=True) computes it."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(ref, hyp) for hyp, ref in PAIRS]
    m = Seq2SeqMetrics()
    sources = [f"source {i}" for i in range(len(PAIRS))]
    m.add_references(sources, [ref for _, ref in PAIRS])
    m.add_hypotheses(sources, [hyp for hyp, _ in PAIRS])
    out = m.compute()
    for name in ("rouge1", "rouge2", "rougeL"):
        total = 0.0
        for scores in direct:
            total += scores[name].fmeasure
        assert out[name] == 100.0 * total / len(PAIRS)
    assert 0 < out["rouge2"] < out["rouge1"] < 100


def test_rouge_takes_the_best_reference_per_type() -> None:
    """A source with two references scores each ROUGE type against its best one (rouge_score's score_multi)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    refs, hyp = ["a b c d", "d c b a x"], "a b c d x"
    m = Seq2SeqMetrics()
    m.add_references(["s", "s"], refs)
    m.add_hypotheses(["s"], [hyp])
    out = m.compute()
    for name in ("rouge1", "rouge2", "rougeL"):
        assert out[name] == 100.0 * max(scorer.score(r, hyp)[name].fmeasure for r in refs)
    assert out["rouge1"] == 100.0 and out["rouge2"] < 100.0  # rouge1 from the second reference, rouge2 the first
