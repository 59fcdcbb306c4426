"""The tokenizer: [CLS]/[SEP] framing, pairs, truncation, lowercasing, PAD at 0, save/load, int32 ids."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from transformer_cli.config import TokenizerConfig
from transformer_cli.data.tokenize import (
    CLS,
    PAD,
    PAD_ID,
    SEP,
    SPECIALS,
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from transformer_cli.errors import TformerError

MAX_LEN = 16
KINDS = ["bpe", "wordpiece"]


def corpus() -> list[str]:
    """240 varied sentences, some capitalised, built from small word lists."""
    subjects = ["the cat", "a dog", "my neighbour", "the old farmer", "Anna", "the committee", "our team", "Bob"]
    verbs = ["watched", "painted", "ignored", "celebrated", "repaired", "described"]
    objects = ["the river", "a broken window", "the yellow house", "every morning", "the long film"]
    tails = ["quickly.", "with great care!", "before sunset.", "again and again?", "for no reason."]
    sentences = []
    for i, (s, v, o) in enumerate(itertools.product(subjects, verbs, objects)):
        text = f"{s} {v} {o} {tails[i % len(tails)]}"
        sentences.append(text.capitalize() if i % 3 == 0 else text)
    return sentences


def config(kind: str, lowercase: bool = True, max_length: int = MAX_LEN) -> TokenizerConfig:
    """A small vocabulary that the corpus fills."""
    return TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1, lowercase=lowercase, max_length=max_length)


@pytest.fixture(scope="module", params=KINDS)
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    """A tokenizer of each kind, trained once per module."""
    return train_tokenizer(corpus(), config(request.param))


def ids_of(tok: Tokenizer, text: str, pair: str | None = None) -> list[int]:
    """The framed ids of one text (or pair) as a list."""
    return encode(tok, [text], None if pair is None else [pair])[0].tolist()


def test_specials_and_pad_id(tok: Tokenizer) -> None:
    """[PAD] is id 0 and the special tokens come first, in SPECIALS order."""
    assert tok.token_to_id(PAD) == PAD_ID == 0
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    assert 50 < tok.get_vocab_size() <= 300


def test_single_framing(tok: Tokenizer) -> None:
    """A single text is [CLS] pieces [SEP], with no special token inside and no UNK for seen words."""
    cls, sep, unk = tok.token_to_id(CLS), tok.token_to_id(SEP), tok.token_to_id("[UNK]")
    for text in corpus()[:20] + ["the cat painted the river"]:
        ids = ids_of(tok, text)
        assert ids[0] == cls and ids[-1] == sep
        assert all(i >= len(SPECIALS) for i in ids[1:-1]) and unk not in ids
        assert len(ids) > 2


def test_pair_framing(tok: Tokenizer) -> None:
    """A pair is [CLS] A [SEP] B [SEP], the pieces of each text as when encoded alone."""
    cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
    a, b = "the cat watched", "a dog repaired the house"
    inner_a, inner_b = ids_of(tok, a)[1:-1], ids_of(tok, b)[1:-1]
    assert ids_of(tok, a, b) == [cls, *inner_a, sep, *inner_b, sep]
    type_ids = tok.encode(a, b).type_ids
    assert type_ids == [0] * (len(inner_a) + 2) + [1] * (len(inner_b) + 1)


def test_truncation_single_and_pair(tok: Tokenizer) -> None:
    """Long texts and pairs are cut to max_length, keeping the framing tokens."""
    cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
    long = " ".join(corpus()[:10])
    ids = ids_of(tok, long)
    assert len(ids) == MAX_LEN and ids[0] == cls and ids[-1] == sep and ids.count(sep) == 1
    pair = ids_of(tok, long, long)
    assert len(pair) == MAX_LEN and pair[0] == cls and pair[-1] == sep and pair.count(sep) == 2
    short = ids_of(tok, "the cat")
    short_long = ids_of(tok, "the cat", long)  # the long side gives way, the short side survives whole
    assert len(short_long) == MAX_LEN and short_long[: len(short)] == short


@pytest.mark.parametrize("kind", KINDS)
def test_lowercase_option(kind: str) -> None:
    """lowercase=True folds case before splitting; lowercase=False keeps it."""
    lower = train_tokenizer(corpus(), config(kind, lowercase=True))
    assert ids_of(lower, "The CAT Watched The River") == ids_of(lower, "the cat watched the river")
    cased = train_tokenizer(corpus(), config(kind, lowercase=False))
    assert ids_of(cased, "The cat") != ids_of(cased, "the cat")
    assert any(piece != piece.lower() for piece in cased.get_vocab())
    assert all(piece == piece.lower() for piece in lower.get_vocab() if piece not in SPECIALS)


def test_encode_returns_int32_arrays(tok: Tokenizer) -> None:
    """encode gives one int32 array per example, for texts and for pairs."""
    texts = corpus()[:5]
    for out in (encode(tok, texts), encode(tok, texts, texts[::-1])):
        assert len(out) == 5
        assert all(isinstance(x, np.ndarray) and x.dtype == np.int32 and x.ndim == 1 for x in out)
    assert encode(tok, texts)[2].tolist() == tok.encode(texts[2]).ids


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    """A saved tokenizer loads back and encodes texts and pairs to identical ids, truncation included."""
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    again = load_tokenizer(path)
    texts = corpus()[::7] + [" ".join(corpus()[:10]), "Unseen Words: zebra quokka!"]
    pairs = texts[::-1]
    for a, b in zip(encode(tok, texts), encode(again, texts)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(encode(tok, texts, pairs), encode(again, texts, pairs)):
        np.testing.assert_array_equal(a, b)
    assert max(len(x) for x in encode(again, texts, pairs)) == MAX_LEN


@pytest.mark.parametrize("content", ["not json at all", "{}", json.dumps({"model": {"type": "Nope"}})])
def test_load_garbage_raises(tmp_path: Path, content: str) -> None:
    """A file that is not a tokenizer is a TformerError, not a raw exception."""
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TformerError, match="cannot read tokenizer"):
        load_tokenizer(path)


def test_load_missing_file_raises(tmp_path: Path) -> None:
    """A missing file is a TformerError."""
    with pytest.raises(TformerError):
        load_tokenizer(tmp_path / "absent.json")


def test_load_foreign_tokenizer_raises(tmp_path: Path) -> None:
    """A valid tokenizer whose id 0 is not [PAD] was not written by us and is refused."""
    vocab = {"[UNK]": 0, PAD: 1, CLS: 2, SEP: 3, "hello": 4}
    foreign = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "foreign.json"
    foreign.save(str(path))
    with pytest.raises(TformerError, match=r"\[PAD\]"):
        load_tokenizer(path)
    no_pad = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    no_pad.save(str(path))
    with pytest.raises(TformerError, match=r"\[PAD\]"):
        load_tokenizer(path)
