"""Turn a dataset's raw rows into its prepared folder: clean, dedupe, split, write CSVs and meta.json.

The split of a row is decided by a hash of its text alone, so it does not depend on row order, on the
other rows, or on the machine; the folder is written beside its final place and renamed into it, so a
reader never sees a half-written dataset.
"""

from __future__ import annotations

import csv
import hashlib
import html
import math
import os
import re
import shutil
import statistics
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformer_cli.data.builtin.spec import BuiltinDataset, Row
from transformer_cli.files import write_json

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Bump when cleaning, dedupe or split rules change: old caches stay valid for old code.
LAYOUT_VERSION = "v1"
# sha1(split key) % 10: 0-7 train, 8 validation, 9 test.
_SPLIT_OF_BUCKET: tuple[str, ...] = ("train",) * 8 + ("validation", "test")
_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


def prepare_into(ds: BuiltinDataset, archive: Path, final: Path) -> None:
    """Extract the archive; clean, dedupe and split its rows by hash (or by the dataset's own splits); publish
    the folder atomically."""
    raw = ds.extract(archive)
    splits = ds.splits(list(raw)) if ds.splits is not None else _hash_splits(raw, ds)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for split, split_rows in splits.items():
            _write_csv(tmp / f"{split}.csv", split_rows)
        write_json(tmp / "meta.json", _meta(ds, len(raw), splits))
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hash_splits(raw: list[Row], ds: BuiltinDataset) -> dict[str, list[Row]]:
    """Clean, dedupe and order the rows, and split them by the dataset's row rule or the hash of their text."""
    splits: dict[str, list[Row]] = {split: [] for split in SPLITS}
    for row in _ordered(_dedupe(_cleaned(raw, ds), ds), ds):
        splits[ds.split(row) if ds.split else split_of(row[ds.text_column])].append(row)
    return splits


def is_complete(folder: Path) -> bool:
    """True when every split file and meta.json is present (the folder only appears complete)."""
    names = [f"{split}.csv" for split in SPLITS] + ["meta.json"]
    return all((folder / n).is_file() for n in names)


# --- cleaning, split, dedupe ------------------------------------------------------------------


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
    """One row per distinct clean text (mean score, majority label); seq2seq keeps every distinct row."""
    if ds.task == "seq2seq":  # one source may have several targets: its references
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
        """The text's sha1, then the text, then the whole row: a total order that no input order affects."""
        text = row[ds.text_column]  # unique after dedupe, except a seq2seq source: then the rest decides
        return hashlib.sha1(text.encode("utf-8")).hexdigest(), text, tuple(row.values())

    return sorted(rows, key=key)


# --- writing the prepared folder --------------------------------------------------------------


def _write_csv(path: Path, rows: list[Row]) -> None:
    """One split as UTF-8 CSV with a header; the csv module quotes commas, quotes and newlines."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an incomplete leftover is replaced, a racer's kept."""
    if final.exists() and not is_complete(final):
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):  # another process published first: theirs is identical
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
        "split_rule": "the dataset's own (see notes)" if ds.split else ds.split_rule,
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
    if ds.task == "qa":
        return {"questions": len(rows), "articles": len({r["title"] for r in rows}),
                "paragraphs": len({r["context"] for r in rows})}
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
