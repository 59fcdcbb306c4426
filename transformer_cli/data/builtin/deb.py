"""Read files out of a Debian package (.deb) in pure Python, without dpkg and without installing it.

A .deb is an `ar` archive: `debian-binary`, `control.tar.*`, then `data.tar.*` holding the installed
files. Each ar member has a 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2)
and is padded to an even length. `data.tar` may be gzip, xz, bzip2 or uncompressed (Python's tarfile
reads all four); zstd, which newer Debian tools can write, is read with the `zstandard` package or,
failing that, with `dpkg-deb --fsys-tarfile` when dpkg is installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

from transformer_cli.errors import TformerError

AR_MAGIC = b"!<arch>\n"
_HEADER = 60


def ar_members(data: bytes, where: str) -> dict[str, bytes]:
    """Every member of an ar archive by name."""
    if not data.startswith(AR_MAGIC):
        raise TformerError(f"{where} is not a Debian package (no ar header)")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos + _HEADER <= len(data):
        header = data[pos : pos + _HEADER]
        if header[58:60] != b"`\n":
            raise TformerError(f"{where}: damaged ar header at byte {pos}")
        name = header[:16].decode("ascii", errors="replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        start = pos + _HEADER
        if start + size > len(data):
            raise TformerError(f"{where}: member {name} is truncated")
        members[name] = data[start : start + size]
        pos = start + size + (size % 2)
    return members


def read_deb(path: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """The named files (paths as installed, without a leading '/') from a .deb's data.tar."""
    where = str(path)
    members = ar_members(path.read_bytes(), where)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise TformerError(f"{where} has no data.tar member; members: {', '.join(members) or 'none'}")
    tar_bytes = _data_tar(path, data_name, members[data_name])
    want = {w.lstrip("/") for w in wanted}
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:  # read by name into memory; nothing is extracted to disk
            name = info.name.removeprefix("./")
            if name in want and info.isfile():
                found[name] = tar.extractfile(info).read()  # type: ignore[union-attr]
    missing = sorted(want - found.keys())
    if missing:
        raise TformerError(f"{where} does not contain {', '.join(missing)}",
                           hint="the package is not the one tformer expects (another version or a damaged file)")
    return found


def _data_tar(path: Path, name: str, payload: bytes) -> bytes:
    """data.tar as an uncompressed tar stream, or a compressed one that tarfile reads itself."""
    if not name.endswith(".zst"):
        return payload
    try:
        import zstandard  # optional: only needed for zstd packages
    except ImportError:
        return _dpkg_fsys_tarfile(path)
    return zstandard.ZstdDecompressor().decompressobj().decompress(payload)


def _dpkg_fsys_tarfile(path: Path) -> bytes:
    """The data tar via dpkg-deb, for zstd packages when the zstandard module is absent."""
    if shutil.which("dpkg-deb") is None:
        raise TformerError(f"{path} compresses its files with zstd, which this Python cannot read",
                           hint="pip install zstandard (or install dpkg)")
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise TformerError(f"dpkg-deb could not read {path}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
