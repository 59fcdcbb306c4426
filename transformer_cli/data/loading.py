"""Read train/validation/test splits from built-in data, local files or the hub, via `datasets`."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformer_cli.errors import TformerError
from transformer_cli.tasks.common import Where

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".zip")
HUB_VALIDATION_NAMES = ("validation", "valid", "dev")


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
    _quiet_datasets()
    if cfg.source == "hub":
        tables = _read_hub(cfg)
    else:
        tables = {split: _read_file(Path(path), cfg.format, split) for split, path in data_files(cfg).items()}
    splits = {name: _columns(table, cfg, where, labels) for name, (table, where) in tables.items()}
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve(splits["train"], cfg.val_fraction, cfg.split_seed)
    return _limit(splits, cfg)


def data_files(cfg: Any) -> dict[str, str]:
    """Split name -> file path for built-in or local data."""
    if cfg.source == "builtin":
        from transformer_cli.data.builtin import prepare_builtin

        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
        archive = Path(cfg.archive).expanduser() if cfg.archive else None
        return {k: str(v) for k, v in prepare_builtin(cfg.name, cache, archive).items()}
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


def _read_file(path: Path, fmt: str, split: str) -> tuple[Any, Where]:
    """One local file as a `datasets.Dataset`."""
    import datasets

    if not path.is_file():
        raise TformerError(f"the {split} file {path} does not exist", hint=f"check data.{split}")
    if path.stat().st_size == 0:
        raise TformerError(f"the {split} file {path} is empty")
    builder = file_format(path, fmt)
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
    return table, Where(split=split, source=str(path))


def _nonblank_lines(table: Any, path: Path, split: str) -> tuple[Any, Where]:
    """A plain text file's lines that hold text, each with its line number; none at all is an error."""
    keep = [i for i, line in enumerate(table["text"]) if line.strip()]
    if not keep:
        raise TformerError(f"the {split} file {path} has no text: every line is blank",
                           hint="a plain text file holds one text per line")
    return table.select(keep), Where(split=split, source=str(path), rows=[i + 1 for i in keep])


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


def _read_hub(cfg: Any) -> dict[str, tuple[Any, Where]]:
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
            out[name] = (found[split], Where(split=name, source=f"hub:{cfg.name}"))
    if "train" not in out:
        raise TformerError(f"hub dataset '{cfg.name}' has no train split (it has: {', '.join(found)})")
    return out


def _columns(table: Any, cfg: Any, where: Where, labels: bool = True) -> RawSplit:
    """Pull the text, pair and label columns out of a table, checking they exist and are filled."""
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
    texts = _texts(table[cfg.text_column], where, cfg.text_column)
    pairs = _texts(table[cfg.text_pair_column], where, cfg.text_pair_column) if cfg.text_pair_column else None
    values = list(table[cfg.label_column]) if labels else [None] * len(texts)
    return RawSplit(texts=texts, pairs=pairs, labels=values, where=where)


def _texts(values: list[Any], where: Where, column: str) -> list[str]:
    """A text column as strings; a missing cell is an error naming its row."""
    for i, v in enumerate(values):
        if v is None:
            raise TformerError(f"column '{column}' is empty at {where.at(i)}", hint="fill or drop that row")
    return [v if isinstance(v, str) else str(v) for v in values]


def carve(train: RawSplit, fraction: float, seed: int) -> tuple[RawSplit, RawSplit]:
    """Split a seeded random `fraction` of train off as validation."""
    if not 0.0 < fraction < 1.0:
        raise TformerError(f"data.val_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(order) * fraction))
    if k >= len(order):
        raise TformerError(f"the train split has {len(order)} rows: too few to carve a validation split")
    val, rest = sorted(order[:k]), sorted(order[k:])
    new_val = train.subset(val)
    new_val.where = replace(new_val.where, split="validation (carved from train)")
    return train.subset(rest), new_val


def _limit(splits: dict[str, RawSplit], cfg: Any) -> dict[str, RawSplit]:
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
    table, where = _read_file(path.expanduser(), cfg.format, "file")
    return _columns(table, cfg, where, labels)
