"""Model FLOPs per training step, and the matmul peak they are measured against.

FLOPs of one training step (forward + backward = 3 x forward; a multiply-add counts 2):
    6 * N * tokens                      every token through every matmul weight of the encoder layers,
                                        N = n_layers * (4 d^2 + 2 d d_ff)  (QKV, output, FFN up and down)
  + 12 * n_layers * d * sum_i(t_i^2)    attention scores Q K^T and weighted values A V, 2 t^2 d each
  + 6 * (d^2 + d C) * B                 the head's dense layer and projection, on one pooled vector per row
Counting real tokens, t_i is row i's own length; counting padded tokens, it is the batch's width T.
Embeddings, norms, biases, activations, dropout and the optimizer are left out (not matmuls), as is usual
for model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelShape:
    """The sizes the FLOPs formula needs."""

    d_model: int
    n_layers: int
    d_ff: int
    n_outputs: int

    @property
    def matmul_params(self) -> int:
        """Weights every token meets in the encoder layers (N in 6 N tokens)."""
        d = self.d_model
        return self.n_layers * (4 * d * d + 2 * d * self.d_ff)

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each linear map of one encoder layer: QKV, attention output, FFN up, FFN down."""
        d = self.d_model
        return [(d, 3 * d), (d, d), (d, self.d_ff), (self.d_ff, d)]


def step_flops(shape: ModelShape, row_lengths: np.ndarray) -> float:
    """Training FLOPs of one batch whose rows are `row_lengths` tokens long (real or padded)."""
    t = np.asarray(row_lengths, dtype=np.float64)
    d, L = shape.d_model, shape.n_layers
    return float(6 * shape.matmul_params * t.sum() + 12 * L * d * (t**2).sum()
                 + 6 * (d * d + d * shape.n_outputs) * len(t))


def batch_flops(shape: ModelShape, lengths: np.ndarray, idx: np.ndarray,
                width: int | None = None) -> tuple[float, float]:
    """(real, padded) FLOPs of the batch of rows `idx`; padded to `width`, or to its longest row."""
    rows = lengths[idx]
    T = width if width is not None else int(rows.max())
    return step_flops(shape, rows), step_flops(shape, np.full(len(rows), T))


def _timed(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` calls after one untimed call."""
    fn()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def square_peak(n: int, reps: int) -> list[float]:
    """GFLOP/s of an n x n fp32 torch.mm, one value per repetition."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return [2 * n**3 / s / 1e9 for s in _timed(lambda: torch.mm(a, b), reps)]


def model_shape_peak(shape: ModelShape, tokens: int, reps: int) -> list[float]:
    """GFLOP/s of one encoder layer's training matmuls at `tokens` rows: forward, input and weight gradients."""
    mats = []
    for k, n in shape.linear_shapes():
        x = torch.randn(tokens, k, requires_grad=True)
        w = torch.randn(n, k, requires_grad=True)
        mats.append((x, w, torch.randn(tokens, n)))

    def layer() -> None:
        for x, w, g in mats:
            F.linear(x, w).backward(g)  # (M, k) @ (k, n), then (M, n) @ (n, k) and (n, M) @ (M, k)

    flops = sum(6 * tokens * k * n for k, n in shape.linear_shapes())
    return [flops / s / 1e9 for s in _timed(layer, reps)]


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
