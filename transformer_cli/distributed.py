"""One training over several processes with torch.distributed (launched by torchrun): ranks, shards, reductions.

Launched by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the training joins a process group
(NCCL on CUDA, gloo on CPU) and wraps the model in DistributedDataParallel. Everything else is the
single-process code with these rules:
  - every rank builds the same global batches from the seed and keeps every world-th example of each one,
    so trainer.batch_size is the global batch and no example is seen twice;
  - the loss sum, its weight, the token count and a "stop" flag are summed across ranks once per step, so the
    gradient is normalised by the global weight (the same update as one process on the whole batch) and all
    ranks agree on a preemption at the same step boundary;
  - rank 0 alone evaluates (on the whole split, so metrics equal a single-process evaluation), writes logs,
    metrics, plots and checkpoints, into the one run directory it broadcasts;
  - checkpoints hold rank 0's weights and optimizer state (identical on all ranks) and every rank's RNG state.
Without torchrun (or with one process) every method is a no-op and nothing is initialised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from transformer_cli.errors import TformerError

log = logging.getLogger(__name__)

# How long a rank waits in a collective (e.g. while rank 0 evaluates or writes a checkpoint) before failing.
TIMEOUT_ENV = "TFORMER_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 60


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes, rank within the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, bool]:
        """This rank's share of one global batch (every world-th example): (indices, placeholder).

        A global batch smaller than the world (the last one of an epoch) leaves some ranks without an example:
        they run the batch's first example as a placeholder whose loss and weight count zero, because every
        rank must take part in each gradient reduction."""
        if not self.enabled:
            return idx, False
        mine = idx[self.rank :: self.world]
        return (mine, False) if len(mine) else (idx[:1], True)

    def sum(self, t: Tensor) -> Tensor:
        """The element-wise sum of `t` over all ranks (in place, returned)."""
        if self.enabled:
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (plain Python values)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.enabled:
            torch_dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. fills the dataset cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as trained: DistributedDataParallel across ranks, the model itself in one process."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        # No buffers need syncing (no batch norm): skip the per-forward broadcast. The keyword was renamed
        # in recent torch (broadcast_buffers is deprecated there); both mean the same here.
        params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **no_sync)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Inside: backward accumulates locally without reducing gradients (all but the last micro-batch)."""
        model = getattr(model, "_orig_mod", model)  # under torch.compile
        if self.enabled and isinstance(model, nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()


SINGLE = Dist()


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's global rank from torchrun's environment (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any); the device this rank trains on."""
    if not launched():
        return SINGLE, device
    rank, world = env_rank(), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TformerError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}",
                               hint="set torchrun --nproc-per-node to at most the number of GPUs per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch_dist.init_process_group(backend, timeout=dt.timedelta(minutes=minutes), **kwargs)
    if not rank:
        log.info("distributed: %d processes (%s), rank 0 writes", world, torch_dist.get_backend())
    return Dist(rank=rank, world=world, local_rank=local_rank), device


def teardown() -> None:
    """Leave the process group (at the end of a training)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for rank > 0's own random stream (dropout) that differs by rank and by resume step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
