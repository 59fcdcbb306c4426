"""Small file helpers every module shares: strict JSON, atomic writes, sha256, the umask.

One implementation each, so that every JSON file tformer writes is strict (NaN and infinities become
null) and every file a reader may look at while it is written appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

CHUNK = 1 << 20  # bytes read at a time when hashing


def jsonable(value: Any) -> Any:
    """A copy of value that json.dumps accepts strictly: tensors and numpy values become Python numbers and
    lists, NaN and +-inf become None (bare NaN / Infinity tokens are not valid JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch / numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data: Any, indent: int | None = 2, sort_keys: bool = False,
          default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of `data` (see jsonable); a value JSON cannot hold is a TypeError unless `default`
    converts it."""
    return json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys, allow_nan=False, default=default,
                      ensure_ascii=False)


def write_json(path: Path, data: Any, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> Path:
    """Write strict, indented JSON atomically: a reader never sees half a file."""
    write_text_atomic(Path(path), dumps(data, sort_keys=sort_keys, default=default) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    """Parse a JSON file (OSError and ValueError propagate: callers say what the file was for)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; an output is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk, where the filesystem allows it."""
    try:
        fsync(path)
    except OSError:
        pass  # some filesystems do not allow fsync on directories
