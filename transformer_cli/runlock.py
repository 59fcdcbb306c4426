"""One training per run directory: an advisory lock file held for the whole run.

A second `tformer train` on a directory in use stops at once, naming the process that holds it, instead of
mixing its checkpoints, metrics and summary with the first one's. The lock is an `fcntl` lock, which the
operating system releases when its process ends however it ends, so a lock left by a killed run is simply
taken over. (Locks on network file systems are only as good as the file system's support for them.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from transformer_cli.errors import TformerError

LOCK_FILE = ".tformer.lock"


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock, or fails naming the process that has it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise TformerError(f"run directory {self.path.parent} is in use by another tformer training "
                               f"(process {holder})",
                               hint="wait for it to finish, or give this run its own directory "
                                    "(hydra.run.dir=...); resume=auto continues a run once it has stopped") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (removing it would race with a new holder)
            self.fd = None
