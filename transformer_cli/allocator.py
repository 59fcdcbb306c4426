"""glibc malloc's thresholds, set so that large CPU tensors reuse freed memory instead of fresh pages each time."""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of freed memory stays there for reuse
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_tuned: bool | None = None  # the outcome of the first call in this process


def tune_malloc() -> bool:
    """Once per process, on glibc: serve blocks up to 1 GiB from the heap and keep freed ones for reuse.

    By default glibc maps every block above 32 MiB afresh and unmaps it when it is freed, so each such tensor (an
    embedding table's gradient, a (B, T, V) score tensor) pays a page fault per 4 KiB page on every step
    (measured: zeroing MiniLM's 30,522 x 384 embedding gradient 24 ms -> 4-7 ms). Left alone when the
    environment sets glibc's malloc variables, preloads another allocator, or sets TFORMER_TUNE_MALLOC=0.
    Returns whether the thresholds are tformer's."""
    global _tuned
    if _tuned is None:
        _tuned = _wanted() and _mallopt(M_MMAP_THRESHOLD, LIMIT) and _mallopt(M_TRIM_THRESHOLD, LIMIT)
    return _tuned


def _wanted() -> bool:
    """Whether the user left the allocator to tformer (no opt-out, no malloc settings, no other allocator)."""
    env = os.environ
    if env.get("TFORMER_TUNE_MALLOC", "1") == "0" or "malloc" in env.get("GLIBC_TUNABLES", ""):
        return False
    if any(k.startswith("MALLOC_") for k in env):
        return False
    return not any(name in env.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS)


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt(param, value); False where the C library has none or refuses."""
    try:
        libc = ctypes.CDLL(None)
        return bool(getattr(libc, "gnu_get_libc_version", None)) and libc.mallopt(param, value) == 1
    except (OSError, AttributeError):
        return False
