"""Length-bucketed batches and per-batch padding: little padding, seeded shuffling, every example once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from transformer_cli.data.tokenize import PAD_ID

POOL_BATCHES = 50  # batches per sorting pool: large enough to group lengths, small enough to stay random


@dataclass
class Batch:
    """A padded batch: ids and mask (B, T), targets (B, ...) and each row's example index (B,)."""

    input_ids: Tensor
    mask: Tensor
    targets: Tensor
    index: Tensor

    def to(self, device: torch.device) -> "Batch":
        """The batch on `device` (non-blocking from pinned memory on CUDA)."""
        nb = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.input_ids, self.mask, self.targets, self.index)))

    @property
    def real_tokens(self) -> int:
        """Number of non-padding tokens (a host-side count: the mask lives on CPU until moved)."""
        return int(self.mask.sum())


@dataclass
class EncodedSplit:
    """A tokenized split: one id array per example and the encoded targets."""

    ids: list[np.ndarray]
    targets: Tensor | list[np.ndarray]  # (N, ...) values, or one id array per example (seq2seq targets)

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int) -> int:
        """Batches per pass; the same whether or not lengths are bucketed."""
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool, bucket: bool, seed: int = 0, epoch: int = 0,
                pin: bool = False, skip: int = 0) -> Iterator[Batch]:
        """Yield padded batches in the order batch_order gives, after the first `skip` (a resumed epoch)."""
        order = batch_order(self.lengths, batch_size, shuffle=shuffle, bucket=bucket, seed=seed, epoch=epoch)
        for idx in order[skip:]:
            yield collate([self.ids[i] for i in idx], self.targets_of(idx), idx, pin)

    def targets_of(self, idx: np.ndarray) -> Tensor:
        """The targets of some examples: rows of the tensor, or id arrays padded to (B, L)."""
        if isinstance(self.targets, Tensor):
            return self.targets[torch.from_numpy(idx)]
        return pad_ids([self.targets[i] for i in idx])


def batch_order(lengths: np.ndarray, batch_size: int, *, shuffle: bool, bucket: bool, seed: int,
                epoch: int) -> list[np.ndarray]:
    """Example indices per batch. Shuffled: a seeded permutation per epoch, sorted by length inside pools
    of POOL_BATCHES batches, and batch order shuffled again. Not shuffled: sorted by length (eval)."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable") if bucket else np.arange(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    order = rng.permutation(n)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, n, pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids: list[np.ndarray], targets: Tensor, index: np.ndarray, pin: bool = False) -> Batch:
    """Pad id arrays to the longest in the batch: input_ids (B, T) int64, mask (B, T) bool."""
    input_ids = pad_ids(ids)
    lengths = torch.tensor([len(x) for x in ids])
    mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]  # (B, T)
    batch = Batch(input_ids, mask, targets, torch.from_numpy(np.asarray(index, dtype=np.int64)))
    if pin:
        batch = Batch(*(t.pin_memory() for t in (batch.input_ids, batch.mask, batch.targets, batch.index)))
    return batch


def pad_ids(arrays: list[np.ndarray]) -> Tensor:
    """Id arrays -> (B, T) int64, right-padded with PAD_ID to the longest."""
    out = torch.full((len(arrays), max(len(x) for x in arrays)), PAD_ID, dtype=torch.int64)
    for row, x in enumerate(arrays):
        out[row, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
    return out
