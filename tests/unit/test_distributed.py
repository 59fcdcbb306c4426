"""Training on several processes, the pieces: every example of a global batch on exactly one rank, placeholder
batches, the other ranks' command line and torchrun's environment (real runs: tests/e2e/test_distributed.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transformer_cli.distributed import Dist


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 2, 5, 16])
def test_shards_of_a_global_batch_cover_it_exactly_once(world: int, size: int) -> None:
    """Every example of a global batch lands on exactly one rank; ranks left without one get a placeholder."""
    idx = np.arange(100, 100 + size)
    shards = [Dist(rank=r, world=world).shard(idx) for r in range(world)]
    real = np.concatenate([s for s, placeholder in shards if not placeholder])
    assert sorted(real.tolist()) == idx.tolist()
    assert sum(placeholder for _, placeholder in shards) == max(0, world - size)
    assert max(len(s) for s, _ in shards) - min(len(s) for s, p in shards if not p) <= 1  # balanced


def test_placeholder_batches_count_nothing() -> None:
    """A placeholder batch contributes no tokens and no examples to the step's counts."""
    from transformer_cli.data.batching import EncodedSplit

    split = EncodedSplit([np.array([5, 6, 7]), np.array([8, 9])], torch.tensor([0, 1]))
    batches = list(split.batches(2, shuffle=False, bucket=False, shard=Dist(rank=2, world=3).shard))
    assert len(batches) == 1 and batches[0].placeholder
    assert batches[0].real_tokens == 0 and batches[0].examples == 0
    assert batches[0].to(torch.device("cpu")).placeholder


def test_other_ranks_get_a_scratch_run_dir_that_survives_trailing_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank > 0's Hydra overrides come first (a trailing `--cfg job` keeps its value) and replace the user's
    run dir (rank 0 keeps it); rank 0's line is untouched."""
    from transformer_cli import cli

    line = ["seed=1", "hydra.run.dir=mine", "--cfg", "job"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.launch_distributed(line) == line
    monkeypatch.setenv("RANK", "1")
    out = cli.launch_distributed(line)
    assert out[0].startswith("hydra.run.dir=") and "tformer-rank1-" in out[0]
    assert out[1:] == ["hydra.output_subdir=null", "hydra/job_logging=stdout", "seed=1", "--cfg", "job"]
    assert Path(out[0].split("=", 1)[1]).is_dir()


def test_torchrun_gets_sigusr1_and_time_to_checkpoint_unless_set() -> None:
    """`--nproc` runs torchrun with SIGUSR1 forwarded and a 5-minute shutdown grace; the caller's values win."""
    from transformer_cli.launch import torchrun_env

    env = torchrun_env({"PATH": "/bin"})
    assert "SIGUSR1" in env["PET_SIGNALS_TO_HANDLE"] and env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "300"
    assert torchrun_env({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60"})["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "60"
