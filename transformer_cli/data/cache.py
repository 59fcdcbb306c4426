"""Tokenized splits kept on disk, memory-mapped, and reused by every run with the same data and settings.

An entry is a folder named by the hash of everything its contents depend on: the data files' contents,
the data, tokenizer and task settings, and the tokenizer given by a resumed run or a pretrained model.
It holds the tokenizer and task state learned on train, and per split the ids (a Ragged), the encoded
targets and, for a task that has them, its side records (JSON Lines, read when first used). It is written
in a temporary folder and renamed into place when complete, so a folder with that name is always whole;
an interrupted write leaves only a temporary folder, removed by the next write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from transformer_cli.data.batching import Encoded, EncodedSplit
from transformer_cli.data.builtin import default_cache_dir
from transformer_cli.data.loading import require_file
from transformer_cli.data.ragged import Ragged, RaggedWriter, open_ragged
from transformer_cli.files import dumps, fsync_dir, read_json, sha256_file, write_json

FORMAT = 2  # bump when the layout or the meaning of a file changes: old entries are then never matched
# (2: seq2seq entries gained side records, their source keys)
NOT_HASHED = ("cache", "cache_dir", "archive", "allow_new_archive", "train", "validation", "test")  # files enter by content


def cache_root(data_cfg: Any) -> Path:
    """Where tokenized splits live: <data.cache_dir or $TFORMER_CACHE or ~/.cache/tformer>/tokenized."""
    base = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else default_cache_dir()
    return base / "tokenized"


def file_hashes(files: dict[str, str]) -> dict[str, str]:
    """Split name -> sha256 of that file's contents (a missing one named as the loader names it)."""
    for split, path in files.items():
        require_file(Path(path), split)
    return {split: sha256_file(Path(path)) for split, path in sorted(files.items())}


def entry_key(cfg: DictConfig, hashes: dict[str, str], source: str) -> str:
    """The hash naming an entry: file contents (`hashes`), data/tokenizer/task settings and where the
    tokenizer came from (`source`: 'trained', or a hash of a given tokenizer)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in NOT_HASHED}
    inputs = {"format": FORMAT, "files": hashes,
              "data": data, "task": OmegaConf.to_container(cfg.task, resolve=True), "loss": cfg.loss.name,
              "tokenizer": source}
    return hashlib.sha256(dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def text_hash(*texts: str) -> str:
    """A short hash of some texts (a tokenizer's JSON, a task state), for an entry's `source`."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:32]


def find(root: Path, key: str) -> Path | None:
    """The complete entry for `key`, or None."""
    folder = root / key
    return folder if (folder / "manifest.json").is_file() else None


@contextlib.contextmanager
def writing(root: Path, key: str) -> Iterator[Path]:
    """A temporary folder to fill; renamed to the entry when the block ends without error, removed if not."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, root / key)
        except OSError:  # another process published the same entry first: keep theirs
            if find(root, key) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_abandoned(root: Path) -> None:
    """Temporary folders of writers that are no longer running (killed mid-write)."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SplitWriter:
    """Writes one split's ids and targets chunk by chunk, holding only the current chunk."""

    def __init__(self, folder: Path, name: str, id_dtype: str) -> None:
        self.folder, self.name = folder, name
        self.ids = RaggedWriter(folder / name, id_dtype)
        self.tensors: list[np.ndarray] = []  # per-example targets are small: kept until close
        self.sequences: RaggedWriter | None = None  # seq2seq targets: ids written like the inputs
        self.side: Any = None  # the side records' file, opened by the first chunk that has any

    def append(self, encoded: Encoded) -> None:
        """Add a chunk: its ids end to end (total,), their lengths (n,), its n encoded targets, its side records."""
        self.ids.append(encoded.flat, encoded.lengths)
        if encoded.side is not None:
            if self.side is None:
                self.side = open(self.folder / f"{self.name}.side.jsonl", "w", encoding="utf-8")
            self.side.writelines(dumps(record, indent=None) + "\n" for record in encoded.side)
        targets = encoded.targets
        if isinstance(targets, Tensor):
            self.tensors.append(targets.numpy())
            return
        if self.sequences is None:
            self.sequences = RaggedWriter(self.folder / f"{self.name}.targets", "int32")
        self.sequences.append(np.concatenate(targets), np.array([len(t) for t in targets]))

    def close(self) -> dict[str, Any]:
        """Finish the files; the split's manifest record."""
        rows = self.ids.close()
        side = {}
        if self.side is not None:
            self.side.flush()
            os.fsync(self.side.fileno())
            self.side.close()
            side = {"side": True}  # only then: the manifests of tasks without side records stay as they were
        if self.sequences is not None:
            self.sequences.close()
            return {"rows": rows, "ids": self.ids.dtype.name, "targets": "sequences", **side}
        np.save(self.folder / f"{self.name}.targets.npy", np.concatenate(self.tensors))
        return {"rows": rows, "ids": self.ids.dtype.name, "targets": "tensor", **side}


def open_split(folder: Path, name: str, record: dict[str, Any]) -> EncodedSplit:
    """A split of an entry: ids memory-mapped, targets a tensor in memory or memory-mapped sequences."""
    ids = open_ragged(folder / name, record["ids"])
    targets: Tensor | Ragged
    if record["targets"] == "sequences":
        targets = open_ragged(folder / f"{name}.targets", "int32")
    else:
        targets = torch.from_numpy(np.load(folder / f"{name}.targets.npy"))
    side = SideRecords(folder / f"{name}.side.jsonl") if record.get("side") else None
    return EncodedSplit(ids, targets, side)


class SideRecords(Sequence):
    """A split's side records, read from their JSON Lines file when first used (a training split's are not)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: list[Any] | None = None

    def _all(self) -> list[Any]:
        if self._records is None:
            with self.path.open(encoding="utf-8") as f:
                self._records = [json.loads(line) for line in f]
        return self._records

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]


def write_manifest(folder: Path, splits: dict[str, dict[str, Any]], key: str) -> None:
    """The file that marks an entry complete (written last)."""
    write_json(folder / "manifest.json", {"format": FORMAT, "key": key, "splits": splits})


def read_manifest(folder: Path) -> dict[str, Any]:
    """An entry's manifest."""
    return read_json(folder / "manifest.json")


def id_dtype(vocab_size: int) -> str:
    """The smallest dtype that holds every id: uint16 for vocabularies up to 65,536, else int32."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"
