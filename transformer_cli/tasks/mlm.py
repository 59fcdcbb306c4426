"""Masked-language modelling on unlabelled text, as BERT pretrains: hide tokens, predict them.

Each training batch draws its own masks: `mask_prob` of the real, non-special tokens (or of the whole
words, with `whole_words`) are chosen; of those 80 % become [MASK], 10 % a random token, 10 % stay, and
the loss is computed on the chosen positions only. Held-out text is masked the same way from draws fixed by
`eval_seed`, each example's and position's own, so every evaluation scores the same positions whatever its
batch size, and perplexities compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics.tokens import TokenMetrics
from transformer_cli.model import Encoder, MaskedLMModel
from transformer_cli.tasks.common import Rows, Where, encode_rows, one_per_row

IGNORE = -100  # label of positions that are not predicted; the loss's ignore_index must be this value
MASK_TOKENS = ("[MASK]", "<mask>")  # tformer's own vocabulary, and BERT's / RoBERTa's
WORD_START = ("▁", "Ġ")  # markers of a word's first piece (SentencePiece-style BPE, byte-level BPE)
# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "token_accuracy": "max", "perplexity": "min"}
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"tokens": list[str], "mask_id": int, "special_ids": list[int], "word_start": str}


@dataclass
class MLMConfig:
    """Settings of masked-language modelling."""

    name: str = "mlm"
    mask_prob: float = 0.15  # share of the real tokens (or words) chosen for prediction
    replace_mask: float = 0.8  # of the chosen: replaced by [MASK]
    replace_random: float = 0.1  # of the chosen: replaced by a random token (the rest stay as they are)
    whole_words: bool = False  # choose whole words: every piece of a chosen word is predicted
    eval_seed: int = 0  # the fixed masks of held-out text


class MLMTask:
    """Chooses and hides tokens, builds the encoder with a token head, scores the hidden tokens."""

    loss_kind = "index"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.tokens: list[str] = list(state["tokens"])
        self.mask_id = int(state["mask_id"])
        self.special = torch.tensor(sorted(state["special_ids"]), dtype=torch.long)
        self.continues = torch.tensor([_continues(t, state["word_start"]) for t in self.tokens])  # (V,) bool
        self.word_start = state["word_start"]
        if not 0.0 < cfg.mask_prob < 1.0:
            raise TformerError(f"task.mask_prob must be in (0, 1), got {cfg.mask_prob}")
        if cfg.replace_mask < 0 or cfg.replace_random < 0 or cfg.replace_mask + cfg.replace_random > 1:
            raise TformerError("task.replace_mask and task.replace_random must be >= 0 and add up to at most 1")

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """What masking needs from the input tokenizer: its tokens, its mask token and its special tokens."""
        if tokenizer is None:
            raise TformerError("task=mlm needs the input tokenizer to learn its state")
        mask_id = next((tokenizer.token_to_id(t) for t in MASK_TOKENS if tokenizer.token_to_id(t) is not None), None)
        if mask_id is None:
            raise TformerError(f"the tokenizer has no mask token ({' or '.join(MASK_TOKENS)})",
                               hint="a pretrained model for task=mlm must have one; of tformer's own vocabularies, only those "
                                    "trained for task=mlm have [MASK] (model.init_from a classify or seq2seq run "
                                    "cannot continue as task=mlm)")
        vocab = tokenizer.get_vocab()
        tokens = [""] * max(tokenizer.get_vocab_size(), max(vocab.values()) + 1)  # ids may have gaps
        for token, i in vocab.items():
            tokens[i] = token
        special = [i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special]
        marker = next((m for m in WORD_START if sum(t.startswith(m) for t in tokens) > len(tokens) // 10), "")
        return {"tokens": tokens, "mask_id": mask_id, "special_ids": sorted(special), "word_start": marker}

    def build_model(self, model_cfg: Any, vocab_size: int) -> MaskedLMModel:
        """The encoder and a token head tied to its embeddings."""
        return MaskedLMModel(Encoder(vocab_size, model_cfg), model_cfg.norm_eps)

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """One input per row and its target (see encode_targets)."""
        return encode_rows(rows, tokenizer, labelled, self.encode_targets)

    def encode_targets(self, values: Sequence[Any], where: Where) -> Tensor:
        """No labels: the text is its own target. (N,) zeros, so batches carry something."""
        return torch.zeros(len(values), dtype=torch.long)

    def loss_context(self, targets: Tensor) -> LossContext:
        """The vocabulary is the set of classes."""
        return LossContext(num_outputs=len(self.tokens))

    def forward(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mask the batch (fresh masks in training, fixed ones otherwise): ((M, V) logits, (M,) original tokens)."""
        draw = fixed_draws(batch.index, batch.input_ids.shape[1], self.cfg.eval_seed) if not model.training \
            else torch.rand((*batch.input_ids.shape, 3), device=batch.input_ids.device)
        ids, chosen = self.mask(batch.input_ids, batch.mask, draw.to(batch.input_ids.device))
        return model(ids, batch.mask, chosen), batch.input_ids[chosen]

    def mask(self, ids: Tensor, real: Tensor, draw: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids with the chosen positions hidden, and the (B, T) bool chosen positions, from (B, T, 3)
        uniform draws: whether to choose, how to hide, which random token."""
        candidates = real & ~torch.isin(ids, self.special.to(ids.device))
        choose = draw[..., 0]
        if self.cfg.whole_words:  # every piece of a word takes its first piece's draw
            starts = ~self.continues.to(ids.device)[ids] | ~candidates  # (B, T)
            first = (torch.arange(ids.shape[1], device=ids.device) * starts).cummax(1).values
            choose = choose.gather(1, first)
        chosen = candidates & (choose < self.cfg.mask_prob)
        how = draw[..., 1]
        hidden = ids.clone()
        hidden[chosen & (how < self.cfg.replace_mask)] = self.mask_id
        swap = chosen & (how >= self.cfg.replace_mask) & (how < self.cfg.replace_mask + self.cfg.replace_random)
        random_ids = (draw[..., 2] * len(self.tokens)).long().clamp(max=len(self.tokens) - 1)
        hidden[swap] = random_ids[swap]
        return hidden, chosen

    def loss_inputs(self, outputs: tuple[Tensor, Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """(M, V) logits of the chosen positions and their (M,) original tokens."""
        logits, labels = outputs
        return logits.float(), labels

    def new_metrics(self, side: Sequence[Any] | None = None) -> TokenMetrics:
        """Accuracy and perplexity on the hidden tokens."""
        return TokenMetrics()

    def observe(self, metrics: TokenMetrics, model: nn.Module, batch: Batch, outputs: tuple[Tensor, Tensor]) -> None:
        """Add one batch's hidden tokens."""
        logits, labels = outputs
        metrics.update(logits.cpu(), labels.cpu())

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """Fill in the [MASK] tokens of each text: for each, its position and the k most probable tokens."""
        chosen = (batch.input_ids == self.mask_id) & batch.mask
        logits = model(batch.input_ids, batch.mask, chosen)[:, : len(self.tokens)]  # (M, V): the tokenizer's ids
        probs = torch.softmax(logits.float(), -1).cpu()  # (M, V)
        best = probs.topk(max(1, top_k), dim=-1)
        rows, cols = chosen.nonzero(as_tuple=True)
        records: list[dict[str, Any]] = [{"masks": []} for _ in range(len(batch.input_ids))]
        for k, (row, col) in enumerate(zip(rows.tolist(), cols.tolist())):
            top = [{"token": self.tokens[i], "probability": p}
                   for p, i in zip(best.values[k].tolist(), best.indices[k].tolist())]
            records[row]["masks"].append({"position": col, "top_k": top})
        return records

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One input per row: the records as they are."""
        return one_per_row(records, encoded)

    def readout(self) -> None:
        """A fill-mask model is used through predict (or as the start of another task), not exported."""
        return None

    def final_decoding(self) -> None:
        """Nothing to switch: every evaluation masks the same positions."""

    def describe(self) -> str:
        """The masking, for `tformer plan`."""
        unit = "words" if self.cfg.whole_words else "tokens"
        keep = 1 - self.cfg.replace_mask - self.cfg.replace_random
        return (f"masked-language modelling: {self.cfg.mask_prob:.0%} of the {unit} predicted "
                f"({self.cfg.replace_mask:.0%} [MASK], {self.cfg.replace_random:.0%} random, {keep:.0%} kept); "
                f"vocabulary {len(self.tokens):,}")

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"tokens": self.tokens, "mask_id": self.mask_id, "special_ids": self.special.tolist(),
                "word_start": self.word_start}


def _continues(token: str, word_start: str) -> bool:
    """Whether a token continues the word before it: WordPiece's "##" pieces, or pieces without the word-start
    marker of a BPE vocabulary that has one."""
    if token.startswith("##"):
        return True
    return bool(word_start) and not token.startswith(word_start)


def fixed_draws(index: Tensor, length: int, seed: int) -> Tensor:
    """(B, T, 3) uniform draws that depend only on (seed, example index, position), never on the batching,
    so a held-out text is masked the same way whatever batch size or padding evaluates it."""
    example = _mix((index.long().cpu() + seed * 1_000_003) & _LOW32)  # (B,)
    slot = torch.arange(length * 3, dtype=torch.long).view(length, 3)  # (T, 3): position * 3 + draw
    bits = _mix(_mix(example.view(-1, 1, 1) ^ slot) ^ 0x5BD1E995)  # (B, T, 3)
    return bits.double().div(2.0**32).float()


_LOW32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensors holding values below 2**32; products stay below 2**63)."""
    x = x & _LOW32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _LOW32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _LOW32
    return (x >> 16) ^ x
