"""Metric writers a run sends its records to: JSON Lines and CSV always, TensorBoard or MLflow when configured.

Every writer takes the loop's flat records (`{"event": "train", "split": "train", "step": 50, "loss": ...}`)
through one interface: `write(record)`, `finish(files, checkpoint)` once the run has completed and written
its results, `close()`, and use as a context manager. `open_writers` builds the set a run's `logger` config
asks for and hands back one writer that feeds them all. The MLflow writer lives in tracking.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Callable, Protocol, Sequence

from omegaconf import DictConfig, OmegaConf

from transformer_cli.errors import TformerError, choose
from transformer_cli.files import jsonable

# Keys that place or count a record rather than measure something: not plotted as TensorBoard scalars.
NOT_SCALARS = ("event", "split", "step", "time", "epoch", "count")


class Writer(Protocol):
    """What the training loop needs from a metrics writer."""

    def write(self, record: dict[str, Any]) -> None: ...

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """The run completed: its result files (run card, summary, ...) and best checkpoint are written."""
        ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends one JSON object per line and flushes each, so a killed run keeps every line written.

    Values are made strictly valid JSON: torch / numpy scalars and arrays become Python numbers and
    lists, and non-finite floats (NaN, +-inf) are written as ``null`` (read back as ``None``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append record as one line and flush it to the OS."""
        if self._file is None:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        line = json.dumps(jsonable(record), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()  # the OS keeps the line if the process dies; no fsync per step

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """Nothing to add: the records are the file."""

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a half-written last line (run killed mid-write) is dropped."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")  # the piece after the final "\n" is "" for a cleanly ended file
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # no trailing newline: the write was cut short
                break
            raise TformerError(f"{path}:{number} is not valid JSON: {err.msg}") from err
    return records


