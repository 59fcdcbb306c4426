"""Built-in debian_descriptions: Debian's Translation-en index read into summarization pairs.

Fast tests parse a hand-made excerpt with the real layout and serve it over HTTP from this machine; the `slow`
test fetches the real index from deb.debian.org once and checks the prepared data and its split.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import lzma
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from transformer_cli.data.builtin import BUILTIN, SPLITS, prepare_builtin, prepared_sha256
from transformer_cli.data.builtin.debian_descriptions import (
    filter_counts,
    parse_index,
    pairs,
    split_by_family,
    stem,
)
from transformer_cli.errors import TformerError


def words(prefix: str, n: int) -> str:
    """n distinct words starting with prefix, wrapped as description lines (each starting with a space)."""
    tokens = [f"{prefix}{i}" for i in range(n)]
    return "\n".join(" " + " ".join(tokens[i : i + 10]) for i in range(0, n, 10))


def stanza(package: str, synopsis: str, body: str) -> str:
    """One stanza of Translation-en."""
    md5 = hashlib.md5(body.encode()).hexdigest()
    return f"Package: {package}\nDescription-md5: {md5}\nDescription-en: {synopsis}\n{body}\n"


SHARED_BODY = words("shared", 45)
EXCERPT = "\n".join([
    stanza("0ad", "Real-time strategy game of ancient warfare",
           " 0 A.D. is a free, open-source real-time strategy game.\n .\n" + words("war", 40)
           + "\n .\n  A verbatim line, indented twice.\n"),
    stanza("0ad-data", "Real-time strategy game of ancient warfare (data files)", words("data", 50)),
    stanza("0ad-tools", "tools for the strategy game", words("tool", 50)),
    stanza("libfoo1", "library for foo things", words("lib", 60)),
    stanza("foo-dev", "development files for foo", words("dev", 60)),
    stanza("python3-bar", "Python 3 module for bar", words("py", 60)),
    stanza("shortbody", "a body that is too short", words("short", 39)),
    stanza("shortsyn", "two words", words("syn", 50)),
    stanza("editor-gtk", "text editor for GTK", SHARED_BODY),
    stanza("editor", "simple text editor", SHARED_BODY.upper()),  # the same body, other case: kept once
    stanza("zzz-other", "an unrelated package entirely", words("other", 41)),
    "Package: nodescription\nDescription-md5: 0\n",
])


def test_parse_bodies_and_paragraphs() -> None:
    """Synopsis from the first line; the body joins paragraphs (" ." breaks) and lines into plain text."""
    entries = {e.package: e for e in parse_index(EXCERPT)}
    assert "nodescription" not in entries and len(entries) == 11
    game = entries["0ad"]
    assert game.synopsis == "Real-time strategy game of ancient warfare"
    assert game.body.startswith("0 A.D. is a free, open-source real-time strategy game. war0 war1")
    assert game.body.endswith("war39 A verbatim line, indented twice.")
    assert " . " not in game.body and "\n" not in game.body and "  " not in game.body


def test_filters_dedupe_and_families() -> None:
    """Short bodies and synopses, lib*, -dev and ecosystem packages are dropped; one of two equal bodies kept."""
    entries = parse_index(EXCERPT)
    assert filter_counts(entries) == {"lib": 1, "-dev": 1, "-data": 1, "python3-": 1, "body < 40 words": 1,
                                      "synopsis < 3 words": 1}
    rows = {r["package"]: r for r in pairs(entries)}
    assert sorted(rows) == ["0ad", "0ad-tools", "editor", "zzz-other"]  # editor-gtk: the same body as editor
    assert rows["editor"]["target"] == "simple text editor"  # the shorter name wins the duplicate
    assert {rows[p]["family"] for p in ("0ad", "0ad-tools")} == {"0ad"}
    assert rows["zzz-other"]["family"] == "zzz"


def test_first_sentence_joins_families() -> None:
    """Packages of different stems whose bodies open with the same sentence are one family (one split)."""
    body = " Gizmo is a toolkit for widgets of every kind.\n" + words("g", 40)
    rows = pairs(parse_index(stanza("gizmo-tools", "tools of the gizmo toolkit", body) + "\n"
                             + stanza("widgetry", "widgets built with gizmo", body + " more") + "\n"))
    assert [r["family"] for r in rows] == ["gizmo", "gizmo"]
    assert len({split_by_family(r) for r in rows}) == 1


# --- the product's fetch path: an HTTP server on this machine -------------------------------------


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The excerpt xz-compressed and served over HTTP; the built-in pinned to it (archive and prepared hash)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    archive = folder / "Translation-en.xz"
    archive.write_bytes(lzma.compress(EXCERPT.encode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/Translation-en.xz"
    ds = dataclasses.replace(BUILTIN["debian_descriptions"], url=url,
                             sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), prepared_sha256="")
    monkeypatch.setitem(BUILTIN, "debian_descriptions", ds)
    # the prepared hash of the excerpt, from a first preparation
    probe = prepare_builtin("debian_descriptions", tmp_path / "probe")
    ds = dataclasses.replace(ds, prepared_sha256=prepared_sha256(probe["train"].parent))
    monkeypatch.setitem(BUILTIN, "debian_descriptions", ds)
    yield {"archive": archive, "url": url, "ds": ds}
    server.shutdown()
    server.server_close()


def test_download_prepare_and_record(served: dict[str, Any], tmp_path: Path) -> None:
    """Fetched over HTTP, verified, cached; meta.json records the archive and prepared-file hashes."""
    cache = tmp_path / "cache"
    paths = prepare_builtin("debian_descriptions", cache)
    assert (cache / "archives" / served["ds"].archive).read_bytes() == served["archive"].read_bytes()
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["archive_sha256_used"] == served["ds"].sha256
    assert meta["prepared_sha256"] == served["ds"].prepared_sha256
    rows = {split: list(csv.DictReader(paths[split].open())) for split in SPLITS}
    assert sum(len(r) for r in rows.values()) == 4
    assert all(split_by_family(row) == split for split in SPLITS for row in rows[split])


def test_changed_archive_refused_unless_allowed(served: dict[str, Any], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A new index upstream (a point release) is refused by default; allowed, it is prepared, recorded and
    warned about at every later use."""
    served["archive"].write_bytes(lzma.compress((EXCERPT + "\n" + stanza(
        "newpkg", "a package added at a point release", words("new", 44))).encode()))
    cache = tmp_path / "cache"
    with pytest.raises(TformerError) as err:
        prepare_builtin("debian_descriptions", cache)
    assert "sha256 mismatch" in err.value.message and "data.allow_new_archive=true" in err.value.hint
    assert not (cache / "datasets").exists()
    with caplog.at_level(logging.WARNING):
        paths = prepare_builtin("debian_descriptions", cache, allow_new_archive=True)
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["archive_sha256_used"] == hashlib.sha256(served["archive"].read_bytes()).hexdigest()
    assert meta["prepared_sha256"] != served["ds"].prepared_sha256
    assert "NEW archive" in caplog.text and "NOT the pinned pair set" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare_builtin("debian_descriptions", cache)  # a later run, from the cache: still warned
    assert "NOT the pinned pair set" in caplog.text


