"""Variable-length id arrays kept as one flat array and offsets, written in chunks and read memory-mapped."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Ragged:
    """N id arrays end to end: example i is flat[offsets[i]:offsets[i + 1]]."""

    flat: np.ndarray  # (total,) ids, possibly a read-only memory map
    offsets: np.ndarray  # (N + 1,) int64, offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """(N,) int64 length of every example, without touching the ids."""
        return np.diff(self.offsets)

    @staticmethod
    def from_arrays(arrays: Sequence[np.ndarray], dtype: type = np.int32) -> "Ragged":
        """Pack a list of arrays (small data, tests)."""
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        flat = np.concatenate(arrays).astype(dtype) if len(arrays) else np.zeros(0, dtype)
        return Ragged(flat, offsets)


class RaggedWriter:
    """Appends chunks of ids to `<stem>.ids` (raw, little-endian) and writes `<stem>.offsets.npy` on close."""

    def __init__(self, stem: Path, dtype: str) -> None:
        self.stem, self.dtype = stem, np.dtype(dtype).newbyteorder("<")
        self.ids = open(f"{stem}.ids", "wb")
        self.lengths: list[np.ndarray] = []

    def append(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Add examples given as their ids end to end (total,) and their lengths (n,)."""
        self.ids.write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self.lengths.append(np.asarray(lengths, dtype=np.int64))

    def close(self) -> int:
        """Flush the ids to disk, write the offsets; returns the number of examples."""
        self.ids.flush()
        os.fsync(self.ids.fileno())
        self.ids.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(f"{self.stem}.offsets.npy", offsets)
        return len(lengths)


def open_ragged(stem: Path, dtype: str) -> Ragged:
    """A Ragged written by RaggedWriter, its ids memory-mapped read-only (pages read as batches need them)."""
    offsets = np.load(f"{stem}.offsets.npy")
    kind = np.dtype(dtype).newbyteorder("<")
    if offsets[-1] == 0:  # numpy cannot map an empty file
        return Ragged(np.zeros(0, kind), offsets)
    return Ragged(np.memmap(f"{stem}.ids", dtype=kind, mode="r", shape=(int(offsets[-1]),)), offsets)
