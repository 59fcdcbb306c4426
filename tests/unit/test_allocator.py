"""glibc malloc tuning: after tune_malloc, a large tensor allocated again reuses memory (no fresh page faults),
where glibc's defaults fault in every page of it each time; the user's own settings turn it off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocates and zeroes a 64 MiB tensor 30 times (the heap settles within the first ten: memalign's slack keeps
# the first freed blocks a little short of the next request); prints the minor page faults of the last 10.
PROBE = """
import resource, sys, torch
from transformer_cli.allocator import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False
for _ in range(20):
    torch.zeros(16 << 20)  # 16 Mi float32 = 64 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.zeros(16 << 20)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(code: str, *args: str, **env: str) -> list[str]:
    """Python `code` in a fresh process whose environment has no malloc settings but `env`: its printed words."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "TFORMER_TUNE_MALLOC"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env={**clean, **env}).stdout.split()


def probe(mode: str) -> tuple[bool, int]:
    """(whether tune_malloc applied, minor page faults of the last 10 allocations of 64 MiB) in a fresh process."""
    out = run(PROBE, mode)
    return out[0] == "True", int(out[1])


def tuned_with(**env: str) -> bool:
    """Whether tune_malloc applies in a fresh process with `env`."""
    return run("from transformer_cli.allocator import tune_malloc; print(tune_malloc())", **env) == ["True"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_large_tensors_reuse_memory_once_tuned_and_the_user_can_opt_out() -> None:
    """Tuned: 10 allocations of 64 MiB fault in (nearly) no new pages; glibc's defaults fault every page each time
    (16,384 pages of 4 KiB per allocation); TFORMER_TUNE_MALLOC=0 or the user's MALLOC_ variables leave glibc's."""
    tuned, faults = probe("tune")
    assert tuned and faults < 1_000, faults
    untuned, default_faults = probe("default")
    assert not untuned and default_faults > 10 * 10_000, default_faults
    assert tuned_with() and not tuned_with(TFORMER_TUNE_MALLOC="0") and not tuned_with(MALLOC_ARENA_MAX="2")
    assert not tuned_with(LD_PRELOAD="libjemalloc.so.2")  # not loaded here: only the name is read
