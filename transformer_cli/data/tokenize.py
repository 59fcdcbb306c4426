"""A subword vocabulary trained on the training split with `tokenizers`, saved with the run."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from transformer_cli.errors import TformerError

PAD, UNK, CLS, SEP, BOS, EOS, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]", "[MASK]"
SPECIALS = [PAD, UNK, CLS, SEP, BOS, EOS]  # PAD is id 0, the padding id everywhere
PAD_ID = 0


def train_tokenizer(texts: Sequence[str], cfg: Any, extra: Sequence[str] = ()) -> Tokenizer:
    """Learn a BPE or WordPiece vocabulary from `texts` and set truncation and [CLS]/[SEP] framing; `extra`
    special tokens (a task's own, e.g. [MASK]) follow tformer's."""
    return train_tokenizer_on(_chunks(texts), cfg, extra)


def train_tokenizer_on(batches: Iterable[list[str]], cfg: Any, extra: Sequence[str] = ()) -> Tokenizer:
    """train_tokenizer over texts that arrive in batches (a corpus read a chunk at a time)."""
    specials = [*SPECIALS, *extra]
    if cfg.kind == "wordpiece":
        # WordPiece marks continuations with "##"; the trainer numbers those symbols in hash order, so the
        # vocabulary can differ between two processes on the same text (not reproducible: see docs/reliability.md).
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=specials, show_progress=False)
        tok.decoder = decoders.WordPiece()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        # SentencePiece-style BPE: "▁" marks word starts inside the text, so no continuation prefix is
        # needed; that keeps training deterministic (same text, same vocabulary, in any process) and
        # decoding exact. Punctuation is split off after the spaces are marked, so nothing is lost.
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=specials, show_progress=False)
        tok.decoder = decoders.Metaspace()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.train_from_iterator(batches, trainer=trainer)
    return frame(tok, cfg.max_length)


def frame(tok: Tokenizer, max_length: int) -> Tokenizer:
    """[CLS] A [SEP] (B [SEP]) framing and truncation to max_length tokens."""
    cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls), (SEP, sep)]
    )
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()  # padding happens per batch, in collation
    return tok


def _chunks(texts: Sequence[str], size: int = 1000) -> Iterator[list[str]]:
    """Feed the trainer in batches, which `tokenizers` processes in parallel."""
    for i in range(0, len(texts), size):
        yield list(texts[i : i + size])


def encode(tok: Tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[np.ndarray]:
    """Texts (and pairs) -> one int32 id array per example, framed and truncated."""
    inputs = list(texts) if pairs is None else list(zip(texts, pairs))
    return [np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(inputs)]


def encode_flat(tok: Tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None,
                dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Texts (and pairs) -> all ids end to end (total,) and each example's length (N,): what encode gives,
    without one array per example; `tokenizers` encodes the batch in parallel."""
    inputs = list(texts) if pairs is None else list(zip(texts, pairs))
    ids = [e.ids for e in tok.encode_batch(inputs)]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum())), lengths


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write the tokenizer as JSON (no code, safe to load)."""
    tok.save(str(path))


def load_tokenizer(path: Path, trained: bool = True) -> Tokenizer:
    """Read a tokenizer JSON written by save_tokenizer (`trained`: one tformer trained, [PAD] at id 0; else a
    pretrained model's own)."""
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:
        raise TformerError(f"cannot read tokenizer {path}: {err}") from err
    if trained and tok.token_to_id(PAD) != PAD_ID:
        raise TformerError(f"tokenizer {path} does not have {PAD} at id {PAD_ID}; it was not written by tformer")
    return tok