class NullWriter:
    """The writer of processes that do not write (ranks other than 0): records are dropped."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop the record."""

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CsvWriter:
    """metrics.csv: one row per record, one column per key seen so far (event, split, step, epoch first).

    A record with a key not seen before widens the table: the file is rewritten whole with the new header
    (a few times at the start of a run, as the first train, eval and final records arrive); otherwise the
    row is appended and flushed, so a killed run keeps every row written. `history` (the records already
    in metrics.jsonl when a run resumes) starts the table, so the two files always agree."""

    LEAD = ("event", "split", "step", "epoch")

    def __init__(self, path: Path, history: Sequence[dict[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = [{k: _cell(v) for k, v in r.items()} for r in history]
        self.columns = _ordered(list(dict.fromkeys(k for r in self.rows for k in r)), self.LEAD)
        self._file: IO[str] | None = None
        self._rewrite()

    def write(self, record: dict[str, Any]) -> None:
        """Append one row, widening the header first if the record brings new keys."""
        if self._file is None:
            raise ValueError(f"CsvWriter for {self.path} is closed")
        row = {k: _cell(v) for k, v in record.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns = _ordered(self.columns + new, self.LEAD)
            self._rewrite()
        else:
            self._dict_writer(self._file).writerow(row)
            self._file.flush()

    def _rewrite(self) -> None:
        """Write the header and every row so far to a temporary file, then swap it in."""
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            if self.columns:
                writer = self._dict_writer(f)
                writer.writeheader()
                writer.writerows(self.rows)
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8", newline="")

    def _dict_writer(self, f: IO[str]) -> csv.DictWriter:
        """A writer of rows with the current columns; a key a row lacks is an empty cell."""
        return csv.DictWriter(f, self.columns, lineterminator="\n")

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """Nothing to add: the rows are the file."""

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CsvWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _cell(value: Any) -> Any:
    """A CSV cell: numbers and strings as they are, non-finite floats empty, anything else as JSON."""
    value = jsonable(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _ordered(columns: list[str], lead: tuple[str, ...]) -> list[str]:
    """The lead columns first (those present), then the others in order of first appearance."""
    return [c for c in lead if c in columns] + [c for c in columns if c not in lead]


class TensorBoardWriter:
    """TensorBoard event files: each numeric value of a record becomes a scalar at the record's step.

    Tags: `train/<key>` for training records, `<split>/<key>` for evaluations (e.g. `validation/accuracy`),
    `final/<split>/<key>` for the best checkpoint's final metrics."""

    def __init__(self, log_dir: Path, config: DictConfig | None = None, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TformerError("logger=tensorboard needs the tensorboard package",
                               hint="pip install 'tformer[logging]' (or pip install tensorboard), "
                               "or use logger=files") from err
        self.log_dir = Path(log_dir)
        # purge_step hides what a killed run logged past the step it resumes from.
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if config is not None and purge_step is None:
            # Four leading spaces make TensorBoard's markdown show the YAML as a code block.
            text = OmegaConf.to_yaml(config, resolve=True)
            self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))

    def write(self, record: dict[str, Any]) -> None:
        """Add every finite numeric value of the record as a scalar."""
        if self._writer is None:
            raise ValueError(f"TensorBoardWriter for {self.log_dir} is closed")
        step = int(record.get("step") or 0)
        for tag, value in scalars(record):
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()  # a few records per epoch: cheap, and the curves show up while training

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """Nothing to add: event files hold scalars only."""

    def close(self) -> None:
        """Flush and close the event file; closing twice is harmless."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The finite numeric values of a record, each with its name as TensorBoard and MLflow show it:
    `train/<key>`, `<split>/<key>` for evaluations (`validation/accuracy`), `final/<split>/<key>` for the best
    checkpoint's final metrics; the key is the record's (metrics.jsonl's) own."""
    out = []
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key == "lr" and record.get("event") != "train":
            continue  # evaluations repeat the rate of the step they follow
        if math.isfinite(value):
            out.append((_tag(record, key), float(value)))
    return out


def _tag(record: dict[str, Any], key: str) -> str:
    """The TensorBoard tag (MLflow metric name) of one value of a record."""
    event, split = record.get("event", ""), record.get("split", "")
    if event == "final":
        return f"final/{split}/{key}"
    return f"{split or event}/{key}"


class MultiWriter:
    """Sends each record to several writers; closes all of them, even if one fails to close."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers

    def write(self, record: dict[str, Any]) -> None:
        """Write the record to every writer."""
        for w in self.writers:
            w.write(record)

    def finish(self, files: Sequence[Path], checkpoint: Path | None) -> None:
        """Tell every writer the run completed."""
        for w in self.writers:
            w.finish(files, checkpoint)

    def close(self) -> None:
        """Close every writer; the first error is raised after all were tried."""
        errors = []
        for w in self.writers:
            try:
                w.close()
            except Exception as err:  # noqa: BLE001 - closing the others matters more
                errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> MultiWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _mlflow(logger: Any, run_dir: Path, config: DictConfig | None, history: list[dict[str, Any]]) -> Writer:
    """The MLflow writer (tracking.py; mlflow itself is imported only now)."""
    from transformer_cli.tracking import MlflowWriter

    return MlflowWriter(logger, run_dir, config, history, scalars)


# Optional backends by name: (logger config, run directory, run config, records already logged) -> writer.
BACKENDS: dict[str, Callable[[Any, Path, DictConfig | None, list[dict[str, Any]]], Writer]] = {
    "tensorboard": lambda logger, run_dir, config, history: TensorBoardWriter(
        run_dir / logger.tensorboard_dir, config, purge_step=_next_step(history)),
    "mlflow": _mlflow,
}


def open_writers(logger: Any, run_dir: Path, config: DictConfig | None = None) -> MultiWriter:
    """metrics.jsonl and metrics.csv in `run_dir`, plus each backend in `logger.backends`.

    A resumed run finds metrics.jsonl already holding the records up to its checkpoint: the JSONL file is
    continued, the CSV is rebuilt from it, and TensorBoard hides anything logged past that step."""
    names = list(logger.backends) if logger is not None else []
    for name in names:
        choose(BACKENDS, name, "logger backend")
    jsonl = run_dir / "metrics.jsonl"
    history = read_jsonl(jsonl) if jsonl.is_file() else []
    writers: list[Writer] = []
    try:
        writers.append(JsonlWriter(jsonl))
        writers.append(CsvWriter(run_dir / "metrics.csv", history))
        for name in dict.fromkeys(names):  # once each, in the order given
            writers.append(BACKENDS[name](logger, run_dir, config, history))
    except BaseException:
        MultiWriter(writers).close()
        raise
    return MultiWriter(writers)


def _next_step(history: list[dict[str, Any]]) -> int | None:
    """The first step after the records already logged, or None for a fresh run."""
    steps = [int(r["step"]) for r in history if isinstance(r.get("step"), int)]
    return max(steps) + 1 if steps else None
