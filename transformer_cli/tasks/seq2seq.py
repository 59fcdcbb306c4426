"""Sequence-to-sequence: an encoder-decoder trained with teacher forcing, evaluated by decoding.

The target side has its own subword vocabulary (trained on the training targets, stored in task.json
as JSON). Targets are framed [BOS] target [EOS]; the decoder reads [BOS] target and predicts target [EOS].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer, processors
from torch import Tensor, nn

from transformer_cli.config import TokenizerConfig
from transformer_cli.data.batching import Batch
from transformer_cli.data.tokenize import BOS, EOS, PAD_ID, train_tokenizer
from transformer_cli.decoding import Hypothesis, beam_search, greedy
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics import Seq2SeqMetrics
from transformer_cli.model import Seq2SeqModel
from transformer_cli.tasks.common import Where, is_missing

IGNORE = -100  # label of padding positions; the loss's ignore_index must be this value


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
    eval_decode_every: int = 1  # training-time evaluations decode every k-th example (by dataset index, so
    #                             the sample spans all lengths); the final evaluation decodes all
    length_penalty: float = 1.0  # beam scores are divided by length**length_penalty
    max_len_a: float = 1.5  # a target may have at most a x source tokens + b tokens
    max_len_b: int = 10
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size (0 = off)


class Seq2SeqTask:
    """Encodes target text, builds the encoder-decoder, scores tokens and decodes for text metrics."""

    loss_kind = "index"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        try:
            self.tokenizer = frame_target(Tokenizer.from_str(state["target_tokenizer"]), cfg.target_max_length)
        except Exception as err:
            raise TformerError(f"cannot read the target tokenizer of this task: {err}") from err
        self.bos, self.eos = self.tokenizer.token_to_id(BOS), self.tokenizer.token_to_id(EOS)
        self.decode_every: int = max(1, cfg.eval_decode_every)  # run.py sets 1 for final evaluations
        self.beam: int = cfg.eval_beam_size

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str) -> dict[str, Any]:
        """Train the target vocabulary on the training targets."""
        texts = [str(v) for v in values if not is_missing(v) and str(v).strip()]
        if not texts:
            raise TformerError(f"the training targets are all empty ({source})", hint="check data.label_column")
        tok_cfg = TokenizerConfig(vocab_size=cfg.target_vocab_size, min_frequency=cfg.target_min_frequency,
                                  lowercase=cfg.target_lowercase, max_length=cfg.target_max_length)
        return {"target_tokenizer": train_tokenizer(texts, tok_cfg).to_str()}

    @property
    def vocab_size(self) -> int:
        """Size of the target vocabulary."""
        return self.tokenizer.get_vocab_size()

    def build_model(self, model_cfg: Any, src_vocab: int) -> Seq2SeqModel:
        """The encoder-decoder (the task replaces the classification head)."""
        return Seq2SeqModel(src_vocab, self.vocab_size, model_cfg)

    def head(self, d_model: int) -> nn.Module:
        """Seq2seq has no pooling head; build_model makes the whole model."""
        raise TformerError("task=seq2seq builds an encoder-decoder, not a head")

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

    def new_metrics(self) -> Seq2SeqMetrics:
        """Fresh token and text metrics."""
        return Seq2SeqMetrics()

    def update_metrics(self, metrics: Seq2SeqMetrics, outputs: Tensor, targets: Tensor) -> None:
        """Teacher-forced token accuracy and perplexity of one batch."""
        metrics.update_tokens(*self.loss_inputs(outputs, targets), ignore_index=IGNORE)

    def observe(self, metrics: Seq2SeqMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Token metrics, then decode the batch (every k-th example while training) for the text metrics."""
        self.update_metrics(metrics, outputs, batch.targets)
        keep = batch.index % self.decode_every == 0  # (B,) a sample spread over lengths, not the shortest
        if not bool(keep.any()):
            return
        hyps = self.generate(model, batch.input_ids[keep], batch.mask[keep], self.beam)
        refs = [self.decode(row) for row in batch.targets[keep].tolist()]
        metrics.update_text([self.decode(h.tokens) for h in hyps], refs)

    def generate(self, model: nn.Module, src: Tensor, mask: Tensor, beam: int) -> list[Hypothesis]:
        """Decode sources: greedy for beam 1, else beam search; lengths capped at a x source + b."""
        max_lens = (mask.sum(1).float() * self.cfg.max_len_a + self.cfg.max_len_b).ceil().long()
        max_lens = max_lens.clamp(max=self.cfg.target_max_length - 1)
        was_training = model.training
        model.eval()
        try:
            if beam <= 1:
                return greedy(model, src, mask, self.bos, self.eos, max_lens)
            return beam_search(model, src, mask, self.bos, self.eos, max_lens, beam=beam,
                               length_penalty=self.cfg.length_penalty,
                               no_repeat_ngram=self.cfg.no_repeat_ngram_size)
        finally:
            model.train(was_training)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, without special tokens or padding."""
        return self.tokenizer.decode([i for i in ids if i != PAD_ID], skip_special_tokens=True)

    def describe_generation(self, model: nn.Module, batch: Batch, beam: int | None = None) -> list[dict[str, Any]]:
        """Prediction records: the generated text, its log-probability and per-token average."""
        hyps = self.generate(model, batch.input_ids, batch.mask, beam or self.cfg.beam_size)
        return [{"text": self.decode(h.tokens), "score": h.score,
                 "score_per_token": h.score / max(1, len(h.tokens) + 1)} for h in hyps]

    def use_final_decoding(self) -> None:
        """Decode every example with the full beam (final evaluation, eval, predict)."""
        self.decode_every = 1
        self.beam = self.cfg.beam_size

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"target_tokenizer": self.tokenizer.to_str()}


def frame_target(tok: Tokenizer, max_length: int) -> Tokenizer:
    """[BOS] target [EOS] framing and truncation."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok
