"""Read train/validation/test splits from built-in data, local files or the hub, via `datasets`.

A split is first opened as a `TableSplit`: the memory-mapped Arrow table `datasets` keeps, and which of its
rows the split holds. Carving, limits and sampling pick rows by position; texts and labels become Python
objects only when read, all at once (`read`) or a chunk at a time (`chunks`, for corpora larger than memory).
"""

from __future__ import annotations

import array
import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from transformer_cli.errors import TformerError
from transformer_cli.tasks.common import Where

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".zip")
HUB_VALIDATION_NAMES = ("validation", "valid", "dev")
CHUNK_ROWS = 10_000  # rows turned into Python objects at a time


@dataclass
class RawSplit:
    """One split as plain columns, with where each row came from."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    where: Where

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, keep: list[int]) -> "RawSplit":
        """The rows at the given positions, in that order."""
        rows = [self.where.row(i) for i in keep]
        return RawSplit(
            texts=[self.texts[i] for i in keep],
            pairs=None if self.pairs is None else [self.pairs[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            where=replace(self.where, rows=rows),
        )


def load_splits(cfg: Any, labels: bool = True) -> dict[str, RawSplit]:
    """Every available split of the configured data, with validation carved from train if absent
    (`labels=False`: the texts only, for a task that learns from text alone)."""
    return {name: split.read() for name, split in open_splits(cfg, labels).items()}


def open_splits(cfg: Any, labels: bool = True) -> dict[str, "TableSplit"]:
    """Like load_splits, but each split left in its Arrow table: rows chosen, nothing read into memory yet."""
    _quiet_datasets()
    if cfg.source == "hub":
        tables = _read_hub(cfg)
    else:
        tables = {split: _read_file(Path(path), cfg.format, split) for split, path in data_files(cfg).items()}
    splits = {name: _open_columns(table, cfg, where, labels, rows) for name, (table, where, rows) in tables.items()}
    del tables  # a table kept in Arrow files is read from them; its memory mapping can go
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve(splits["train"], cfg.val_fraction, cfg.split_seed)
    return _limit(splits, cfg)


@dataclass
class TableSplit:
    """Some rows of an Arrow table (by position), with the columns that hold text, pair and label."""

    table: Any  # a datasets.Dataset held in memory, or None when `files` hold it
    files: list[str]  # the Arrow files `datasets` wrote the table to (read a chunk at a time)
    where: Where  # rows named by table position
    positions: np.ndarray  # (N,) int64 table positions of this split's rows, in order
    text_column: str
    pair_column: str | None
    label_column: str | None  # None: no labels are read

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, keep: list[int] | np.ndarray) -> "TableSplit":
        """The rows at the given positions of this split, in that order."""
        return replace(self, positions=self.positions[np.asarray(keep, dtype=np.int64)])

    def sample(self, rows: int | None, seed: int) -> "TableSplit":
        """A seeded random sample of `rows` rows, in split order (all of them when rows is None or more)."""
        if rows is None or rows >= len(self):
            return self
        if rows <= 0:
            raise TformerError(f"data.tokenizer.train_sample must be a positive number of rows, got {rows}",
                               hint="use data.tokenizer.train_sample=null to learn the vocabulary from every row")
        rng = np.random.Generator(np.random.PCG64(seed))
        return self.subset(np.sort(rng.choice(len(self), size=rows, replace=False)))

    def texts(self, size: int = CHUNK_ROWS) -> Iterator[list[str]]:
        """Every text, then every pair text, `size` at a time (what a tokenizer learns from)."""
        for column in filter(None, (self.text_column, self.pair_column)):
            for values in self.column(column, size):
                yield _texts(values)

    def renamed(self, split: str) -> "TableSplit":
        """The same rows under another split name (for error messages)."""
        return replace(self, where=replace(self.where, split=split))

    def read(self) -> RawSplit:
        """Every row as Python strings and values."""
        return next(self.chunks(max(1, len(self))))

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[RawSplit]:
        """The rows, `size` at a time, each chunk with its own row numbers."""
        for positions, rows in self._batches(size):
            where = replace(self.where, rows=[self.where.row(int(p)) for p in positions])
            texts = _texts(rows.column(self.text_column).to_pylist())
            pairs = _texts(rows.column(self.pair_column).to_pylist()) if self.pair_column else None
            labels = rows.column(self.label_column).to_pylist() if self.label_column else [None] * len(texts)
            yield RawSplit(texts=texts, pairs=pairs, labels=labels, where=where)

    def column(self, name: str, size: int = CHUNK_ROWS) -> Iterator[list[Any]]:
        """One column's values, `size` rows at a time."""
        for _, rows in self._batches(size):
            yield rows.column(name).to_pylist()

    def _batches(self, size: int) -> Iterator[tuple[np.ndarray, Any]]:
        """(positions, rows as a pyarrow Table), `size` rows at a time. The Arrow files `datasets` keeps are
        read front to back with plain reads, not memory-mapped, so what was read does not stay resident."""
        import pyarrow as pa

        ascending = bool(np.all(self.positions[1:] > self.positions[:-1]))
        if self.files and ascending:
            yield from _stream_rows(self.files, self.positions, size)
            return
        table = self._arrow()
        for start in range(0, len(self), size):
            positions = self.positions[start : start + size]
            yield positions, table.take(pa.array(positions))

    def _arrow(self) -> Any:
        """The whole table as pyarrow: held in memory, or memory-mapped from its Arrow files."""
        import pyarrow as pa

        if self.table is not None:
            return self.table.with_format("arrow")[:]
        return pa.concat_tables([pa.ipc.open_stream(pa.memory_map(f)).read_all() for f in self.files])


def _stream_rows(files: list[str], positions: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, Any]]:
    """The rows at ascending `positions` of the table stored in `files`, `size` at a time, reading one
    record batch at a time and stopping after the last position."""
    import pyarrow as pa

    pieces, taken, offset, done = [], 0, 0, 0
    for batch in _record_batches(files):
        if len(positions) == 0 or offset > positions[-1]:
            break
        lo, hi = np.searchsorted(positions, [offset, offset + batch.num_rows])
        if hi > lo:
            pieces.append(batch.take(pa.array(positions[lo:hi] - offset)))
            taken += hi - lo
        offset += batch.num_rows
        while taken - done >= size:  # a full chunk is buffered
            buffered = pa.Table.from_batches(pieces)
            pieces = buffered.slice(size).to_batches()
            yield positions[done : done + size], buffered.slice(0, size)
            done += size
    if taken > done:
        yield positions[done:], pa.Table.from_batches(pieces)


def _record_batches(files: list[str]) -> Iterator[Any]:
    """The record batches of Arrow stream files, in order, read (not mapped) one at a time."""
    import pyarrow as pa

    for path in files:
        with pa.OSFile(path) as fh:
            yield from pa.ipc.open_stream(fh)


def data_files(cfg: Any) -> dict[str, str]:
    """Split name -> file path for built-in or local data."""
    if cfg.source == "builtin":
        from transformer_cli.data.builtin import prepare_builtin

        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
        archive = Path(cfg.archive).expanduser() if cfg.archive else None
        paths = prepare_builtin(cfg.name, cache, archive, bool(cfg.allow_new_archive))
        return {k: str(v) for k, v in paths.items()}
    files = {split: getattr(cfg, split) for split in SPLITS if getattr(cfg, split)}
    if "train" not in files:
        raise TformerError(
            "data.source=local needs a training file",
            hint="pass data.train=path/to/train.csv (and optionally data.validation=..., data.test=...)",
        )
    return files


def file_format(path: Path, fmt: str) -> str:
    """The `datasets` builder for a file: the configured one, or guessed from its extension."""
    if fmt != "auto":
        if fmt not in set(FORMATS.values()):
            raise TformerError(f"data.format='{fmt}' is not supported", hint="use auto, csv, json, parquet or text")
        return fmt
    if _extension(path) in FORMATS:
        return FORMATS[_extension(path)]
    raise TformerError(
        f"cannot tell the format of {path} from its extension",
        hint="use .csv, .tsv, .json, .jsonl, .parquet or .txt, or set data.format=csv|json|parquet|text",
    )


def _extension(path: Path) -> str:
    """The lower-cased extension that names a file's format, past any compression suffix ('' if none)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSIONS]
    return suffixes[-1] if suffixes else ""


def require_file(path: Path, split: str) -> None:
    """Fail naming the data key when a split's file is missing."""
    if not path.is_file():
        raise TformerError(f"the {split} file {path} does not exist", hint=f"check data.{split}")


def _read_file(path: Path, fmt: str, split: str) -> tuple[Any, Where, np.ndarray | None]:
    """One local file as a `datasets.Dataset`, and the positions of its rows that hold data (None: all)."""
    import datasets

    require_file(path, split)
    if path.stat().st_size == 0:
        raise TformerError(f"the {split} file {path} is empty")
    builder = file_format(path, fmt)
    squad = _squad_document(path) if builder == "json" and _extension(path) == ".json" else None
    if squad is not None:  # SQuAD's nested layout: one row per question
        return squad, Where(split=split, source=str(path)), None
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        # Only empty cells are missing: a text that reads "NA" or "null" stays text.
        kwargs = {"keep_default_na": False, "na_values": [""]}
        if _extension(path) == ".tsv":
            kwargs["delimiter"] = "\t"
    try:
        table = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs)
    except Exception as err:  # datasets wraps parser errors in many types; all mean "bad file"
        empty = _no_rows(path, builder)
        if empty:
            raise TformerError(f"the {split} file {path} {empty}", hint=f"check data.{split}") from err
        where = _first_bad_line(path, builder)
        raise TformerError(f"could not read {path} as {builder}{where}: {_root_cause(err)}",
                           hint="check that the file is well-formed and in the format its extension says") from err
    if builder == "text":  # one text per line; blank lines are skipped, rows keep their line numbers
        return _nonblank_lines(table, path, split)
    return table, Where(split=split, source=str(path)), None


def _squad_document(path: Path) -> Any:
    """A SQuAD-format JSON file ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}) as a table of
    id, title, question, context and answers (JSON); None when the file is not one JSON object (JSON Lines). A
    single JSON object of another layout is an error naming what it lacks."""
    import datasets

    from transformer_cli.data.builtin.squad import flatten

    try:
        with path.open(encoding="utf-8") as f:
            document = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # JSON Lines, or a broken file: the json reader names the bad line
    if not isinstance(document, dict):
        return None
    layout = 'a SQuAD-format JSON file is {"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ' \
             '..., "question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}'
    try:
        rows = flatten(document)
    except (KeyError, TypeError) as err:
        raise TformerError(f"{path} is one JSON object but not in SQuAD's layout (missing {err}); its keys: "
                           f"{', '.join(map(str, document))[:200]}",
                           hint=f"{layout}; or give JSON Lines, one object per line with the data's columns "
                                "(question, context, answers)") from err
    if not rows:
        raise TformerError(f"{path} holds no questions", hint=layout)
    return datasets.Dataset.from_list(rows)


def _nonblank_lines(table: Any, path: Path, split: str) -> tuple[Any, Where, np.ndarray]:
    """A plain text file's lines, and the positions of those that hold text (line number - 1); none at all is
    an error."""
    keep = np.concatenate([np.flatnonzero([bool(line.strip()) for line in batch["text"]]) + start
                           for start, batch in zip(range(0, len(table), CHUNK_ROWS), table.iter(CHUNK_ROWS))])
    if not len(keep):
        raise TformerError(f"the {split} file {path} has no text: every line is blank",
                           hint="a plain text file holds one text per line")
    return table, Where(split=split, source=str(path)), keep


def _no_rows(path: Path, builder: str) -> str:
    """'has a header but no rows' (CSV / TSV) or 'has no rows: ...' (JSON Lines) for a file without data."""
    if builder not in ("csv", "json") or path.suffix.lower() in COMPRESSIONS:
        return ""
    with path.open("rb") as fh:
        lines = [raw for _, raw in zip(range(2), (raw for raw in fh if raw.strip()))]
    if builder == "csv" and len(lines) == 1:
        return "has a header but no rows"
    if not lines:
        return "has no rows: every line is blank"
    return ""


def _first_bad_line(path: Path, builder: str) -> str:
    """' (line N: reason)' for the first undecodable or, in JSON Lines, unparsable line; '' if none found."""
    if builder == "parquet" or path.suffix.lower() in COMPRESSIONS:
        return ""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f" (line {number}: not UTF-8, byte {raw[err.start:err.start + 1]!r} at column {err.start + 1})"
            if builder == "json" and line.strip() and _extension(path) == ".jsonl":
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    return f" (line {number}: invalid JSON: {err.msg} at column {err.colno})"
    return ""


def _read_hub(cfg: Any) -> dict[str, tuple[Any, Where, None]]:
    """Every split of a hub dataset (needs network access, or a warm HF cache)."""
    import datasets

    if not cfg.name:
        raise TformerError("data.source=hub needs data.name (a hub dataset id such as 'imdb')")
    try:
        found = datasets.load_dataset(cfg.name, cfg.hub_config)
    except Exception as err:
        raise TformerError(
            f"could not load hub dataset '{cfg.name}': {_root_cause(err)}",
            hint="check the name and your network (HF_DATASETS_OFFLINE=1 needs a cached copy), "
            "or download the files and use data=local",
        ) from err
    out = {}
    for split in found:
        name = "validation" if split in HUB_VALIDATION_NAMES else split
        if name in SPLITS and name not in out:
            out[name] = (found[split], Where(split=name, source=f"hub:{cfg.name}"), None)
    if "train" not in out:
        raise TformerError(f"hub dataset '{cfg.name}' has no train split (it has: {', '.join(found)})")
    return out


def _open_columns(table: Any, cfg: Any, where: Where, labels: bool = True,
                  positions: np.ndarray | None = None) -> TableSplit:
    """The text, pair and label columns of a table (the rows at `positions`, default all), checked to exist
    and (texts) to be filled."""
    columns = list(table.column_names)
    wanted = {"data.text_column": cfg.text_column}
    if labels:
        wanted["data.label_column"] = cfg.label_column
    if cfg.text_pair_column:
        wanted["data.text_pair_column"] = cfg.text_pair_column
    for key, col in wanted.items():
        if col not in columns:
            raise TformerError(
                f"column '{col}' ({key}) is not in the {where.split} split ({where.source}); "
                f"its columns are: {', '.join(columns)}",
                hint=f"set {key}=<one of those columns>",
            )
    if len(table) == 0:
        raise TformerError(f"the {where.split} split ({where.source}) has no rows")
    for column in filter(None, (cfg.text_column, cfg.text_pair_column)):
        _check_filled(table, column, where)
    positions = np.arange(len(table), dtype=np.int64) if positions is None else positions.astype(np.int64)
    files = [f["filename"] for f in table.cache_files]
    return TableSplit(table=None if files else table, files=files, where=where, positions=positions,
                      text_column=cfg.text_column, pair_column=cfg.text_pair_column,
                      label_column=cfg.label_column if labels else None)


def _check_filled(table: Any, column: str, where: Where) -> None:
    """A missing text cell is an error naming its row (found by Arrow, without reading the texts)."""
    import pyarrow.compute as pc

    values = table.with_format("arrow")[column]
    if values.null_count:
        first = int(pc.index(pc.is_null(values), True).as_py())
        raise TformerError(f"column '{column}' is empty at {where.at(first)}", hint="fill or drop that row")


def _texts(values: list[Any]) -> list[str]:
    """A text column as strings (numbers read from a file become their text)."""
    return [v if isinstance(v, str) else str(v) for v in values]


def carve(train: TableSplit, fraction: float, seed: int) -> tuple[TableSplit, TableSplit]:
    """Split a seeded random `fraction` of train off as validation."""
    if not 0.0 < fraction < 1.0:
        raise TformerError(f"data.val_fraction must be in (0, 1), got {fraction}")
    order = array.array("q", range(len(train)))  # 8 bytes a row, shuffled as a list would be
    random.Random(seed).shuffle(order)
    k = max(1, round(len(order) * fraction))
    if k >= len(order):
        raise TformerError(f"the train split has {len(order)} rows: too few to carve a validation split")
    shuffled = np.frombuffer(order, dtype=np.int64)
    val, rest = np.sort(shuffled[:k]), np.sort(shuffled[k:])
    return train.subset(rest), train.subset(val).renamed("validation (carved from train)")


def _limit(splits: dict[str, TableSplit], cfg: Any) -> dict[str, TableSplit]:
    """Apply max_train_examples (seeded sample) and max_eval_examples (first N)."""
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:  # would leave an empty split, or make random.sample raise
            raise TformerError(f"data.{key} must be a positive number of rows, got {value}",
                               hint=f"use data.{key}=null for no limit")
    n = cfg.max_train_examples
    if n is not None and n < len(splits["train"]):
        keep = sorted(random.Random(cfg.split_seed + 1).sample(range(len(splits["train"])), n))
        splits["train"] = splits["train"].subset(keep)
    m = cfg.max_eval_examples
    for name in ("validation", "test"):
        if m is not None and name in splits and m < len(splits[name]):
            splits[name] = splits[name].subset(list(range(m)))
    return splits


def _root_cause(err: BaseException) -> str:
    """The innermost exception message, which is usually the informative one."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _quiet_datasets() -> None:
    """Silence `datasets` progress bars and info logs; tformer reports what matters."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)  # its parse errors become our message, naming the line


def read_eval_file(path: Path, cfg: Any, labels: bool = True) -> RawSplit:
    """A user's file with the same columns as the training data, for `tformer eval file=...`."""
    _quiet_datasets()
    table, where, rows = _read_file(path.expanduser(), cfg.format, "file")
    return _open_columns(table, cfg, where, labels, rows).read()
