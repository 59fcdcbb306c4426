"""Helpers (as fixtures) that the metric tests share."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest


@pytest.fixture(scope="session")
def random_splits() -> Callable[[int, np.random.Generator], list[slice]]:
    """random_splits(n, rng): cut range(n) into consecutive random-sized batches, including empty and size-1 ones."""
    def random_splits(n: int, rng: np.random.Generator) -> list[slice]:
        cuts = np.sort(rng.integers(0, n + 1, size=12))
        bounds = [0, *cuts.tolist(), n]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    return random_splits
