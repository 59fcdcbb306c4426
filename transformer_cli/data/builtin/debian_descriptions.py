"""Debian package descriptions: long description -> the one-line synopsis a person wrote (summarization).

Read out of Debian's English description index (`main/i18n/Translation-en` of one suite). Each stanza has
`Package:`, `Description-md5:` and `Description-en:`, whose first line is the synopsis and whose following
lines (each starting with a space; " ." alone is a paragraph break) are the long description.

Pairs keep a body of at least MIN_BODY_WORDS words and a synopsis of at least MIN_SYNOPSIS_WORDS; packages of
templated families (libraries, -dev, -doc, language-ecosystem packages written from a generator's template)
are dropped; identical bodies are kept once. The split is decided by the package's family (packages sharing
the stem before the first '-', or the first sentence of their body), so no family is on two sides.
"""

from __future__ import annotations

import hashlib
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from transformer_cli.data.builtin.spec import BuiltinDataset, Row
from transformer_cli.errors import TformerError

INDEX_URL = "http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.xz"
MIN_BODY_WORDS = 40
MIN_SYNOPSIS_WORDS = 3
# Name prefixes and suffixes of templated families, in the order they are tested (the first match counts).
# Libraries and language-ecosystem packages are mostly written from a packaging tool's template
# ("This package contains the Python 3 module ..."); one stem would also hold thousands of packages.
TEMPLATED_PREFIXES = ("lib", "python3-", "python-", "golang-", "node-", "ruby-", "r-cran-", "r-bioc-",
                      "r-other-", "php-", "elpa-", "gir1.2-", "fonts-", "tryton-", "lua-", "texlive-",
                      "linux-", "ocaml-", "haskell-", "perl-", "firmware-")
TEMPLATED_SUFFIXES = ("-dev", "-doc", "-data", "-dbg", "-dbgsym", "-common", "-examples", "-tests", "-java",
                      "-l10n", "-perl", "-cross", "-prof")
# sha1(salt + family) % 20: 0-17 train, 18 validation, 19 test (90/5/5)
_SPLIT_SALT = "debian_descriptions/"
_SPLIT_OF_BUCKET = ("train",) * 18 + ("validation", "test")
_FIELD = re.compile(r"^([A-Za-z0-9-]+):[ \t]?(.*)$")


@dataclass(frozen=True)
class Entry:
    """One stanza of the index: a package, its synopsis and its long description as plain text."""

    package: str
    synopsis: str
    body: str


def extract(archive: Path) -> list[Row]:
    """Summarization pairs out of the xz-compressed Translation-en index."""
    try:
        text = lzma.decompress(archive.read_bytes()).decode("utf-8")
    except (lzma.LZMAError, UnicodeDecodeError) as err:
        raise TformerError(f"{archive} is not an xz-compressed Debian description index: {err}",
                           hint="pass the Translation-en.xz file of a Debian suite") from err
    return pairs(parse_index(text))


def parse_index(text: str) -> list[Entry]:
    """Every stanza with a package name and an English description, in file order."""
    entries = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        entry = _stanza(stanza.splitlines())
        if entry is not None:
            entries.append(entry)
    return entries


def _stanza(lines: list[str]) -> Entry | None:
    """Package and Description-en of one stanza (continuation lines start with a space)."""
    package, synopsis, body, field = "", "", [], ""
    for line in lines:
        if line[:1] in (" ", "\t"):
            if field == "Description-en":
                body.append(line)
            continue
        match = _FIELD.match(line)
        field = match.group(1) if match else ""
        if field == "Package":
            package = match.group(2).strip()
        elif field == "Description-en":
            synopsis = match.group(2).strip()
    if not package or not synopsis:
        return None
    return Entry(package, synopsis, body_text(body))


def body_text(lines: list[str]) -> str:
    """Description lines -> plain text: " ." paragraph breaks and line breaks become spaces."""
    words = []
    for line in lines:
        content = line[1:]
        if content.strip() == ".":  # a paragraph break
            continue
        words.extend(content.split())
    return " ".join(words)


def excluded_by(package: str) -> str | None:
    """The templated-family filter that drops this package ('lib', '-dev', ...), or None to keep it."""
    for prefix in TEMPLATED_PREFIXES:
        if package.startswith(prefix):
            return prefix
    for suffix in TEMPLATED_SUFFIXES:
        if package.endswith(suffix):
            return suffix
    return None


