"""The contenders: each takes timed training steps on the shared workload and reports what each step covered.

A contender is built from the workload, then asked for blocks of timed steps (`block`), for the shape of a
full epoch of its own batching (`epoch`), and, in a fresh process, for a few steps on its largest batches
(`stress`, for peak memory). Our contender is `tformer train`'s own step: the Encoder and SequenceHead of
transformer_cli, the configured loss, optimizer and schedule, `loop.train_step`, and length-bucketed batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from transformer_cli.data.batching import Batch
from transformer_cli.device import resolve_precision
from transformer_cli.loop import train_step
from transformer_cli.losses import build_loss
from transformer_cli.model import SequenceModel
from transformer_cli.optim import build_optimizer, build_scheduler

from .flops import ModelShape, batch_flops
from .workload import Settings, Workload, epoch_batches, representative


@dataclass
class Step:
    """One timed training step and the work it covered."""

    seconds: float
    real_tokens: int
    padded_tokens: int
    real_flops: float
    padded_flops: float


@dataclass
class EpochShape:
    """A full epoch of a contender's batching: batches, real and computed (padded) tokens."""

    batches: int
    real_tokens: int
    padded_tokens: int


class Contender(Protocol):
    """What the runner needs from each contender."""

    def block(self, k: int) -> list[Step]: ...

    def epoch(self) -> EpochShape: ...

    def stress(self, n: int) -> None: ...


def model_shape(work: Workload) -> ModelShape:
    """The FLOPs formula's sizes for the workload's (classification) model."""
    m = work.cfg.model
    return ModelShape(m.d_model, m.n_layers, m.d_ff, work.task.num_outputs)


Count = tuple[int, int, float, float]  # real tokens, computed (padded) tokens, real FLOPs, padded FLOPs


def counter(work: Workload, pad_to: int | None) -> Callable[[np.ndarray], Count]:
    """What one batch of rows `idx` covers. Seq2seq counts source and target tokens, and no FLOPs."""
    lengths = work.split.lengths
    if work.is_seq2seq:
        # The decoder reads and predicts len - 1 positions of each [BOS] target [EOS] row.
        targets = np.fromiter((len(t) - 1 for t in work.split.targets), dtype=np.int64, count=len(lengths))

        def count_seq2seq(idx: np.ndarray) -> Count:
            real = int(lengths[idx].sum() + targets[idx].sum())
            return real, len(idx) * int(lengths[idx].max() + targets[idx].max()), 0.0, 0.0

        return count_seq2seq
    shape = model_shape(work)

    def count(idx: np.ndarray) -> Count:
        width = pad_to or int(lengths[idx].max())
        return int(lengths[idx].sum()), len(idx) * width, *batch_flops(shape, lengths, idx, pad_to)

    return count


class LoopContender:
    """A plain training loop: `step_fn(batch)` on batches collated from fixed index samples; `optimizer` is the
    one step_fn updates (kept to show which optimizer a contender uses)."""

    def __init__(self, work: Workload, settings: Settings, step_fn: Callable[[Batch], None], bucket: bool,
                 pad_to: int | None, optimizer: torch.optim.Optimizer) -> None:
        self.work, self.step_fn, self.pad_to, self.optimizer = work, step_fn, pad_to, optimizer
        self.count = counter(work, pad_to)
        self.lengths = work.split.lengths
        self.batches = epoch_batches(work, settings.batch_size, bucket, settings.seed)
        k = settings.steps_padded if pad_to is not None else settings.steps_bucketed
        self.sample = representative(self.batches, self.lengths, k, settings.seed)

    def _step(self, idx: np.ndarray) -> Step:
        """Collate and train on one batch (collation is part of the loop, so it is timed)."""
        start = time.perf_counter()
        self.step_fn(self.work.collate(idx, self.pad_to))
        return Step(time.perf_counter() - start, *self.count(idx))

    def block(self, k: int) -> list[Step]:
        """One untimed step (caches of the other contenders are cold), then k timed steps on the sample."""
        self._step(self.sample[0])
        return [self._step(self.sample[i % len(self.sample)]) for i in range(k)]

    def epoch(self) -> EpochShape:
        """One epoch of this loop's batching."""
        counts = [self.count(b) for b in self.batches]
        return EpochShape(len(self.batches), sum(c[0] for c in counts), sum(c[1] for c in counts))

    def stress(self, n: int) -> None:
        """n steps on the epoch's largest batches (where activation memory peaks)."""
        for idx in sorted(self.batches, key=lambda b: self.count(b)[1])[-n:]:
            self.step_fn(self.work.collate(idx, self.pad_to))


def no_decay(module: nn.Module, name: str) -> bool:
    """tformer's weight-decay rule: none on biases (nn.MultiheadAttention's in_proj_bias too), norms and embeddings."""
    return name.endswith("bias") or isinstance(module, (nn.LayerNorm, nn.Embedding))


