"""Batching: every example once per epoch, seeded orders, less padding with buckets, eval order, collation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transformer_cli.data.batching import (
    POOL_BATCHES,
    Batch,
    EncodedSplit,
    batch_order,
    collate,
)
from transformer_cli.data.tokenize import PAD_ID


def lognormal_lengths(n: int, seed: int = 0, median: float = 20.0, sigma: float = 0.5) -> np.ndarray:
    """Token counts of n examples, log-normal around `median`, at least 1."""
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.round(rng.lognormal(math.log(median), sigma, n))).astype(np.int64)


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Padded tokens / all tokens when each batch is padded to its longest example."""
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    real = sum(int(lengths[b].sum()) for b in batches)
    return 1.0 - real / total


def split_of(lengths: np.ndarray, seed: int = 0) -> EncodedSplit:
    """An EncodedSplit with random non-pad ids of the given lengths; target i is 10 * i."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 100, size=int(n)).astype(np.int32) for n in lengths]
    return EncodedSplit(ids, torch.arange(len(lengths), dtype=torch.float32) * 10)


def assert_each_once(batches: list[np.ndarray], n: int) -> None:
    """The batches together hold every index in range(n) exactly once."""
    flat = np.concatenate(batches)
    assert len(flat) == n
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))


# ---------------------------------------------------------------- shuffled orders

SIZES = [1, 31, 32, 1003, 3301, 5000]  # within one pool, exactly one batch, several pools, a ragged last pool


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bucket", [True, False])
def test_shuffled_order_covers_each_index_once(n: int, bucket: bool) -> None:
    """Each epoch visits every example exactly once, in ceil(N / batch) batches, all full but one."""
    lengths = lognormal_lengths(n)
    for epoch in range(3):
        batches = batch_order(lengths, 32, shuffle=True, bucket=bucket, seed=7, epoch=epoch)
        assert_each_once(batches, n)
        assert len(batches) == math.ceil(n / 32) == split_of(lengths).num_batches(32)
        assert sum(len(b) != 32 for b in batches) <= 1


def test_shuffled_order_is_seeded() -> None:
    """The same (seed, epoch) repeats the order; another epoch or seed changes it."""
    lengths = lognormal_lengths(2000)

    def order(seed: int, epoch: int) -> np.ndarray:
        return np.concatenate(batch_order(lengths, 32, shuffle=True, bucket=True, seed=seed, epoch=epoch))

    np.testing.assert_array_equal(order(3, 1), order(3, 1))
    assert not np.array_equal(order(3, 1), order(3, 2))
    assert not np.array_equal(order(3, 1), order(4, 1))
    assert not np.array_equal(order(3, 1), order(1, 3))  # seed and epoch are not interchangeable


def test_bucketed_batches_are_shuffled_across_lengths() -> None:
    """Bucketing sorts inside pools but the batch order is random, not short-to-long."""
    lengths = lognormal_lengths(32 * POOL_BATCHES * 3)
    batches = batch_order(lengths, 32, shuffle=True, bucket=True, seed=0, epoch=0)
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_bucketing_reduces_padding() -> None:
    """On log-normal lengths (median 20) bucketing pads far less than random batches."""
    lengths = lognormal_lengths(5000, seed=0)
    assert np.median(lengths) == pytest.approx(20, abs=1)
    bucketed = np.mean([padding_fraction(lengths, batch_order(lengths, 32, shuffle=True, bucket=True, seed=0,
                                                              epoch=e)) for e in range(3)])
    unbucketed = np.mean([padding_fraction(lengths, batch_order(lengths, 32, shuffle=True, bucket=False, seed=0,
                                                                epoch=e)) for e in range(3)])
    evaluation = padding_fraction(lengths, batch_order(lengths, 32, shuffle=False, bucket=True, seed=0, epoch=0))
    print(f"padding fraction: bucketed {bucketed:.3f}, unbucketed {unbucketed:.3f}, eval (sorted) {evaluation:.3f}")
    assert bucketed < 0.10
    assert unbucketed > 0.40
    assert evaluation < bucketed


# ---------------------------------------------------------------- eval order


def test_eval_order_is_sorted_by_length() -> None:
    """Without shuffling, batches run short to long and cover every index once."""
    lengths = lognormal_lengths(1003, seed=2)
    batches = batch_order(lengths, 64, shuffle=False, bucket=True, seed=0, epoch=0)
    assert_each_once(batches, len(lengths))
    flat = np.concatenate(batches)
    assert np.all(np.diff(lengths[flat]) >= 0)
    assert len(batches) == math.ceil(1003 / 64)
    # the order does not depend on seed or epoch
    again = batch_order(lengths, 64, shuffle=False, bucket=True, seed=5, epoch=9)
    np.testing.assert_array_equal(np.concatenate(again), flat)


def test_eval_order_without_bucketing_keeps_file_order() -> None:
    """shuffle=False, bucket=False keeps the examples in their original order."""
    lengths = lognormal_lengths(100, seed=3)
    batches = batch_order(lengths, 32, shuffle=False, bucket=False, seed=0, epoch=0)
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(100))


# ---------------------------------------------------------------- collation


def test_collate_pads_and_masks() -> None:
    """input_ids are padded with PAD_ID, the mask is True exactly on real tokens, targets and index kept."""
    ids = [np.array([5, 6, 7], dtype=np.int32), np.array([8], dtype=np.int32), np.array([9, 10, 11, 12], np.int32)]
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    index = np.array([4, 0, 2])
    batch = collate(ids, targets, index)
    assert batch.input_ids.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert batch.input_ids.tolist() == [[5, 6, 7, PAD_ID], [8, PAD_ID, PAD_ID, PAD_ID], [9, 10, 11, 12]]
    assert batch.mask.tolist() == [[True, True, True, False], [True, False, False, False], [True] * 4]
    assert torch.equal(batch.targets, targets)
    assert batch.index.dtype == torch.int64 and batch.index.tolist() == [4, 0, 2]
    assert batch.real_tokens == 8


def test_split_batches_rows_follow_index() -> None:
    """Through EncodedSplit.batches each row's ids and target belong to the example its index names."""
    lengths = lognormal_lengths(300, seed=4)
    split = split_of(lengths)
    seen = []
    for batch in split.batches(16, shuffle=True, bucket=True, seed=1, epoch=0):
        assert isinstance(batch, Batch)
        assert torch.equal(batch.targets, split.targets[batch.index])
        for row, i in enumerate(batch.index.tolist()):
            n = len(split.ids[i])
            assert batch.input_ids[row, :n].tolist() == split.ids[i].tolist()
            assert batch.mask[row].sum() == n and bool(batch.mask[row, :n].all())
            assert bool((batch.input_ids[row, n:] == PAD_ID).all())
        assert batch.input_ids.shape[1] == int(lengths[batch.index.numpy()].max())
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(300))


