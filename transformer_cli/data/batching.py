"""Length-bucketed batches and per-batch padding: little padding, seeded shuffling, every example once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from transformer_cli.data.ragged import Ragged
from transformer_cli.data.tokenize import PAD_ID

# Batches per sorting pool: large enough to group lengths (about 2 % padding on the shipped datasets at
# batch 32, against about 5 % with 50), small enough to stay random (scripts/bench measures it).
POOL_BATCHES = 100


@dataclass
class Batch:
    """A padded batch: ids and mask (B, T), targets (B, ...) and each row's example index (B,)."""

    input_ids: Tensor
    mask: Tensor
    targets: Tensor
    index: Tensor
    placeholder: bool = False  # a rank's stand-in when a global batch has fewer examples than ranks: counts zero

    def to(self, device: torch.device) -> "Batch":
        """The batch on `device` (non-blocking from pinned memory on CUDA)."""
        nb = device.type == "cuda"
        moved = (t.to(device, non_blocking=nb) for t in (self.input_ids, self.mask, self.targets, self.index))
        return Batch(*moved, placeholder=self.placeholder)

    @property
    def real_tokens(self) -> int:
        """Number of non-padding tokens (a host-side count: the mask lives on CPU until moved)."""
        return 0 if self.placeholder else int(self.mask.sum())

    @property
    def examples(self) -> int:
        """Number of examples that count (none in a placeholder)."""
        return 0 if self.placeholder else len(self.index)


@dataclass
class Encoded:
    """Some data rows encoded by a task (Task.encode): model inputs end to end, their targets, and what evaluating
    or predicting them needs beyond ids and targets. A row may give several inputs (question answering: one per
    window of a long context)."""

    flat: np.ndarray  # (total,) int32 ids of every input, end to end
    lengths: np.ndarray  # (n,) int64 length of each input
    targets: Tensor | list[np.ndarray]  # (n, ...) values, or one int32 array per input
    side: list[Any] | None = None  # JSON values the task's metrics and predictions read (None: nothing)

    def split(self) -> "EncodedSplit":
        """These inputs as a split held in memory."""
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return EncodedSplit(Ragged(self.flat, offsets), self.targets, self.side)


@dataclass
class EncodedSplit:
    """A tokenized split: one id array per example (a list, or a memory-mapped Ragged), the encoded targets, and
    the task's side records (what its metrics need beyond ids and targets, e.g. contexts and reference answers)."""

    ids: Sequence[np.ndarray] | Ragged
    targets: Tensor | Sequence[np.ndarray] | Ragged  # (N, ...) values, or one id array per example (seq2seq)
    side: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ids, Ragged):  # (N,) from the offsets alone: no example is read
            self.lengths = self.ids.lengths()
        else:
            self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int, max_tokens: int = 0) -> int:
        """Batches per pass; the same in every epoch, whether or not lengths are bucketed."""
        if max_tokens > 0:
            return len(budget_bounds(np.sort(self.lengths), batch_size, max_tokens)) - 1
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool, bucket: bool, seed: int = 0, epoch: int = 0,
                pin: bool = False, skip: int = 0, max_tokens: int = 0,
                shard: Callable[[np.ndarray], tuple[np.ndarray, bool]] | None = None) -> Iterator[Batch]:
        """Yield padded batches in the order batch_order gives, after the first `skip` (a resumed epoch).

        With `shard` (distributed training), each global batch is cut to this rank's share before padding."""
        order = batch_order(self.lengths, batch_size, shuffle=shuffle, bucket=bucket, seed=seed, epoch=epoch,
                            max_tokens=max_tokens)
        for idx in order[skip:]:
            placeholder = False
            if shard is not None:
                idx, placeholder = shard(idx)
            yield collate([self.ids[i] for i in idx], self.targets_of(idx), idx, pin, placeholder)

    def targets_of(self, idx: np.ndarray) -> Tensor:
        """The targets of some examples: rows of the tensor, or id arrays padded to (B, L)."""
        if isinstance(self.targets, Tensor):
            return self.targets[torch.from_numpy(idx)]
        return pad_ids([self.targets[i] for i in idx])


def batch_order(lengths: np.ndarray, batch_size: int, *, shuffle: bool, bucket: bool, seed: int,
                epoch: int, max_tokens: int = 0) -> list[np.ndarray]:
    """Example indices per batch. Shuffled: a seeded permutation per epoch, sorted by length inside pools
    of POOL_BATCHES batches, and batch order shuffled again. Not shuffled: sorted by length (eval).
    With max_tokens > 0, batches are sized by a token budget instead (token_budget_order)."""
    if max_tokens > 0:
        return token_budget_order(lengths, batch_size, max_tokens, shuffle=shuffle, seed=seed, epoch=epoch)
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


def token_budget_order(lengths: np.ndarray, batch_size: int, max_tokens: int, *, shuffle: bool, seed: int,
                       epoch: int) -> list[np.ndarray]:
    """Batches of at most max_tokens padded tokens (and at most batch_size examples) over the examples sorted
    by length, ties in a seeded random order each epoch; batch order shuffled each epoch.

    The cut points depend on the sorted lengths alone, so every epoch has the same number of batches (the
    schedule's length is known) while which examples share a batch changes. An example longer than the
    budget forms a batch of its own."""
    if shuffle:
        rng = np.random.Generator(np.random.PCG64([seed, epoch]))
        order = rng.permutation(len(lengths))
        order = order[np.argsort(lengths[order], kind="stable")]
    else:
        order = np.argsort(lengths, kind="stable")
    bounds = budget_bounds(lengths[order], batch_size, max_tokens)
    batches = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [batches[i] for i in rng.permutation(len(batches))] if shuffle else batches


def budget_bounds(sorted_lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[int]:
    """Cut points splitting ascending lengths into runs whose padded size (count x longest) fits max_tokens."""
    bounds, start = [0], 0
    for i, length in enumerate(sorted_lengths.tolist()):
        count = i - start + 1
        if i > start and (count * length > max_tokens or count > batch_size):
            bounds.append(i)
            start = i
    bounds.append(len(sorted_lengths))
    return bounds


def collate(ids: list[np.ndarray], targets: Tensor, index: np.ndarray, pin: bool = False,
            placeholder: bool = False) -> Batch:
    """Pad id arrays to the longest in the batch: input_ids (B, T) int64, mask (B, T) bool."""
    input_ids = pad_ids(ids)
    lengths = torch.tensor([len(x) for x in ids])
    mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]  # (B, T)
    tensors = (input_ids, mask, targets, torch.from_numpy(np.asarray(index, dtype=np.int64)))
    if pin:
        tensors = tuple(t.pin_memory() for t in tensors)
    return Batch(*tensors, placeholder=placeholder)


def pad_ids(arrays: list[np.ndarray]) -> Tensor:
    """Id arrays -> (B, T) int64, right-padded with PAD_ID to the longest."""
    out = torch.full((len(arrays), max(len(x) for x in arrays)), PAD_ID, dtype=torch.int64)
    for row, x in enumerate(arrays):
        out[row, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
    return out
