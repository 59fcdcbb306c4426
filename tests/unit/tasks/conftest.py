"""Helpers (as fixtures) that the task tests share: hidden states, a task's head, and feeding its metrics."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.data.batching import Batch


@pytest.fixture(scope="session")
def hidden() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """hidden(batch=3, length=5, d_model=16): random (B, T, D) hidden states and a (B, T) mask with some padding."""
    def hidden(batch: int = 3, length: int = 5, d_model: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[0, 3:] = False
        return h, mask

    return hidden


@pytest.fixture(scope="session")
def head_of() -> Callable[..., torch.nn.Module]:
    """head_of(task, d_model=16): the pooling head the task puts on a d_model-wide encoder."""
    def head_of(task: Any, d_model: int = 16) -> torch.nn.Module:
        return task.build_model(ModelConfig(d_model=d_model, n_layers=1, n_heads=2, d_ff=32), 50).head

    return head_of


@pytest.fixture(scope="session")
def observe() -> Callable[[Any, Any, torch.Tensor, torch.Tensor], None]:
    """observe(task, metrics, outputs, targets): feed one evaluated batch to the task's metrics, as the loop does."""
    def observe(task: Any, metrics: Any, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = len(targets)
        batch = Batch(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.bool), targets,
                      torch.arange(n))
        task.observe(metrics, None, batch, outputs)

    return observe
