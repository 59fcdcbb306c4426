"""`tformer predict`: a checkpoint's predictions for new texts, as JSON Lines in input order.

Input (`input=`, `-` for stdin): a .txt file, one text per line; or a .csv / .tsv / .jsonl file with the
checkpoint's text column (and pair column), and an optional `id` column. Each output line is
`{"id": ..., <the task's prediction>}`; the id is the input's `id` if it has one, else the line number
the record starts on (a CSV header is line 1).

Nothing is written until every input line has been read and checked and every prediction made: a
malformed line stops the command with an error naming the file and line, and no output. A file output
is written beside its destination and renamed into place at the end; stdout receives the lines only
once all of them are ready (the input is held in memory, so `predict` suits files and finite streams).
Logs go to stderr and the run directory, never to stdout.

The task turns each batch into records (tasks/protocol.py, `Task.predict`): labels and probabilities,
a value, or generated text with its score; nothing here depends on which. `predict_texts` is the one way from
texts to records: this command and the Python API (`transformer_cli.load(...).predict(...)`, api.py) both
call it, so they return the same records.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import json
import logging
import lzma
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from transformer_cli.data.batching import EncodedSplit
from transformer_cli.data.loading import RawSplit
from transformer_cli.device import Precision, resolve_device, resolve_precision
from transformer_cli.errors import TformerError
from transformer_cli.files import dumps, jsonable, write_text_atomic
from transformer_cli.restore import Restored, restore
from transformer_cli.tasks import Task
from transformer_cli.tasks.common import Where

log = logging.getLogger("tformer")

STDIO = "-"
FORMATS = {".txt": "txt", ".text": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "jsonl"}
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
ID_COLUMN = "id"


@dataclass
class Inputs:
    """The texts to predict, in input order, with their ids."""

    ids: list[Any]
    texts: list[str]
    pairs: list[str] | None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Columns:
    """Which input columns the checkpoint reads."""

    text: str
    pair: str | None


# --- the command ----------------------------------------------------------------------------


def predict(cfg: DictConfig) -> int:
    """Predict every input of `cfg.input` with the checkpoint and write JSON Lines; returns the count."""
    check_options(cfg.top_k, cfg.batch_size)
    output = None if cfg.output == STDIO else Path(cfg.output).expanduser()
    _check_output(output, cfg.input)
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    restored = restore(cfg.ckpt)
    inputs = read_inputs(cfg.input, cfg.format, columns_of(restored))
    records = predict_texts(restored, precision, inputs.texts, inputs.pairs, cfg.top_k, cfg.batch_size)
    lines = [_json_line({ID_COLUMN: i, **r}) for i, r in zip(inputs.ids, records)]
    write_lines(lines, output)
    log.info("%d predictions from %s (%s) -> %s", len(lines), restored.path, _name(cfg.input),
             output if output is not None else "stdout")
    return len(lines)


def check_options(top_k: int, batch_size: int | None) -> None:
    """top_k and batch_size are usable (checked before the checkpoint is read)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise TformerError(f"top_k must be 0 or more, got {top_k!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise TformerError(f"batch_size must be positive, got {batch_size!r}")


def columns_of(restored: Restored) -> Columns:
    """The input columns the checkpoint was trained on (the text, and the pair's second text if any)."""
    data = restored.config.data
    return Columns(data.text_column, data.text_pair_column)


def predict_texts(restored: Restored, precision: Precision, texts: Sequence[str], pairs: Sequence[str] | None,
                  top_k: int, batch_size: int | None = None) -> list[dict[str, Any]]:
    """One prediction record per text, in order, as `tformer predict` writes it (without the id).

    `pairs` holds each text's second text when the checkpoint reads sentence pairs (else None); batch_size
    defaults to the eval_batch_size the model was trained with. The records are plain JSON values."""
    check_options(top_k, batch_size)
    for what, values in (("text", texts), ("pair", pairs or ())):
        wrong = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if wrong is not None:
            raise TformerError(f"{what} {wrong} is a {type(values[wrong]).__name__}, not a string",
                               hint="pass a list of strings")
    columns = columns_of(restored)
    if columns.pair and (pairs is None or len(pairs) != len(texts)):
        got = "none" if pairs is None else f"{len(pairs)} for {len(texts)} texts"
        raise TformerError(f"this checkpoint reads sentence pairs ({columns.text}, {columns.pair}): every text "
                           f"needs its second text (got {got})", hint="pass pairs=[...], one per text")
    if not columns.pair and pairs is not None:
        raise TformerError("this checkpoint reads single texts, not pairs", hint="leave pairs out")
    rows = RawSplit(list(texts), list(pairs) if pairs is not None else None, [None] * len(texts),
                    Where(split="input", source="the texts to predict"))
    encoded = restored.task.encode(rows, restored.tokenizer, labelled=False)  # no labels: predictions only
    split = encoded.split()
    records = predict_records(restored.model.to(precision.device), restored.task, split.ids,
                              batch_size or restored.config.trainer.eval_batch_size, precision, top_k, split.targets)
    return [jsonable(r) for r in restored.task.merge_predictions(records, encoded)]  # one per text


def predict_records(model: nn.Module, task: Task, ids: Sequence[np.ndarray], batch_size: int, precision: Precision,
                    top_k: int, targets: Any = None) -> list[dict[str, Any]]:
    """One record per input, in input order; batches grouped by length exactly as `eval` groups them. `targets`:
    what the task's encode gave for these inputs without labels (a question answering window's offsets); none:
    zeros."""
    split = EncodedSplit(ids, torch.zeros(len(ids)) if targets is None else targets)
    records: list[dict[str, Any]] = [{} for _ in range(len(split))]
    model.eval()
    with torch.inference_mode():
        for batch in split.batches(batch_size, shuffle=False, bucket=True):
            batch = batch.to(precision.device)
            with precision.autocast():
                predicted = task.predict(model, batch, top_k)
            for i, record in zip(batch.index.tolist(), predicted):
                records[i] = record
    return records


# --- reading the input ----------------------------------------------------------------------


def read_inputs(source: str, fmt: str, columns: Columns) -> Inputs:
    """Every record of a file or stdin, checked line by line; a bad line is an error naming it."""
    name = _name(source)
    kind = _format(source, fmt)
    if kind == "txt" and columns.pair:
        raise TformerError(
            f"this checkpoint reads sentence pairs ({columns.text}, {columns.pair}); a .txt input holds one text "
            "per line", hint=f"give a .csv or .jsonl with columns '{columns.text}' and '{columns.pair}'")
    with _open(source) as raw:
        lines = _decoded(raw, name)
        if kind == "txt":
            return _read_txt(lines)
        if kind == "jsonl":
            return _read_jsonl(lines, name, columns)
        return _read_csv(lines, name, columns, "\t" if kind == "tsv" else ",")


def _read_txt(lines: Iterable[tuple[int, str]]) -> Inputs:
    """One text per line, id = line number; blank lines are skipped."""
    out = Inputs([], [], None)
    for number, line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            out.ids.append(number)
            out.texts.append(text)
    return out


def _read_jsonl(lines: Iterable[tuple[int, str]], name: str, columns: Columns) -> Inputs:
    """One JSON object per line; blank lines are skipped."""
    out = Inputs([], [], [] if columns.pair else None)
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _bad_line(name, number, f"not valid JSON ({err.msg} at column {err.colno})", columns) from err
        if not isinstance(record, dict):
            raise _bad_line(name, number, f"a JSON {type(record).__name__}, not an object", columns)
        _add(out, record, number, name, columns)
    return out


def _read_csv(lines: Iterable[tuple[int, str]], name: str, columns: Columns, delimiter: str) -> Inputs:
    """A header line, then one record per row (a quoted cell may span lines); the header names the columns."""
    out = Inputs([], [], [] if columns.pair else None)
    rows = csv.reader((line for _, line in lines), delimiter=delimiter)  # line_num counts lines read
    try:
        header = next(rows, None)
        if header is None:
            return out
        _check_header(header, name, columns)
        start = rows.line_num + 1
        for row in rows:
            if row:  # a blank line
                if len(row) != len(header):
                    raise _bad_line(name, start, f"{len(row)} cells, the header has {len(header)}", columns)
                _add(out, dict(zip(header, row)), start, name, columns)
            start = rows.line_num + 1
    except csv.Error as err:
        raise _bad_line(name, rows.line_num, f"not valid CSV ({err})", columns) from err
    return out


def _check_header(header: list[str], name: str, columns: Columns) -> None:
    """The header must hold the checkpoint's text column (and pair column)."""
    for col in (columns.text, columns.pair):
        if col and col not in header:
            raise TformerError(f"{name} line 1: the header has no column '{col}' (it has: {', '.join(header)})",
                               hint=f"the checkpoint reads '{col}'; rename that column in the input")


def _add(out: Inputs, record: dict[str, Any], number: int, name: str, columns: Columns) -> None:
    """Append one record's id and texts, or fail naming its line."""
    out.texts.append(_text(record, columns.text, number, name, columns))
    if out.pairs is not None and columns.pair:
        out.pairs.append(_text(record, columns.pair, number, name, columns))
    out.ids.append(record.get(ID_COLUMN, number))


def _text(record: dict[str, Any], column: str, number: int, name: str, columns: Columns) -> str:
    """One text cell: a string (numbers are written out); missing, null or nested values are errors."""
    value = record.get(column)
    if value is None:
        what = "has no" if column not in record else "has an empty (null)"
        raise _bad_line(name, number, f"{what} '{column}'", columns)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad_line(name, number, f"'{column}' is a {type(value).__name__}, not text", columns)
    return value if isinstance(value, str) else str(value)


def _bad_line(name: str, number: int, problem: str, columns: Columns) -> TformerError:
    """The error for a malformed input line."""
    needs = f"'{columns.text}' and '{columns.pair}'" if columns.pair else f"'{columns.text}'"
    return TformerError(f"{name} line {number}: {problem}; nothing was written",
                        hint=f"fix or remove that line: every record needs {needs} (and may have '{ID_COLUMN}')")


def _decoded(raw: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line, each decoded as UTF-8 (a leading BOM is dropped)."""
    for number, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TformerError(f"{name} line {number}: not UTF-8 (byte 0x{line[err.start]:02x} at column "
                               f"{err.start + 1}); nothing was written",
                               hint="convert the input to UTF-8, e.g. iconv -f latin1 -t utf-8") from err
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def _format(source: str, fmt: str) -> str:
    """txt / csv / tsv / jsonl: the configured format, or the input's extension (stdin: txt)."""
    if fmt != "auto":
        if fmt not in set(FORMATS.values()):
            raise TformerError(f"format='{fmt}' is not supported", hint="use auto, txt, csv, tsv or jsonl")
        return fmt
    if source == STDIO:
        return "txt"
    suffixes = [s.lower() for s in Path(source).suffixes if s.lower() not in OPENERS]
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    raise TformerError(f"cannot tell the format of {source} from its extension",
                       hint="use .txt, .csv, .tsv or .jsonl (optionally .gz/.bz2/.xz), or set format=txt|csv|tsv|jsonl")


def _open(source: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    """The input as bytes: stdin, a file, or a compressed file."""
    if source == STDIO:
        return contextlib.nullcontext(sys.stdin.buffer)  # stdin itself stays open
    path = Path(source).expanduser()
    if not path.is_file():
        raise TformerError(f"input {path} {'is a directory' if path.is_dir() else 'does not exist'}",
                           hint="pass input=<file> or input=- to read stdin")
    opener = OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")


def _name(source: str) -> str:
    """How errors and logs name the input."""
    return "<stdin>" if source == STDIO else source


# --- writing the output ---------------------------------------------------------------------


def _check_output(output: Path | None, source: str) -> None:
    """Refuse an output that would replace the input or cannot be a file, before any work is done."""
    if output is None:
        return
    if source != STDIO and output.resolve() == Path(source).expanduser().resolve():
        raise TformerError(f"output={output} is the input file", hint="write the predictions to another file")
    if output.is_dir():
        raise TformerError(f"output={output} is a directory", hint="name a file, e.g. output=predictions.jsonl")
    folder = next(p for p in (output.absolute().parent, *output.absolute().parents) if p.exists())
    if not os.access(folder, os.W_OK):
        raise TformerError(f"output={output}: cannot write in {folder}", hint="choose a folder you can write to")


def write_lines(lines: list[str], output: Path | None) -> None:
    """Write the lines to stdout, or to a file atomically (a temporary file beside it, then a rename)."""
    if output is None:
        _to_stdout(lines)
        return
    write_text_atomic(output, "".join(lines))


def _to_stdout(lines: list[str]) -> None:
    """Print the lines; a reader that stops early (`| head`) ends the output quietly."""
    try:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again


def _json_line(record: dict[str, Any]) -> str:
    """One strict JSON line (a non-finite number becomes null)."""
    return dumps(record, indent=None) + "\n"
