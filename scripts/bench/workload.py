"""What every contender trains on: one composed config, one tokenized training split, fixed batch samples."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from transformer_cli.config import conf_dir
from transformer_cli.data.batching import Batch, EncodedSplit, batch_order, collate
from transformer_cli.data.loading import open_splits
from transformer_cli.data.tokenize import PAD_ID, encode
from transformer_cli.losses.base import LossContext
from transformer_cli.prepare import learn_task
from transformer_cli.tasks import Task
from transformer_cli.validate import register_schemas


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark mode: the model and data overrides, repetitions and steps."""

    mode: str  # full | smoke
    overrides: tuple[str, ...]  # Hydra overrides applied to `tformer train`'s config
    batch_size: int
    reps: int  # timed repetitions per contender, interleaved across contenders
    warmup: int  # untimed steps per contender before the first repetition
    steps_padded: int  # timed steps per repetition for contenders padded to max_length
    steps_bucketed: int  # timed steps per repetition for contenders on short, length-grouped batches
    memory_steps: int  # steps taken in the fresh process that measures peak memory
    sweep_steps: int  # steps per job in the sweep-parallelism row
    matmul_size: int  # side of the square matmul that measures the peak
    seq2seq_overrides: tuple[str, ...]  # the encoder-decoder rows: `tformer train`'s g2p experiment, our size
    seq2seq_steps: int  # timed steps per repetition of the encoder-decoder contenders
    decode_sources: int  # validation sources decoded per repetition
    decode_batch: int
    memory_for: tuple[str, ...] = ()  # contenders whose peak memory is measured (empty: all)
    sweep_reps: int = 3  # repetitions of each sweep configuration, interleaved
    seed: int = 0


COMMON = ("trainer.device=cpu", "trainer.precision=fp32")
MODES: dict[str, Settings] = {
    # The sizes: d_model 256, 4 layers, 4 heads, FFN 1024, batch 32 x up to 128 tokens, fp32.
    "full": Settings("full", ("model=base", "trainer.batch_size=32", *COMMON), batch_size=32, reps=7,
                     warmup=2, steps_padded=5, steps_bucketed=20, memory_steps=3, sweep_steps=30,
                     matmul_size=4096, seq2seq_overrides=("experiment=g2p", "model=base", *COMMON), seq2seq_steps=8,
                     decode_sources=256, decode_batch=64),
    "smoke": Settings("smoke", ("model=tiny", "trainer.batch_size=8", "data.max_train_examples=200",
                                "data.max_eval_examples=16", "data.tokenizer.vocab_size=500",
                                "data.tokenizer.max_length=32", *COMMON),
                      batch_size=8, reps=2, warmup=1, steps_padded=2, steps_bucketed=2, memory_steps=1,
                      sweep_steps=2, matmul_size=256,
                      seq2seq_overrides=("experiment=g2p", "model=tiny", "trainer.batch_size=8",
                                         "data.max_train_examples=200", "data.max_eval_examples=16", *COMMON),
                      seq2seq_steps=2,
                      decode_sources=8, decode_batch=4, memory_for=("ours", "hf_trainer_grouped", "torch_encoder"),
                      sweep_reps=1),
}


def compose_config(settings: Settings, extra: tuple[str, ...] = ()) -> DictConfig:
    """`tformer train`'s composed config with the mode's overrides (and `extra`, e.g. task=regress)."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=[*settings.overrides, *extra])


@dataclass
class Workload:
    """The training split every contender sees: our tokenizer's ids and the encoded labels."""

    cfg: DictConfig
    task: Task
    split: EncodedSplit
    vocab_size: int
    tokenizer: Any  # tokenizers.Tokenizer
    loss_context: LossContext
    validation: list[np.ndarray] | None = None  # validation source ids, when asked for (decoding)

    @property
    def is_seq2seq(self) -> bool:
        """Targets are token sequences (an encoder-decoder task)."""
        return not isinstance(self.split.targets, torch.Tensor)

    @property
    def max_length(self) -> int:
        """The truncation length: what 'pad to max_length' pads to."""
        return int(self.cfg.data.tokenizer.max_length)

    def collate(self, idx: np.ndarray, pad_to: int | None = None) -> Batch:
        """One batch as the loop builds it, optionally widened to `pad_to` tokens."""
        batch = collate([self.split.ids[i] for i in idx], self.split.targets_of(idx), idx)
        return batch if pad_to is None else widen(batch, pad_to)


def load_workload(settings: Settings, extra: tuple[str, ...] = (), seq2seq: bool = False) -> Workload:
    """Load the configured dataset's training split and tokenize it the way `tformer train` does.

    seq2seq: the encoder-decoder experiment instead, with the validation sources for decoding."""
    if seq2seq:
        settings = dataclasses.replace(settings, overrides=settings.seq2seq_overrides)
    cfg = compose_config(settings, extra)
    tables = open_splits(cfg.data)
    task, tokenizer = learn_task(cfg, tables["train"])  # as `tformer train` learns them
    raw = tables["train"].read()
    targets = task.encode_targets(raw.labels, raw.where)
    split = EncodedSplit(encode(tokenizer, raw.texts, raw.pairs), targets)
    val = tables["validation"].read()
    validation = encode(tokenizer, val.texts, val.pairs) if seq2seq else None
    return Workload(cfg, task, split, tokenizer.get_vocab_size(), tokenizer, task.loss_context(targets), validation)


def widen(batch: Batch, T: int) -> Batch:
    """The batch padded on the right to exactly T tokens (what padding to max_length gives)."""
    B, t = batch.input_ids.shape
    ids = torch.full((B, T), PAD_ID, dtype=batch.input_ids.dtype)
    mask = torch.zeros((B, T), dtype=torch.bool)
    ids[:, :t], mask[:, :t] = batch.input_ids, batch.mask
    return Batch(ids, mask, batch.targets, batch.index)


def epoch_batches(work: Workload, batch_size: int, bucket: bool, seed: int, epoch: int = 0) -> list[np.ndarray]:
    """Index arrays of one shuffled training epoch, in the order the loop would use."""
    return batch_order(work.split.lengths, batch_size, shuffle=True, bucket=bucket, seed=seed, epoch=epoch)


def representative(batches: list[np.ndarray], lengths: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k batches at evenly spaced quantiles of padded size (full batches only), in a seeded random order.

    Timing these and scaling by the epoch's padded tokens estimates an epoch without running one."""
    full = [b for b in batches if len(b) == len(batches[0])] or batches
    by_size = sorted(full, key=lambda b: int(lengths[b].max()))
    picks = [by_size[int(i)] for i in np.linspace(0, len(by_size) - 1, num=min(k, len(by_size)))]
    order = np.random.default_rng(seed).permutation(len(picks))
    return [picks[i] for i in order]


def padded_tokens(batches: list[np.ndarray], lengths: np.ndarray, pad_to: int | None = None) -> int:
    """Tokens the model computes over these batches: rows x (longest row, or pad_to)."""
    return sum(len(b) * (pad_to if pad_to is not None else int(lengths[b].max())) for b in batches)


def typical_padded_tokens(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    """Computed tokens (rows x longest row) of the median full batch: the matmul height a step typically runs."""
    full = [b for b in batches if len(b) == len(batches[0])] or batches
    return int(np.median([len(b) * int(lengths[b].max()) for b in full]))


def padding_fraction(batches: list[np.ndarray], lengths: np.ndarray, pad_to: int | None = None) -> float:
    """Share of computed tokens that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    return 1.0 - real / max(1, padded_tokens(batches, lengths, pad_to))
