"""`tformer train --nproc N`: hand the command line to torchrun, and give each rank its own overrides.

Rank 0 writes the one run directory; the other ranks get a throwaway Hydra directory and learn rank 0's
from it (transformer_cli/distributed.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from typing import Any

from transformer_cli.errors import TformerError
from transformer_cli.overrides import precheck_overrides

NPROC_FLAGS = ("--nproc", "--nproc-per-node", "--nproc_per_node")


def launch_distributed(args: list[str]) -> list[str]:
    """`--nproc N`: hand the line to torchrun on this node (no return). Under torchrun: this rank's overrides."""
    nproc, rest = _pop_nproc(args)
    if nproc is not None:
        if nproc < 1:
            raise TformerError(f"--nproc {nproc}: need at least one process")
        _refuse_sweep(rest)
        from transformer_cli.validate import register_schemas

        register_schemas()
        precheck_overrides("train", rest)  # a config mistake: one message and exit 2, before any process starts
        os.execve(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc-per-node={nproc}", "-m", "transformer_cli", "train", *rest],
                  torchrun_env(os.environ))
    if not torchrun_world() > 1:
        return rest
    _refuse_sweep(rest)
    if torchrun_rank() == 0:
        return rest
    scratch = tempfile.mkdtemp(prefix=f"tformer-rank{torchrun_rank()}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    # First, so that a trailing Hydra flag (--cfg job, -cn name) keeps its value; the user's own values of
    # these keys are dropped (rank 0 keeps them), since a later override would win.
    mine = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    kept = [a for a in rest if not a.lstrip("+").startswith(mine)]
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=stdout", *kept]


# Set for `tformer train --nproc` (environment values win): torchrun forwards SIGUSR1 too (cluster
# schedulers' warning signal, which tformer treats like SIGTERM) and gives workers 5 minutes to finish the
# step, an evaluation and the checkpoint before SIGKILL (torchrun's default is 30 s).
TORCHRUN_ENV = {"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}


def torchrun_env(environ: Any) -> dict[str, str]:
    """The environment for torchrun: TORCHRUN_ENV under the caller's own settings."""
    return {**TORCHRUN_ENV, **environ}


def _refuse_sweep(args: list[str]) -> None:
    """A sweep is many trainings: it cannot be one torchrun job."""
    if any(a in ("-m", "--multirun") or a.lstrip("+") == "hydra.mode=MULTIRUN" for a in args):
        raise TformerError("a sweep (-m) cannot run under torchrun: each training is one torchrun job",
                                  hint="sweep without torchrun (launcher=slurm or ray puts jobs on other machines), "
                                  "or run one training per torchrun")


def torchrun_world() -> int:
    """WORLD_SIZE from torchrun's environment (1 without it); read here without importing torch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def torchrun_rank() -> int:
    """RANK from torchrun's environment (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def _pop_nproc(args: list[str]) -> tuple[int | None, list[str]]:
    """The value of `--nproc N` / `--nproc=N` (None without it) and the other arguments."""
    rest, nproc, i = [], None, 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in NPROC_FLAGS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            try:
                nproc = int(value)
            except ValueError:
                raise TformerError(f"{flag} needs a number of processes, got '{value}'",
                                          hint="e.g. tformer train --nproc 2") from None
        else:
            rest.append(args[i])
        i += 1
    return nproc, rest