# ---------------------------------------------------------------- token budget (trainer.max_tokens)


@pytest.mark.parametrize("n", [1, 31, 1003, 5000])
@pytest.mark.parametrize("shuffle", [True, False])
def test_token_budget_batches_fit_the_budget_and_cover_each_index_once(n: int, shuffle: bool) -> None:
    """Each batch pads to at most max_tokens (and holds at most batch_size examples); every example once;
    the same number of batches in every epoch, as num_batches says."""
    lengths = lognormal_lengths(n)
    counts = set()
    for epoch in range(3):
        batches = batch_order(lengths, 64, shuffle=shuffle, bucket=True, seed=7, epoch=epoch, max_tokens=600)
        assert_each_once(batches, n)
        assert all(len(b) * lengths[b].max() <= 600 and len(b) <= 64 for b in batches)
        counts.add(len(batches))
    assert counts == {split_of(lengths).num_batches(64, max_tokens=600)}


def test_token_budget_batches_are_full_and_barely_padded() -> None:
    """Cut points are greedy over sorted lengths: adding the next example would break the budget; padding < 2 %."""
    lengths = lognormal_lengths(5000)
    batches = batch_order(lengths, 10_000, shuffle=True, bucket=True, seed=0, epoch=0, max_tokens=1000)
    ordered = sorted(batches, key=lambda b: (lengths[b].max(), lengths[b].min(), -len(b)))  # the sorted sequence
    for batch, following in zip(ordered, ordered[1:]):
        assert (len(batch) + 1) * lengths[following].min() > 1000
    assert padding_fraction(lengths, batches) < 0.02


def test_token_budget_order_is_seeded_and_mixes_equal_lengths() -> None:
    """Same (seed, epoch): same batches. Another epoch: other batch order and other partners of equal length."""
    lengths = lognormal_lengths(3000)

    def order(seed: int, epoch: int) -> list[np.ndarray]:
        return batch_order(lengths, 128, shuffle=True, bucket=True, seed=seed, epoch=epoch, max_tokens=512)

    for a, b in zip(order(1, 0), order(1, 0)):
        np.testing.assert_array_equal(a, b)
    as_sets = lambda batches: {frozenset(b.tolist()) for b in batches}  # noqa: E731
    assert as_sets(order(1, 0)) != as_sets(order(1, 1))


def test_an_example_longer_than_the_budget_gets_a_batch_of_its_own() -> None:
    """A single example over max_tokens cannot be split: it is trained on alone."""
    lengths = np.array([5, 5, 50, 5])
    batches = batch_order(lengths, 8, shuffle=False, bucket=True, seed=0, epoch=0, max_tokens=20)
    assert [sorted(b.tolist()) for b in batches] == [[0, 1, 3], [2]]