def decayed_names(model: nn.Module) -> set[str]:
    """Names (as model.named_parameters gives them) of the parameters tformer's AdamW would decay; a weight
    tied to an embedding is exempt, as in transformer_cli.optim.param_groups."""
    exempt = {id(p) for module in model.modules() for name, p in module.named_parameters(recurse=False)
              if no_decay(module, name)}
    return {name for name, p in model.named_parameters() if id(p) not in exempt}


def adamw_like_ours(model: nn.Module, optim: DictConfig) -> torch.optim.Optimizer:
    """torch's fused AdamW with tformer's parameter groups and settings (`optim` is the composed optim config)."""
    decay = decayed_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n in decay], "weight_decay": optim.weight_decay},
              {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.betas[0], optim.betas[1]), eps=optim.eps, fused=True)


class FullLastLayer(nn.Module):
    """tformer's SequenceModel with the first-token shortcut off: its encoder's last layer computes every position,
    as the other contenders' do (the same weights, head and outputs)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """(B, T) ids and mask -> the head's outputs, read from the last layer's (B, T, D) states."""
        return self.model.head(self.model.encoder(input_ids, mask, None), mask)


def ours(work: Workload, settings: Settings, bucket: bool = True, pad_to: int | None = None,
         changes: tuple[str, ...] = (), compile: bool = False, full_last_layer: bool = False) -> LoopContender:
    """tformer's training step exactly as `tformer train` takes it (fp32, the configured clip and schedule).

    `changes` names proposed changes from what_if.py to apply (none: the shipped step); `compile` is
    trainer.compile=true (torch.compile with dynamic shapes, as the loop does; warm-up pays the compilation);
    `full_last_layer` turns the first-token shortcut off (a classifier's last layer computes every position)."""
    cfg = work.cfg
    model = work.task.build_model(cfg.model, work.vocab_size).train()  # as `tformer train` builds it
    loss_fn = build_loss(cfg.loss, work.loss_context)
    if changes:
        from .what_if import apply

        apply(changes, model)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, optimizer, total_steps=10_000)
    precision = resolve_precision("fp32", torch.device("cpu"))
    scaler = precision.scaler()
    stepped = FullLastLayer(model) if full_last_layer else model
    trained = torch.compile(stepped, dynamic=True) if compile else stepped

    def step(batch: Batch) -> None:
        train_step(trained, [batch], work.task, loss_fn, optimizer, scaler, precision, cfg.trainer.grad_clip)
        scheduler.step()

    return LoopContender(work, settings, step, bucket, pad_to, optimizer)


class TorchEncoderClassifier(nn.Module):
    """The same-size classifier built from torch.nn.TransformerEncoder (pre-norm, GELU, learned positions), with
    tformer's dropout placement: on the embeddings, on each residual branch (after attention, after the
    feed-forward block), on the attention weights at attn_dropout, inside the feed-forward block at ffn_dropout,
    and in the head before and after its dense layer. torch's layer takes one rate for all four of its places;
    the attention and feed-forward ones are set after construction."""

    def __init__(self, vocab_size: int, d: int, layers: int, heads: int, d_ff: int, *, dropout: float,
                 attn_dropout: float, ffn_dropout: float, head_dropout: float, max_positions: int,
                 n_outputs: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d, padding_idx=0)
        self.positions = nn.Embedding(max_positions, d)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d, heads, d_ff, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)  # dropout1, dropout2: the residual branches
        layer.self_attn.dropout = attn_dropout  # on the attention weights (0: the fused SDPA kernel)
        layer.dropout = nn.Dropout(ffn_dropout)  # between linear1 and linear2
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(d, d), nn.Tanh(), nn.Dropout(head_dropout),
                                  nn.Linear(d, n_outputs))  # tformer's head layout

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, T) ids and mask -> (B, C) logits from the first token."""
        x = self.dropout(self.tokens(ids) + self.positions.weight[: ids.shape[1]])  # (B, T, D)
        x = self.encoder(x, src_key_padding_mask=~mask)  # (B, T, D): every position of the last layer
        return self.head(x[:, 0])


def torch_encoder(work: Workload, settings: Settings) -> LoopContender:
    """A plain loop over nn.TransformerEncoder on our batches: our fused AdamW, the same clipping, cross-entropy."""
    cfg = work.cfg
    m = cfg.model
    model = TorchEncoderClassifier(work.vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff, dropout=m.dropout,
                                   attn_dropout=m.attn_dropout, ffn_dropout=m.ffn_dropout,
                                   head_dropout=cfg.task.head_dropout, max_positions=m.max_positions,
                                   n_outputs=work.task.num_outputs).train()
    optimizer = adamw_like_ours(model, cfg.optim)

    def step(batch: Batch) -> None:
        F.cross_entropy(model(batch.input_ids, batch.mask), batch.targets).backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return LoopContender(work, settings, step, bucket=True, pad_to=None, optimizer=optimizer)