def test_allow_new_archive_refused_for_fixed_archives(tmp_path: Path) -> None:
    with pytest.raises(TformerError, match="does not apply to cmudict"):
        prepare_builtin("cmudict", tmp_path, allow_new_archive=True)


def test_unreachable_server_explains_the_manual_route(served: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = dataclasses.replace(served["ds"], url=served["url"].replace("Translation-en.xz", "missing.xz"))
    monkeypatch.setitem(BUILTIN, "debian_descriptions", ds)
    with pytest.raises(TformerError) as err:
        prepare_builtin("debian_descriptions", tmp_path / "cache")
    assert "404" in err.value.message and "curl -O" in err.value.hint and "data.archive=" in err.value.hint


# --- the real index (fetched from deb.debian.org once) -------------------------------------------


@pytest.mark.slow
def test_real_index_split_by_family() -> None:
    """The pinned index gives the pinned pair set; no package family (name stem) is on two sides."""
    try:
        paths = prepare_builtin("debian_descriptions")
    except TformerError as err:
        if "sha256 mismatch" in err.message:
            pytest.skip(f"Debian's index changed since it was pinned (a point release): {err.message}")
        raise
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["prepared_sha256"] == BUILTIN["debian_descriptions"].prepared_sha256
    assert meta["rows"] == {"train": 10786, "validation": 741, "test": 704}
    sides: dict[str, set[str]] = {}
    for split in SPLITS:
        for row in csv.DictReader(paths[split].open(encoding="utf-8")):
            assert len(row["source"].split()) >= 40 and len(row["target"].split()) >= 3
            assert not row["package"].startswith("lib") and not row["package"].endswith("-dev")
            sides.setdefault(f"stem:{stem(row['package'])}", set()).add(split)
            sides.setdefault(f"family:{row['family']}", set()).add(split)
    assert all(len(splits) == 1 for splits in sides.values())
