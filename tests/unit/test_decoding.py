"""Seq2seq decoding: beam 1 equals greedy, the key/value cache changes nothing, limits, minimum lengths,
length penalty and no-repeat n-grams."""

from __future__ import annotations

import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.decoding import beam_search, greedy
from transformer_cli.model import Seq2SeqModel

BOS, EOS = 4, 5
# beam_search(random_model(), *sources(), beam=4) as decoded before min_length was added
BEAM4_TOKENS = [[15, 32, 15], [15, 32, 15, 32], [37, 6, 15], [15, 32, 15], [37, 28, 16, 28, 16, 2, 32, 15, 32, 15, 32],
                [15, 32]]


def random_model(seed: int = 0, tie: bool = False) -> Seq2SeqModel:
    """An untrained model whose outputs vary with the input (a wide random output projection)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0, tie_embeddings=tie)
    model = Seq2SeqModel(50, 40, cfg).eval()
    if not tie:
        torch.nn.init.normal_(model.proj.weight, std=1.0)
    return model


def sources(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six sources with padding, and per-source length limits."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(6, 50, (6, 9), generator=g)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[2, 6:] = False
    mask[4, 3:] = False
    src[~mask] = 0
    return src, mask, torch.tensor([12, 5, 12, 8, 12, 3])


def test_beam_of_one_equals_greedy() -> None:
    """Beam search with beam size 1 returns greedy's tokens and scores."""
    model, (src, mask, limits) = random_model(), sources()
    g = greedy(model, src, mask, BOS, EOS, limits)
    b = beam_search(model, src, mask, BOS, EOS, limits, beam=1)
    assert [h.tokens for h in g] == [h.tokens for h in b]
    assert [h.score for h in g] == pytest.approx([h.score for h in b], abs=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_cache_changes_nothing(beam: int) -> None:
    """Decoding with the key/value cache equals recomputing every prefix, token for token."""
    model, (src, mask, limits) = random_model(), sources()
    run = greedy if beam == 1 else beam_search
    kwargs = {} if beam == 1 else {"beam": beam}
    cached = run(model, src, mask, BOS, EOS, limits, use_cache=True, **kwargs)
    plain = run(model, src, mask, BOS, EOS, limits, use_cache=False, **kwargs)
    assert [h.tokens for h in cached] == [h.tokens for h in plain]
    assert [h.score for h in cached] == pytest.approx([h.score for h in plain], abs=1e-4)


def test_beam_finds_no_worse_scores_and_respects_limits() -> None:
    """Beam 4 scores at least as well as greedy (length penalty 0), and no output exceeds its limit."""
    model, (src, mask, limits) = random_model(), sources()
    g = greedy(model, src, mask, BOS, EOS, limits)
    b = beam_search(model, src, mask, BOS, EOS, limits, beam=4, length_penalty=0.0)
    assert all(hb.score >= hg.score - 1e-5 for hb, hg in zip(b, g))
    assert all(len(h.tokens) < int(n) for h, n in zip(b + g, list(limits) * 2))


def test_no_repeat_ngram() -> None:
    """With no_repeat_ngram=2 no bigram occurs twice in an output."""
    model, (src, mask, limits) = random_model(tie=True), sources()
    for h in beam_search(model, src, mask, BOS, EOS, limits * 3, beam=3, no_repeat_ngram=2):
        grams = list(zip(h.tokens, h.tokens[1:]))
        assert len(grams) == len(set(grams))


def eos_first_model() -> Seq2SeqModel:
    """A model whose most probable token is EOS at every step, by a wide margin."""
    model = random_model(tie=False)
    proj = torch.nn.Linear(model.proj.in_features, model.proj.out_features)  # the random weights, plus a bias
    with torch.no_grad():
        proj.weight.copy_(model.proj.weight)
        proj.bias.zero_()
        proj.bias[EOS] = 1e4
    model.proj = proj
    return model


@pytest.mark.parametrize("min_length", [1, 3, 7])
def test_min_length_when_the_model_would_end_at_once(min_length: int) -> None:
    """A model that always prefers EOS outputs exactly min_length tokens (greedy and beam), within the limit."""
    model, (src, mask, limits) = eos_first_model(), sources()
    assert all(h.tokens == [] for h in greedy(model, src, mask, BOS, EOS, limits))  # without min_length: empty
    limits = torch.full_like(limits, 12)
    for hyps in (greedy(model, src, mask, BOS, EOS, limits, min_length=min_length),
                 beam_search(model, src, mask, BOS, EOS, limits, beam=3, min_length=min_length)):
        assert [len(h.tokens) for h in hyps] == [min_length] * len(hyps)
        assert all(EOS not in h.tokens for h in hyps)


def test_min_length_yields_to_the_max_length() -> None:
    """Where the max length is shorter than min_length, the max length wins (EOS forced at the limit)."""
    model, (src, mask, limits) = eos_first_model(), sources()  # limits 12, 5, 12, 8, 12, 3
    for hyps in (greedy(model, src, mask, BOS, EOS, limits, min_length=6),
                 beam_search(model, src, mask, BOS, EOS, limits, beam=2, min_length=6)):
        assert [len(h.tokens) for h in hyps] == [min(6, int(n) - 1) for n in limits]


@pytest.mark.parametrize("beam", [1, 4])
def test_min_length_holds_on_a_random_model(beam: int) -> None:
    """Every output of an ordinary model has at least min_length tokens."""
    model, (src, mask, _) = random_model(), sources()
    limits = torch.full((6,), 20)
    run = greedy if beam == 1 else beam_search
    kwargs = {} if beam == 1 else {"beam": beam}
    assert all(len(h.tokens) >= 5 for h in run(model, src, mask, BOS, EOS, limits, min_length=5, **kwargs))


def test_beam_unchanged_with_min_length_zero() -> None:
    """min_length=0 (and the default) leaves beam search's outputs and scores exactly as they were."""
    model, (src, mask, limits) = random_model(), sources()
    for kwargs in ({}, {"length_penalty": 0.6, "no_repeat_ngram": 2}):
        plain = beam_search(model, src, mask, BOS, EOS, limits * 2, beam=4, **kwargs)
        zero = beam_search(model, src, mask, BOS, EOS, limits * 2, beam=4, min_length=0, **kwargs)
        assert [(h.tokens, h.score) for h in plain] == [(h.tokens, h.score) for h in zero]
    # and equal to the tokens this test pinned before min_length existed (seeded model and sources)
    assert [h.tokens for h in beam_search(model, src, mask, BOS, EOS, limits, beam=4)] == BEAM4_TOKENS


def test_greedy_no_repeat_ngram() -> None:
    """Greedy decoding honours no_repeat_ngram too: no bigram occurs twice in an output."""
    model, (src, mask, limits) = random_model(tie=True), sources()
    unconstrained = greedy(model, src, mask, BOS, EOS, limits * 3)
    repeats = [len(set(zip(h.tokens, h.tokens[1:]))) < len(h.tokens) - 1 for h in unconstrained]
    assert any(repeats)  # the tied random model repeats itself without the ban
    for h in greedy(model, src, mask, BOS, EOS, limits * 3, no_repeat_ngram=2):
        grams = list(zip(h.tokens, h.tokens[1:]))
        assert len(grams) == len(set(grams))


def test_length_penalty_favours_longer_beams() -> None:
    """A larger length penalty divides by a larger power of the length: outputs get no shorter on the whole."""
    model, (src, mask, _) = random_model(), sources()
    limits = torch.full((6,), 16)
    short = beam_search(model, src, mask, BOS, EOS, limits, beam=4, length_penalty=0.0)
    long = beam_search(model, src, mask, BOS, EOS, limits, beam=4, length_penalty=2.0)
    assert sum(len(h.tokens) for h in long) >= sum(len(h.tokens) for h in short)
