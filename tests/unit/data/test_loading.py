"""Local data files: every format, text pairs, the carved validation split, limits, and every user mistake."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import DictConfig, OmegaConf

from transformer_cli.config import DataConfig
from transformer_cli.data.loading import RawSplit, load_splits, open_splits, read_eval_file
from transformer_cli.errors import TformerError
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask

Rows = list[dict[str, Any]]


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets` offline and its cache in a fresh temporary directory."""
    import datasets

    cache = tmp_path_factory.mktemp("hf")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # `datasets` reads these at import time, and another test may have imported it already.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def data_cfg(**overrides: Any) -> DictConfig:
    """A typed data config for local files, with `overrides` applied."""
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"source": "local", "name": None, **overrides})


def write(path: Path, rows: Rows) -> Path:
    """Write rows in the format the file's extension names (csv, tsv, jsonl, json, parquet)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(",".join(map(str, r.values())) for r in rows))
    return path


def numbered(n: int, prefix: str = "t") -> Rows:
    """n rows whose text names their 1-based row number, with alternating labels."""
    return [{"text": f"{prefix}{i}", "label": "pos" if i % 2 else "neg"} for i in range(1, n + 1)]


def row_of(split: RawSplit, i: int) -> int:
    """The row number encoded in the text of value i (see `numbered`)."""
    return int(split.texts[i].lstrip("tvs"))


ROWS = [
    {"text": "a fine film", "label": "pos"},
    {"text": "NA", "label": "neg"},
    {"text": "null", "label": "pos"},
    {"text": "dull, slow; long", "label": "neg"},
]


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.TSV", "train.jsonl", "train.json", "train.parquet"])
def test_every_format_loads_texts_and_labels(tmp_path: Path, name: str) -> None:
    """Each supported format yields the same texts and labels; 'NA' and 'null' stay text."""
    train = write(tmp_path / name, ROWS)
    val = write(tmp_path / f"val{Path(name).suffix}", ROWS[:2])
    splits = load_splits(data_cfg(train=str(train), validation=str(val)))
    assert set(splits) == {"train", "validation"}
    assert splits["train"].texts == [r["text"] for r in ROWS]
    assert splits["train"].labels == [r["label"] for r in ROWS]
    assert splits["train"].pairs is None
    assert splits["validation"].texts == ["a fine film", "NA"]
    assert splits["train"].where.source == str(train)
    assert [splits["train"].where.row(i) for i in range(4)] == [1, 2, 3, 4]


def test_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    """data.format=json reads a JSON Lines file whatever its name."""
    train = tmp_path / "train.data"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    splits = load_splits(data_cfg(train=str(train), format="json", val_fraction=0.25))
    assert sorted(splits["train"].texts + splits["validation"].texts) == sorted(r["text"] for r in ROWS)


def test_compressed_csv_loads(tmp_path: Path) -> None:
    """A .csv.gz is read as CSV."""
    import gzip

    plain = write(tmp_path / "plain.csv", ROWS)
    gz = tmp_path / "train.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    splits = load_splits(data_cfg(train=str(gz), validation=str(plain)))
    assert splits["train"].texts == [r["text"] for r in ROWS]


def test_numeric_labels_and_tsv_na(tmp_path: Path) -> None:
    """Numeric label columns come back as numbers; a TSV text 'NA' stays text."""
    rows = [{"text": "NA", "label": 1}, {"text": "n/a", "label": 0}, {"text": "x", "label": 1}]
    train = write(tmp_path / "train.tsv", rows)
    splits = load_splits(data_cfg(train=str(train), validation=str(train)))
    assert splits["train"].texts == ["NA", "n/a", "x"]
    assert [int(v) for v in splits["train"].labels] == [1, 0, 1]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_text_pair_column(tmp_path: Path, suffix: str) -> None:
    """text_pair_column yields a second text per row, aligned with the first."""
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "y": i % 3} for i in range(6)]
    train = write(tmp_path / f"train{suffix}", rows)
    cfg = data_cfg(train=str(train), validation=str(train), text_column="premise",
                   text_pair_column="hypothesis", label_column="y")
    split = load_splits(cfg)["train"]
    assert split.texts == [f"p{i}" for i in range(6)]
    assert split.pairs == [f"h{i}" for i in range(6)]
    assert [int(v) for v in split.labels] == [0, 1, 2, 0, 1, 2]
    sub = split.subset([4, 1])
    assert sub.pairs == ["h4", "h1"] and sub.texts == ["p4", "p1"]


def test_carved_validation_is_seeded_disjoint_and_keeps_row_numbers(tmp_path: Path) -> None:
    """Without a validation file, val_fraction of train is carved off, the same way on every call."""
    train = write(tmp_path / "train.csv", numbered(40))
    cfg = data_cfg(train=str(train), val_fraction=0.25, split_seed=7)
    first, again = load_splits(cfg), load_splits(cfg)
    tr, va = first["train"], first["validation"]
    assert (len(tr), len(va)) == (30, 10)
    assert va.texts == again["validation"].texts and tr.texts == again["train"].texts
    assert va.labels == again["validation"].labels
    tr_rows = [tr.where.row(i) for i in range(len(tr))]
    va_rows = [va.where.row(i) for i in range(len(va))]
    assert not set(tr_rows) & set(va_rows)
    assert sorted(tr_rows + va_rows) == list(range(1, 41))
    # Each value still carries the row it was read from.
    assert tr_rows == [row_of(tr, i) for i in range(len(tr))]
    assert va_rows == [row_of(va, i) for i in range(len(va))]
    assert va.labels == ["pos" if r % 2 else "neg" for r in va_rows]
    assert "validation" in va.where.split and va.where.source == str(train)
    other = load_splits(data_cfg(train=str(train), val_fraction=0.25, split_seed=8))["validation"]
    assert other.texts != va.texts


def test_error_in_carved_validation_names_the_original_row(tmp_path: Path) -> None:
    """An unknown label in the carved split is reported at its row in the training file."""
    rows = numbered(20)
    rows[12]["label"] = "maybe"  # row 13 of the file
    train = write(tmp_path / "train.csv", rows)
    cfg = data_cfg(train=str(train), val_fraction=0.5, split_seed=0)
    splits = load_splits(cfg)
    bad = next(name for name, s in splits.items() if "maybe" in s.labels)
    others = [s for name, s in splits.items() if name != bad]
    task = ClassifyTask(OmegaConf.structured(ClassifyConfig), "index",
                        ClassifyTask.fit_state(others[0].labels, None, None, str(train)))
    with pytest.raises(TformerError) as err:
        task.encode_targets(splits[bad].labels, splits[bad].where)
    assert "row 13 " in str(err.value) and str(train) in str(err.value) and "'maybe'" in str(err.value)


def test_validation_file_is_used_as_is(tmp_path: Path) -> None:
    """A validation file is not carved from train, and a test file is read too."""
    train = write(tmp_path / "train.csv", numbered(10))
    val = write(tmp_path / "val.csv", numbered(3, "v"))
    test = write(tmp_path / "test.csv", numbered(4, "s"))
    splits = load_splits(data_cfg(train=str(train), validation=str(val), test=str(test)))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "validation": 3, "test": 4}
    assert splits["validation"].where.split == "validation"
    assert splits["test"].texts == ["s1", "s2", "s3", "s4"]


def test_max_train_examples_is_a_seeded_subset(tmp_path: Path) -> None:
    """max_train_examples keeps a seeded random subset of train, in file order, with its row numbers."""
    train = write(tmp_path / "train.csv", numbered(50))
    val = write(tmp_path / "val.csv", numbered(5, "v"))
    cfg = data_cfg(train=str(train), validation=str(val), max_train_examples=12)
    a, b = load_splits(cfg)["train"], load_splits(cfg)["train"]
    assert len(a) == 12 and a.texts == b.texts
    rows = [a.where.row(i) for i in range(12)]
    assert rows == sorted(rows) and rows == [row_of(a, i) for i in range(12)]
    assert rows != list(range(1, 13))  # sampled, not the head of the file
    big = load_splits(data_cfg(train=str(train), validation=str(val), max_train_examples=500))["train"]
    assert len(big) == 50


def test_max_eval_examples_keeps_the_first_rows(tmp_path: Path) -> None:
    """max_eval_examples keeps the first N of validation and test and leaves train alone."""
    train = write(tmp_path / "train.csv", numbered(10))
    val = write(tmp_path / "val.csv", numbered(6, "v"))
    test = write(tmp_path / "test.csv", numbered(8, "s"))
    splits = load_splits(data_cfg(train=str(train), validation=str(val), test=str(test), max_eval_examples=3))
    assert splits["validation"].texts == ["v1", "v2", "v3"]
    assert splits["test"].texts == ["s1", "s2", "s3"]
    assert len(splits["train"]) == 10


@pytest.mark.parametrize("key", ["max_train_examples", "max_eval_examples"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_limits_are_refused(tmp_path: Path, key: str, value: int) -> None:
    """A limit of zero or less would leave an empty split: refused, naming the key."""
    train = write(tmp_path / "train.csv", numbered(10))
    with pytest.raises(TformerError, match=f"data.{key}"):
        load_splits(data_cfg(train=str(train), **{key: value}))


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is named, with the key to fix."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(TformerError, match="nope.csv") as err:
        load_splits(data_cfg(train=str(missing)))
    assert "data.train" in str(err.value)
    train = write(tmp_path / "train.csv", numbered(5))
    with pytest.raises(TformerError, match="data.validation"):
        load_splits(data_cfg(train=str(train), validation=str(tmp_path / "val.csv")))


def test_no_training_file() -> None:
    """data.source=local without data.train is refused."""
    with pytest.raises(TformerError, match="data.train"):
        load_splits(data_cfg())


def test_empty_file(tmp_path: Path) -> None:
    """A zero-byte file is named."""
    empty = tmp_path / "train.csv"
    empty.write_text("")
    with pytest.raises(TformerError, match="empty") as err:
        load_splits(data_cfg(train=str(empty)))
    assert str(empty) in str(err.value)


@pytest.mark.parametrize(("name", "text", "says"), [
    ("train.csv", "text,label\n", "has a header but no rows"),
    ("train.tsv", "text\tlabel\n\n", "has a header but no rows"),
    ("train.jsonl", "\n  \n", "has no rows: every line is blank"),
])
def test_file_without_rows(tmp_path: Path, name: str, text: str, says: str) -> None:
    """A CSV / TSV with a header and no rows, or a JSON Lines file of blank lines, is named as such."""
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(TformerError) as err:
        load_splits(data_cfg(train=str(f)))
    assert f"the train file {f} {says}" in str(err.value)


def test_unknown_extension(tmp_path: Path) -> None:
    """An extension tformer cannot map to a reader is named, with data.format as the way out."""
    f = write(tmp_path / "train.dat", ROWS)  # (.txt is a plain text corpus: one text per line)
    with pytest.raises(TformerError, match="train.dat") as err:
        load_splits(data_cfg(train=str(f)))
    assert "data.format" in str(err.value)
    with pytest.raises(TformerError, match="data.format='xml'"):
        load_splits(data_cfg(train=str(write(tmp_path / "t.csv", ROWS)), format="xml"))


@pytest.mark.parametrize("key,column", [("text_column", "sentence"), ("label_column", "target"),
                                        ("text_pair_column", "hypothesis")])
def test_missing_column_names_key_and_available_columns(tmp_path: Path, key: str, column: str) -> None:
    """A configured column the file lacks: the message names the key, the file and the columns it has."""
    train = write(tmp_path / "train.jsonl", [{"text": "a", "label": 1, "extra": 0}] * 3)
    with pytest.raises(TformerError) as err:
        load_splits(data_cfg(train=str(train), **{key: column}))
    msg = str(err.value)
    assert f"'{column}'" in msg and f"data.{key}" in msg and str(train) in msg
    assert "text, label, extra" in msg


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_missing_text_cell_names_the_row(tmp_path: Path, suffix: str) -> None:
    """An empty text cell is an error naming its 1-based data row and the file."""
    rows: Rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": None, "label": "x"}]
    if suffix == ".csv":
        rows[2]["text"] = ""
    train = write(tmp_path / f"train{suffix}", rows)
    with pytest.raises(TformerError, match="row 3 ") as err:
        load_splits(data_cfg(train=str(train)))
    assert str(train) in str(err.value) and "'text'" in str(err.value)


def test_missing_pair_cell_names_the_row(tmp_path: Path) -> None:
    """An empty text-pair cell is named like an empty text cell."""
    train = write(tmp_path / "train.csv", [{"a": "x", "b": "y", "label": 0}, {"a": "x", "b": "", "label": 1}])
    with pytest.raises(TformerError, match="row 2 ") as err:
        load_splits(data_cfg(train=str(train), text_column="a", text_pair_column="b"))
    assert "'b'" in str(err.value)


def test_malformed_json_lines(tmp_path: Path) -> None:
    """A line that is not JSON makes the file unreadable: the message names the file."""
    f = tmp_path / "train.jsonl"
    f.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0\n{"text": "c", "label": 1}\n')
    with pytest.raises(TformerError, match="train.jsonl") as err:
        load_splits(data_cfg(train=str(f)))
    assert "json" in str(err.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_out_of_range(tmp_path: Path, fraction: float) -> None:
    """val_fraction outside (0, 1) is refused, naming the key."""
    train = write(tmp_path / "train.csv", numbered(10))
    with pytest.raises(TformerError, match="data.val_fraction"):
        load_splits(data_cfg(train=str(train), val_fraction=fraction))


def test_too_few_rows_to_carve(tmp_path: Path) -> None:
    """A one-row training file cannot give up a validation split."""
    train = write(tmp_path / "train.csv", numbered(1))
    with pytest.raises(TformerError, match="too few"):
        load_splits(data_cfg(train=str(train)))


def test_read_eval_file(tmp_path: Path) -> None:
    """A user's evaluation file is read with the training columns and named as its own source."""
    f = write(tmp_path / "mine.jsonl", numbered(3))
    split = read_eval_file(f, data_cfg(train="unused.csv"))
    assert split.texts == ["t1", "t2", "t3"] and split.where.source == str(f) and split.where.split == "file"
    with pytest.raises(TformerError, match="does not exist"):
        read_eval_file(tmp_path / "other.jsonl", data_cfg(train="unused.csv"))


def test_chunks_read_the_same_rows_as_a_whole_read(tmp_path: Path) -> None:
    """Read a chunk at a time (across the Arrow record batches `datasets` writes), a carved split gives the
    same texts, labels and row numbers as read whole, and the carve is the one a shuffled list gives."""
    import random

    train = write(tmp_path / "train.csv", numbered(2500))
    cfg = data_cfg(train=str(train), val_fraction=0.2, split_seed=3)
    for name, split in open_splits(cfg).items():
        whole = split.read()
        parts = list(split.chunks(size=333))
        assert [len(p) for p in parts[:-1]] == [333] * (len(parts) - 1)
        assert [t for p in parts for t in p.texts] == whole.texts == [f"t{r}" for r in split.positions + 1], name
        assert [v for p in parts for v in p.labels] == whole.labels
        assert [p.where.row(i) for p in parts for i in range(len(p))] == list(split.positions + 1)
    order = list(range(2500))
    random.Random(3).shuffle(order)
    assert list(open_splits(cfg)["validation"].positions) == sorted(order[:500])
