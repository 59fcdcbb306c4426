"""Sequence-to-sequence: an encoder-decoder trained with teacher forcing, evaluated by decoding.

The target side has its own subword vocabulary (trained on the training targets, stored in task.json
as JSON), or with task.shared_vocab the source tokenizer itself, so that the model can copy source tokens
(task.copy_attention). Targets are framed [BOS] target [EOS]; the decoder reads [BOS] target and predicts target [EOS].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, processors
from torch import Tensor, nn

from transformer_cli.config import TokenizerConfig
from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.data.tokenize import BOS, CLS, EOS, PAD_ID, SEP, train_tokenizer
from transformer_cli.decoding import Hypothesis, beam_search, greedy
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import Seq2SeqMetrics
from transformer_cli.model import Seq2SeqModel
from transformer_cli.tasks.common import Rows, Where, encode_rows, is_missing, one_per_row

IGNORE = -100  # label of padding positions; the loss's ignore_index must be this value
# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "token_accuracy": "max", "perplexity": "min", "bleu": "max", "chrf": "max",
           "rouge1": "max", "rouge2": "max", "rougeL": "max",  # F-measure in percent, best reference
           "exact_match": "max",
           "wer": "min",  # sources whose output matches none of their references (G2P's word error rate)
           "per": "min",  # edits to the closest reference over its units (G2P's phoneme error rate)
           "wer_single": "min", "per_single": "min"}  # the same, each (source, reference) row on its own
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"target_tokenizer": str}
# Start and end markers a target may be framed with, in order of preference: tformer's own, then BERT's
# and RoBERTa's (a pretrained tokenizer shared with the source has no [BOS]/[EOS]).
FRAMES = ((BOS, EOS), (CLS, SEP), ("<s>", "</s>"))


@dataclass
class Seq2SeqConfig:
    """Settings of the sequence-to-sequence task: target vocabulary and decoding."""

    name: str = "seq2seq"
    target_vocab_size: int = 8000  # upper bound of the target subword vocabulary
    target_min_frequency: int = 2
    target_lowercase: bool = False  # keep the reference text as it is, so metrics compare like with like
    target_max_length: int = 128  # target tokens kept, BOS and EOS included
    beam_size: int = 4  # decoding of the final evaluation, `tformer eval` and `tformer predict`
    eval_beam_size: int = 1  # decoding during training-time evaluations (1 = greedy, cheap)
    eval_decode_every: int = 1  # training-time evaluations decode one in k distinct sources (by a hash of the
    #                             source, so the sample spans all lengths); the final evaluation decodes all
    length_penalty: float = 1.0  # beam scores are divided by length**length_penalty
    max_len_a: float = 1.5  # a target may have at most a x source tokens + b tokens
    max_len_b: int = 10
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size (0 = off), greedy and beam
    min_length: int = 0  # a hypothesis cannot end before this many target tokens (EOS masked), greedy and beam
    shared_vocab: bool = False  # targets use the source tokenizer, and the decoder the encoder's token table
    #                             (input and output); target_vocab_size, _min_frequency and _lowercase then unused
    copy_attention: bool = False  # pointer-generator: each step may copy a source token (needs shared_vocab)


class Seq2SeqTask:
    """Encodes target text, builds the encoder-decoder, scores tokens and decodes for text metrics."""

    loss_kind = "index"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        try:
            tokenizer = Tokenizer.from_str(state["target_tokenizer"])
        except Exception as err:
            raise TformerError(f"cannot read the target tokenizer of this task: {err}") from err
        self.tokenizer, self.bos, self.eos = frame_target(tokenizer, cfg.target_max_length)
        self.decode_every: int = max(1, cfg.eval_decode_every)  # final_decoding() sets 1
        self.beam: int = cfg.eval_beam_size

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """Train the target vocabulary on the training targets (or take the source's, with shared_vocab)."""
        texts = [str(v) for v in values if not is_missing(v) and str(v).strip()]
        if not texts:
            raise TformerError(f"the training targets are all empty ({source})", hint="check data.label_column")
        if cfg.shared_vocab:
            if tokenizer is None:
                raise TformerError("task.shared_vocab needs the source tokenizer, and none was given")
            return {"target_tokenizer": tokenizer.to_str()}
        tok_cfg = TokenizerConfig(vocab_size=cfg.target_vocab_size, min_frequency=cfg.target_min_frequency,
                                  lowercase=cfg.target_lowercase, max_length=cfg.target_max_length)
        return {"target_tokenizer": train_tokenizer(texts, tok_cfg).to_str()}

    @property
    def vocab_size(self) -> int:
        """Size of the target vocabulary."""
        return self.tokenizer.get_vocab_size()

    def build_model(self, model_cfg: Any, vocab_size: int) -> Seq2SeqModel:
        """The encoder-decoder: source vocabulary in, target vocabulary out (one table when shared)."""
        return Seq2SeqModel(vocab_size, self.vocab_size, model_cfg, shared_vocab=self.cfg.shared_vocab,
                            copy=self.cfg.copy_attention)

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """One input per row and its target (see encode_targets); each row's side record is its source key."""
        encoded = encode_rows(rows, tokenizer, labelled, self.encode_targets)
        return Encoded(encoded.flat, encoded.lengths, encoded.targets, [source_key(t) for t in rows.texts])

    def encode_targets(self, values: Sequence[Any], where: Where) -> list[np.ndarray]:
        """Target texts -> one [BOS] ... [EOS] id array per example; a missing target is an error."""
        for i, v in enumerate(values):
            if is_missing(v) or not str(v).strip():
                raise TformerError(f"empty target at {where.at(i)}", hint="fill or drop that row")
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tokenizer.encode_batch([str(v) for v in values])]

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """Teacher forcing: (B, L-1, V) logits for the target shifted by one."""
        return model(batch.input_ids, batch.mask, batch.targets[:, :-1])

    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(B*(L-1), V) logits and (B*(L-1),) next-token labels, padding marked IGNORE."""
        labels = targets[:, 1:].masked_fill(targets[:, 1:] == PAD_ID, IGNORE)
        return outputs.reshape(-1, outputs.shape[-1]).float(), labels.reshape(-1)

    def loss_context(self, targets: Any) -> LossContext:
        """The target vocabulary size (class weights over tokens are not counted)."""
        return LossContext(num_outputs=self.vocab_size)

    def new_metrics(self, side: Sequence[Any] | None = None) -> Seq2SeqMetrics:
        """Fresh token and text metrics, sources keyed by the split's side records (their source keys)."""
        return Seq2SeqMetrics(side)

    def observe(self, metrics: Seq2SeqMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Token metrics and every row's reference; then decode each source not decoded yet (while training,
        only every k-th example's) for the text metrics. Rows of one source (a word's pronunciations) share it."""
        metrics.update_tokens(*self.loss_inputs(outputs, batch.targets), ignore_index=IGNORE)
        if metrics.keys is not None:  # the source texts' keys: rows of one text share references, no others
            sources: list[Any] = [metrics.keys[i] for i in batch.index.tolist()]
        else:  # a split encoded without keys: its sources as the model reads them (after truncation)
            sources = [tuple(ids[:n]) for ids, n in zip(batch.input_ids.tolist(), batch.mask.sum(1).tolist())]
        metrics.add_references(sources, [self.decode(row) for row in batch.targets.tolist()])
        first: dict[Any, int] = {}  # each source still to decode -> its first row here
        for i, source in enumerate(sources):
            # while training a sample of the sources, spread over lengths and not weighted by their rows
            # (the hash of an int, or of a tuple of ints, is the same in every process and run)
            if hash(source) % self.decode_every == 0 and source not in metrics.hyps:
                first.setdefault(source, i)
        if not first:
            return
        picked = torch.tensor(list(first.values()), device=batch.input_ids.device)
        hyps = self.generate(model, batch.input_ids[picked], batch.mask[picked], self.beam)
        metrics.add_hypotheses(list(first), [self.decode(h.tokens) for h in hyps])

    def generate(self, model: nn.Module, src: Tensor, mask: Tensor, beam: int) -> list[Hypothesis]:
        """Decode sources: greedy for beam 1, else beam search; lengths capped at a x source + b."""
        max_lens = (mask.sum(1).float() * self.cfg.max_len_a + self.cfg.max_len_b).ceil().long()
        max_lens = max_lens.clamp(max=self.cfg.target_max_length - 1)
        was_training = model.training
        model.eval()
        try:
            if beam <= 1:
                return greedy(model, src, mask, self.bos, self.eos, max_lens, min_length=self.cfg.min_length,
                              no_repeat_ngram=self.cfg.no_repeat_ngram_size)
            return beam_search(model, src, mask, self.bos, self.eos, max_lens, beam=beam,
                               length_penalty=self.cfg.length_penalty,
                               no_repeat_ngram=self.cfg.no_repeat_ngram_size, min_length=self.cfg.min_length)
        finally:
            model.train(was_training)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, without special tokens or padding."""
        return self.tokenizer.decode([i for i in ids if i != PAD_ID], skip_special_tokens=True)

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """One record per source: the generated text, its log-probability and per-token average (top_k does
        not apply); decoded with the task's beam_size."""
        hyps = self.generate(model, batch.input_ids, batch.mask, self.cfg.beam_size)
        return [{"text": self.decode(h.tokens), "score": h.score,
                 "score_per_token": h.score / max(1, len(h.tokens) + 1)} for h in hyps]

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One input per row: the records as they are."""
        return one_per_row(records, encoded)

    def readout(self) -> None:
        """Generation is a loop over decoder steps, not one forward pass: no single-graph export."""
        return None

    def final_decoding(self) -> None:
        """Decode every example with the full beam (final evaluation, eval)."""
        self.decode_every = 1
        self.beam = self.cfg.beam_size

    def describe(self) -> str:
        """Target vocabulary and decoding, for `tformer plan`."""
        vocab = f"target vocabulary {self.vocab_size:,} subwords"
        if self.cfg.shared_vocab:
            vocab = f"one vocabulary of {self.vocab_size:,} subwords for source and target"
            vocab += ", copy attention" if self.cfg.copy_attention else ""
        return (f"{vocab}; decoding with beam {self.cfg.beam_size} "
                f"(evaluations during training: beam {self.cfg.eval_beam_size}, every "
                f"{max(1, self.cfg.eval_decode_every)}-th example); the token, FLOP and activation-memory counts "
                "below cover the source side only")

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"target_tokenizer": self.tokenizer.to_str()}


def source_key(text: str) -> int:
    """A source text's key (62 bits of its BLAKE2 hash): rows with the same text are one source to decode."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 2


def frame_target(tok: Tokenizer, max_length: int) -> tuple[Tokenizer, int, int]:
    """[BOS] target [EOS] framing (or [CLS] ... [SEP], <s> ... </s>) and truncation; the tokenizer, BOS and EOS ids."""
    if tok.id_to_token(PAD_ID) not in ("[PAD]", "<pad>"):
        raise TformerError(f"the target tokenizer's padding token is not id {PAD_ID} (id {PAD_ID} is "
                           f"{tok.id_to_token(PAD_ID)!r}), and target padding uses id {PAD_ID}",
                           hint="use task.shared_vocab=false: the target side then gets its own vocabulary")
    for start, end in FRAMES:
        bos, eos = tok.token_to_id(start), tok.token_to_id(end)
        if bos is not None and eos is not None:
            break
    else:
        raise TformerError(f"the target tokenizer has no start and end tokens (any of {FRAMES})",
                           hint="use task.shared_vocab=false: the target side then gets its own vocabulary")
    tok.post_processor = processors.TemplateProcessing(single=f"{start} $A {end}",
                                                       special_tokens=[(start, bos), (end, eos)])
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok, bos, eos
