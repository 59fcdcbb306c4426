"""VADER: human-rated sentiment scores of sentences, read out of the vaderSentiment source archive."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from transformer_cli.data.builtin.spec import BuiltinDataset, Row

_ROOT = "vaderSentiment-3.3.2"
_NESTED = f"{_ROOT}/additional_resources/hutto_ICWSM_2014.tar.gz"
_GROUND_TRUTH = "_GroundTruth.txt"


def extract(archive: Path) -> list[Row]:
    """VADER human-rated sentences from the tarball nested in the vaderSentiment source archive."""
    with tarfile.open(archive) as outer:
        member = outer.extractfile(_NESTED)
        inner_bytes = member.read() if member else b""
    rows: list[Row] = []
    # Members are read by name into memory, never extracted to disk.
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for info in sorted(inner.getmembers(), key=lambda m: m.name):
            base = Path(info.name).name
            if info.isfile() and base.endswith(_GROUND_TRUTH):
                data = inner.extractfile(info).read()  # type: ignore[union-attr]
                rows += _ground_truth_rows(data, base.removesuffix(_GROUND_TRUTH))
    return rows


def _ground_truth_rows(data: bytes, source: str) -> list[Row]:
    """Rows of one VADER `*_GroundTruth.txt`: `id<TAB>score<TAB>text`, CRLF, no header."""
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        _id, score, text = _decode_line(line).split("\t", 2)
        rows.append({"text": text, "score": score.strip(), "source": source})
    return rows


def _decode_line(line: bytes) -> str:
    """UTF-8, or latin-1 for a line that is not (latin-1 decodes any byte, so nothing is lost)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


VADER = BuiltinDataset(
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
    extract=extract,
)
