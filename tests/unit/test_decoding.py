"""Seq2seq decoding: beam 1 equals greedy, the key/value cache changes nothing, limits and no-repeat n-grams."""

from __future__ import annotations

import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.decoding import beam_search, greedy
from transformer_cli.model import Seq2SeqModel

BOS, EOS = 4, 5


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
