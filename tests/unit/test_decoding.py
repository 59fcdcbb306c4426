"""Seq2seq decoding: beam 1 equals greedy, the key/value cache changes nothing, limits, minimum lengths,
length penalty and no-repeat n-grams; outputs and scores pinned on a seeded model."""

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


def random_model(seed: int = 0, tie: bool = False, copy: bool = False) -> Seq2SeqModel:
    """An untrained model whose outputs vary with the input (a wide random output projection); with copy=True,
    one vocabulary of 50 ids and copy attention."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0, tie_embeddings=tie)
    if copy:
        return Seq2SeqModel(50, 50, cfg, shared_vocab=True, copy=True).eval()
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


@pytest.mark.parametrize("copy", [False, True], ids=["plain", "copy"])
@pytest.mark.parametrize("beam", [1, 4])
def test_cache_changes_nothing(beam: int, copy: bool) -> None:
    """Decoding with the key/value cache equals recomputing every prefix, token for token; for a copying model
    too (its memory's copy keys and source ids follow the beams)."""
    model, (src, mask, limits) = random_model(copy=copy), sources()
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
    return eos_biased_model(1e4)


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


def eos_biased_model(bias: float) -> Seq2SeqModel:
    """random_model() with `bias` added to EOS's logit: > 0 ends hypotheses early, -1e4 never lets EOS win."""
    model = random_model(tie=False)
    proj = torch.nn.Linear(model.proj.in_features, model.proj.out_features)
    with torch.no_grad():
        proj.weight.copy_(model.proj.weight)
        proj.bias.zero_()
        proj.bias[EOS] = bias
    model.proj = proj
    return model


# name -> (EOS bias, the eos id decoding is given, keyword arguments); beam_search when "beam" is given.
# eos=-1: no token ends a hypothesis (the benchmark's forced full length; the forced token is the last id).
PINNED_CASES: dict[str, tuple[float, int, dict[str, float]]] = {
    "beam4": (0.0, EOS, {"beam": 4}),
    "beam4_penalty_ngram_min": (0.0, EOS, {"beam": 4, "length_penalty": 0.6, "no_repeat_ngram": 2, "min_length": 3}),
    "beam4_early_eos_penalty2": (2.0, EOS, {"beam": 4, "length_penalty": 2.0}),
    "beam3_min4_ngram3": (2.0, EOS, {"beam": 3, "length_penalty": 0.6, "min_length": 4, "no_repeat_ngram": 3}),
    "beam4_eos_never_wins": (-1e4, EOS, {"beam": 4, "length_penalty": 0.6}),
    "beam4_no_eos_token": (0.0, -1, {"beam": 4, "length_penalty": 0.6}),
    "greedy": (0.0, EOS, {}),
    "greedy_ngram_min": (0.0, EOS, {"no_repeat_ngram": 2, "min_length": 3}),
    "greedy_early_eos": (2.0, EOS, {}),
    "greedy_eos_never_wins": (-1e4, EOS, {}),
    "greedy_no_eos_token": (0.0, -1, {}),
}
# The outputs (tokens, score) of every case, recorded from the list-based beam search this file first tested,
# with limits twice sources()'s: any rewrite of the decoding loops must return exactly these.
PINNED = {
    "beam4": [
        ([15, 32, 15, 28, 15, 24, 2, 32, 15, 18, 15, 32, 15, 32, 15, 28, 15, 36, 28, 15, 36, 28, 15], -10.798697471618652),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15], -2.216644763946533),
        ([37, 6, 15], -0.8523313999176025),
        ([15, 32, 15], -1.4491734504699707),
        ([37, 28, 16, 28, 16, 2, 32, 15, 32, 15, 32, 15, 32, 15, 32, 15, 28, 16, 28, 16, 28, 16, 28], -8.070810317993164),
        ([15, 32, 15, 15, 13], -2.5815272331237793),
    ],
    "beam4_penalty_ngram_min": [
        ([15, 32, 15], -1.9510294198989868),
        ([15, 32, 15], -3.038970708847046),
        ([37, 6, 15], -0.8523313999176025),
        ([15, 32, 15], -1.4491734504699707),
        ([37, 28, 16, 0, 15, 32, 15], -5.318506240844727),
        ([15, 32, 15, 15, 13], -2.5815272331237793),
    ],
    "beam4_early_eos_penalty2": [
        ([15, 32, 15], -0.9384570717811584),
        ([15, 32, 15, 32, 15, 32, 15], -2.8141024112701416),
        ([37, 6, 15], -0.729955792427063),
        ([15, 32, 15], -1.9720866680145264),
        ([37, 28, 16, 28, 16, 12, 13, 0, 15, 32, 15, 32, 15, 32, 15, 32, 15, 18, 15], -9.093486785888672),
        ([15, 32, 15, 15, 13], -3.1580467224121094),
    ],
    "beam3_min4_ngram3": [
        ([15, 32, 15, 28, 15], -3.5667104721069336),
        ([15, 32, 15, 9, 15, 12, 9, 15], -4.8937788009643555),
        ([37, 27, 14, 22, 16, 12, 12, 12, 6, 15], -5.718784332275391),
        ([37, 27, 23, 18, 15], -4.280362129211426),
        ([37, 28, 16, 28, 16, 2, 32, 15], -4.085658550262451),
        ([15, 32, 15, 15, 13], -3.1580467224121094),
    ],
    "beam4_eos_never_wins": [
        ([15, 32, 15, 28, 15, 32, 15, 32, 15, 18, 15, 32, 15, 32, 15, 18, 15, 36, 28, 15, 36, 28, 15], -9.343017578125),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15], -1.9481643438339233),
        ([37, 6, 15, 4, 15, 13, 0, 15, 12, 6, 15, 12, 15, 12, 15, 15, 12, 6, 15, 12, 6, 15, 22], -8.497413635253906),
        ([15, 32, 15, 21, 16, 12, 13, 0, 15, 22, 2, 32, 15, 32, 15], -4.807839870452881),
        ([37, 28, 16, 28, 16, 2, 32, 15, 32, 15, 32, 15, 32, 15, 32, 15, 28, 16, 28, 16, 28, 16, 28], -7.606690883636475),
        ([15, 32, 15, 15, 13], -2.476745367050171),
    ],
    "beam4_no_eos_token": [
        ([15, 32, 15, 5, 28, 15, 32, 15, 32, 15, 32, 15, 32, 15, 32, 15, 18, 15, 36, 28, 15, 36, 28, 39], -9.074971199035645),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39], -2.216644763946533),
        ([37, 6, 15, 5, 15, 5, 15, 5, 15, 13, 15, 12, 12, 15, 15, 12, 6, 15, 12, 6, 15, 5, 15, 39], -7.2208147048950195),
        ([15, 32, 15, 5, 28, 15, 32, 15, 5, 15, 32, 15, 32, 15, 32, 39, 39, 39, 39, 39, 39, 39, 39, 39], -4.1638689041137695),
        ([37, 28, 16, 28, 16, 2, 32, 15, 32, 15, 32, 15, 32, 15, 32, 15, 28, 16, 28, 16, 28, 16, 28, 39], -8.070810317993164),
        ([15, 32, 15, 15, 13, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39], -2.5815272331237793),
    ],
    "greedy": [
        ([15, 32, 15, 28, 15, 24, 2, 32, 15, 18, 15, 32, 15, 32, 15, 28, 15, 36, 28, 15, 36, 28, 15], -10.798697471618652),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15], -2.216644763946533),
        ([37, 6, 15], -0.8523313999176025),
        ([15, 32, 15], -1.4491734504699707),
        ([37, 28, 16, 28, 16, 12, 28, 15, 32, 15, 32, 15, 32, 15, 32, 15, 18, 15, 36, 28, 16, 28, 16], -8.924055099487305),
        ([15, 32, 15, 13, 15], -2.728656768798828),
    ],
    "greedy_ngram_min": [
        ([15, 32, 15, 28, 15, 24, 2, 32, 28, 16, 12, 15, 12, 9, 15, 15, 36, 28, 28, 9, 28, 36, 15], -48.71895980834961),
        ([15, 32, 15, 36, 15, 12, 9, 15], -5.577694892883301),
        ([37, 6, 15], -0.8523313999176025),
        ([15, 32, 15], -1.4491734504699707),
        ([37, 28, 16, 28, 15, 32, 15], -6.1568803787231445),
        ([15, 32, 15, 13, 15], -2.728656768798828),
    ],
    "greedy_early_eos": [
        ([15, 32, 15], -0.9384570717811584),
        ([15, 32, 15], -1.3936071395874023),
        ([37, 6, 15], -0.729955792427063),
        ([15], -0.9702068567276001),
        ([37, 28, 16, 28, 16, 12, 28, 15], -4.095625877380371),
        ([15, 32, 15, 13, 15], -3.2540109157562256),
    ],
    "greedy_eos_never_wins": [
        ([15, 32, 15, 28, 15, 24, 2, 32, 15, 18, 15, 32, 15, 32, 15, 28, 15, 36, 28, 15, 36, 28, 15], -10.2598876953125),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15], -1.9481643438339233),
        ([37, 6, 15, 4, 15, 13, 0, 15, 12, 6, 15, 12, 15, 12, 15, 15, 12, 6, 15, 12, 6, 15, 22], -8.497413635253906),
        ([15, 32, 15, 13, 24, 15, 13, 0, 15, 22, 2, 15, 32, 15, 12], -8.127315521240234),
        ([37, 28, 16, 28, 16, 12, 28, 15, 32, 15, 32, 15, 32, 15, 32, 15, 18, 15, 36, 28, 16, 28, 16], -8.31893539428711),
        ([15, 32, 15, 13, 15], -2.6321256160736084),
    ],
    "greedy_no_eos_token": [
        ([15, 32, 15, 28, 15, 24, 2, 32, 15, 18, 15, 32, 15, 32, 15, 28, 15, 36, 28, 15, 36, 28, 15, 39], -10.798697471618652),
        ([15, 32, 15, 32, 15, 32, 15, 32, 15, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39], -2.216644763946533),
        ([37, 6, 15, 5, 15, 5, 15, 5, 15, 15, 12, 12, 12, 15, 15, 15, 12, 6, 15, 5, 15, 5, 15, 39], -8.614521026611328),
        ([15, 32, 15, 5, 15, 13, 0, 15, 13, 15, 12, 15, 32, 15, 12, 39, 39, 39, 39, 39, 39, 39, 39, 39], -9.336713790893555),
        ([37, 28, 16, 28, 16, 12, 28, 15, 32, 15, 32, 15, 32, 15, 32, 15, 18, 15, 36, 28, 16, 28, 16, 39], -8.924055099487305),
        ([15, 32, 15, 13, 15, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39], -2.728656768798828),
    ],
}


@pytest.mark.parametrize("case", sorted(PINNED_CASES))
def test_outputs_pinned(case: str) -> None:
    """Decoding returns the recorded tokens exactly and the recorded scores within 1e-5."""
    bias, eos, kwargs = PINNED_CASES[case]
    src, mask, limits = sources()
    run = beam_search if "beam" in kwargs else greedy
    hyps = run(eos_biased_model(bias), src, mask, BOS, eos, limits * 2, **kwargs)
    assert [h.tokens for h in hyps] == [t for t, _ in PINNED[case]]
    assert [h.score for h in hyps] == pytest.approx([s for _, s in PINNED[case]], abs=1e-5)


def test_pinned_cases_cover_every_ending() -> None:
    """The pinned cases include outputs ended by EOS before the limit, at the limit, and by a forced EOS."""
    limits = [int(n) * 2 for n in sources()[2]]
    lengths = {case: [len(t) for t, _ in rows] for case, rows in PINNED.items()}
    assert any(n < limit - 1 for n, limit in zip(lengths["beam4_early_eos_penalty2"], limits))
    assert lengths["beam4_eos_never_wins"] == [limit - 1 for limit in limits]
    assert lengths["beam4_no_eos_token"] == [max(limits)] * len(limits)