def filter_counts(entries: list[Entry]) -> dict[str, int]:
    """How many entries each filter removes, tested in order: short body, short synopsis, each family."""
    counts: dict[str, int] = {}
    for entry in entries:
        reason = _reason(entry)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _reason(entry: Entry) -> str | None:
    """Why an entry is dropped (the first filter that applies), or None."""
    if len(entry.body.split()) < MIN_BODY_WORDS:
        return f"body < {MIN_BODY_WORDS} words"
    if len(entry.synopsis.split()) < MIN_SYNOPSIS_WORDS:
        return f"synopsis < {MIN_SYNOPSIS_WORDS} words"
    return excluded_by(entry.package)


def pairs(entries: list[Entry]) -> list[Row]:
    """Kept entries, one per distinct body (the shortest package name wins), with their family."""
    kept = sorted((e for e in entries if _reason(e) is None), key=lambda e: (len(e.package), e.package))
    by_body: dict[str, Entry] = {}
    for entry in kept:
        by_body.setdefault(normalised(entry.body), entry)
    unique = list(by_body.values())
    family = families(unique)
    return [{"source": e.body, "target": e.synopsis, "package": e.package, "family": family[e.package]}
            for e in unique]


def normalised(text: str) -> str:
    """Text compared for duplicates: case and spacing ignored."""
    return " ".join(text.casefold().split())


def stem(package: str) -> str:
    """The name before its first '-' (`0ad-data` -> `0ad`)."""
    return package.split("-", 1)[0]


def families(entries: list[Entry]) -> dict[str, str]:
    """Package -> its family's name: packages are joined when they share a stem or the body's first sentence.

    The family is named by its alphabetically first stem, so it does not depend on the order of entries."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        """The representative of key's group (path halving)."""
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for entry in entries:
        a, b = root("stem:" + stem(entry.package)), root("lead:" + first_sentence(entry.body))
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for entry in entries:
        members.setdefault(root("stem:" + stem(entry.package)), []).append(stem(entry.package))
    names = {r: min(stems) for r, stems in members.items()}
    return {e.package: names[root("stem:" + stem(e.package))] for e in entries}


def first_sentence(body: str) -> str:
    """The body's opening up to its first full stop (at most 30 words), normalised."""
    words = normalised(body).split()[:30]
    for i, word in enumerate(words):
        if word.endswith("."):
            return " ".join(words[: i + 1])
    return " ".join(words)


def split_by_family(row: Row) -> str:
    """train / validation / test of a pair, from a hash of its family alone (90/5/5)."""
    digest = hashlib.sha1((_SPLIT_SALT + row["family"]).encode("utf-8")).digest()
    return _SPLIT_OF_BUCKET[int.from_bytes(digest[:8], "big") % len(_SPLIT_OF_BUCKET)]


DEBIAN_DESCRIPTIONS = BuiltinDataset(
    name="debian_descriptions",
    task="seq2seq",
    package="Translation-en (Debian bookworm main)",
    archive="bookworm-main-Translation-en.xz",
    sha256="a3d4a0bfd8e9242810b0885eda7c1a6e05dac15b333ddbaab03ba56f2dfa4bf0",
    sdist=False,
    text_column="source",
    label_column="target",
    citation="Debian package descriptions (English), from the Debian archive's bookworm main "
    "i18n/Translation-en index; each description is part of its package and is distributed under "
    "that package's own free licence (see the package's debian/copyright)",
    extract=extract,
    downloader="http",
    url=INDEX_URL,
    split=split_by_family,
    prepared_sha256="94325b6e0d0ab6431f8c6fd49f277d3629b4c971b3ba06c5304c532ee5079025",
    notes="summarization: source is a package's long description joined into plain text, target its "
    f"one-line synopsis. Kept: body >= {MIN_BODY_WORDS} words, synopsis >= {MIN_SYNOPSIS_WORDS} words; "
    "dropped: package names starting with " + ", ".join(TEMPLATED_PREFIXES) + " or ending with "
    + ", ".join(TEMPLATED_SUFFIXES) + "; identical bodies (case and spacing ignored) kept once, under the "
    "shortest package name. Split 90/5/5 by family (packages sharing the name stem before the first '-' or "
    "the first sentence of their body), so no family is on two sides",
)
