"""The training data made ready for a model: splits loaded, the task and vocabulary learned, all encoded.

The label set (or target scaling, or target vocabulary) and the input tokenizer are learned on the
training split, or taken from the checkpoint a run resumes. `tformer train` and `tformer plan` both
prepare data here, so a plan counts exactly the examples and tokens the training will see.

Built-in and local data are tokenized once into the cache (data/cache.py), a chunk at a time, and read
back memory-mapped, so memory does not grow with the corpus; `data.cache=false` encodes in memory instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tokenizers import Tokenizer

from transformer_cli.data import cache
from transformer_cli.data.loading import TableSplit, data_files, open_splits
from transformer_cli.data.tokenize import train_tokenizer_on
from transformer_cli.distributed import SINGLE, Dist
from transformer_cli.errors import TformerError
from transformer_cli.files import dumps, read_json
from transformer_cli.losses.base import LossContext
from transformer_cli.pretrained.settings import Start, truncating
from transformer_cli.restore import Restored
from transformer_cli.tasks import TASKS, Task, build_task

log = logging.getLogger("tformer")


@dataclass
class Prepared:
    """Data, task and tokenizer ready for a model."""

    task: Task
    splits: dict[str, EncodedSplit]
    sizes: dict[str, int]
    tokenizer: Tokenizer
    loss_context: LossContext
    cache: str = "off"  # 'reused <folder>', 'written <folder>' or 'off' (encoded in memory)


def prepare_training_data(cfg: DictConfig, resumed: Restored | None = None, dist: Dist = SINGLE,
                          start: Start | None = None) -> Prepared:
    """Load splits, learn the task state and vocabulary on train (or take them from `resumed`; the model a run
    `start`s from brings its own tokenizer), encode.

    With several processes rank 0 fetches the data first (one download into the cache) and learns the label
    set and vocabulary; the other ranks receive them (or find them in the tokenized cache rank 0 wrote), so
    every rank encodes with the same ones."""
    with dist.main_first():
        if cfg.data.cache and cfg.data.source != "hub":
            return _from_cache(cfg, resumed, start, dist)
        tables = open_splits(cfg.data, labels=TASKS[cfg.task.name].reads_labels)
    if resumed is not None:
        task, tokenizer = resumed.task, resumed.tokenizer
    else:
        task, tokenizer = learn_task(cfg, tables["train"], dist, start)
    splits = {name: task.encode(table.read(), tokenizer).split() for name, table in tables.items()}
    return Prepared(task=task, splits=splits, sizes={k: len(v) for k, v in splits.items()}, tokenizer=tokenizer,
                    loss_context=task.loss_context(splits["train"].targets))


def learn_task(cfg: DictConfig, train: TableSplit, dist: Dist = SINGLE,
               start: Start | None = None) -> tuple[Task, Tokenizer]:
    """The task and the input tokenizer, learned from the training split (on rank 0, shared with the rest)."""
    state, tokenizer = _fit_vocabularies(cfg, train, start) if dist.is_main else (None, None)
    if dist.enabled:  # every rank encodes with rank 0's label set and vocabulary
        state, vocab = dist.broadcast((state, tokenizer.to_str() if dist.is_main else None))
        tokenizer = Tokenizer.from_str(vocab)
    return build_task(cfg.task, cfg.loss.name, state), tokenizer


def _fit_vocabularies(cfg: DictConfig, train: TableSplit,
                      start: Start | None) -> tuple[dict[str, Any], Tokenizer]:
    """The task's state (labels, target scaling or vocabulary) learned on train, and the input tokenizer:
    trained on train (or on `data.tokenizer.train_sample` of its rows), or the one of the model the run
    starts from."""
    spec = TASKS[cfg.task.name]
    if start is not None:
        tokenizer = truncating(start.tokenizer, cfg.data.tokenizer.max_length)
    else:
        sample = train.sample(cfg.data.tokenizer.train_sample, cfg.data.split_seed)
        tokenizer = train_tokenizer_on(sample.texts(), cfg.data.tokenizer, spec.specials)
    labels = _all_values(train, train.label_column) if train.label_column else [None] * len(train)
    return spec.fit_state(labels, cfg.task, cfg.data.labels, train.where.source, tokenizer), tokenizer


def _all_values(train: TableSplit, column: str) -> list[Any]:
    """Every value of a column; equal strings share one object (millions of labels, a few distinct)."""
    shared: dict[str, str] = {}
    return [shared.setdefault(v, v) if isinstance(v, str) else v for chunk in train.column(column) for v in chunk]


def _from_cache(cfg: DictConfig, resumed: Restored | None, start: Start | None, dist: Dist = SINGLE) -> Prepared:
    """The splits from the tokenized cache: an entry made by an earlier run (the data files are then only
    hashed, not parsed), or one written now. With several processes only rank 0 writes (it runs first); the
    others read its entry, so every rank has the same vocabulary."""
    root, files = cache.cache_root(cfg.data), cache.file_hashes(data_files(cfg.data))
    given = None if resumed is None else (resumed.task, resumed.tokenizer)
    folder, written = _matching_entry(cfg, root, files, given, start), False
    if folder is None and not dist.is_main:
        raise TformerError(f"rank {dist.rank} does not see the tokenized data rank 0 wrote under {root}",
                           hint="put data.cache_dir on a filesystem every node shares, or set data.cache=false")
    if folder is None:
        source = _source(given, start)
        key = cache.entry_key(cfg, files, source)
        tables = open_splits(cfg.data, labels=TASKS[cfg.task.name].reads_labels)
        with cache.writing(root, key) as tmp:
            _write_entry(cfg, tables, tmp, key, given, start)
        folder, written = root / key, True
    log.info("tokenized data: %s %s", "written to" if written else "reused from", folder)
    return _open_entry(cfg, folder, given, f"{'written' if written else 'reused'} {folder}")


def _source(given: tuple[Task, Tokenizer] | None, start: Start | None) -> str:
    """Where the entry's tokenizer comes from: trained on the data, a pretrained model's, or a checkpoint's."""
    if given is not None:
        return "given:" + cache.text_hash(given[1].to_str(), dumps(given[0].state(), sort_keys=True))
    if start is not None:
        return "start:" + cache.text_hash(start.tokenizer.to_str())
    return "trained"


def _matching_entry(cfg: DictConfig, root: Path, files: dict[str, str], given: tuple[Task, Tokenizer] | None,
                    start: Start | None) -> Path | None:
    """An existing entry for this data and these settings. A resumed run also takes the entry its first run
    wrote (trained or from a pretrained model) when that entry's tokenizer and task state are the ones it has."""
    if given is None:
        return cache.find(root, cache.entry_key(cfg, files, _source(None, start)))
    task, tokenizer = given
    for source in ("trained", "start:" + cache.text_hash(tokenizer.to_str()), _source(given, None)):
        folder = cache.find(root, cache.entry_key(cfg, files, source))
        if folder is not None and (folder / "tokenizer.json").read_text() == tokenizer.to_str() \
                and read_json(folder / "task.json") == read_json_of(task.state()):
            return folder
    return None


def read_json_of(value: Any) -> Any:
    """`value` as it reads back from a JSON file (tuples become lists, keys strings)."""
    return json.loads(dumps(value))


def _write_entry(cfg: DictConfig, tables: dict[str, TableSplit], folder: Path, key: str,
                 given: tuple[Task, Tokenizer] | None, start: Start | None) -> None:
    """Learn (or take) the task and tokenizer, then encode every split a chunk at a time into `folder`."""
    task, tokenizer = given if given is not None else learn_task(cfg, tables["train"], SINGLE, start)
    (folder / "tokenizer.json").write_text(tokenizer.to_str())
    (folder / "task.json").write_text(dumps(task.state(), sort_keys=True))
    dtype = cache.id_dtype(max(tokenizer.get_vocab().values()) + 1)
    records = {}
    for name, table in tables.items():
        writer = cache.SplitWriter(folder, name, dtype)
        for chunk in table.chunks():
            writer.append(task.encode(chunk, tokenizer))
        records[name] = writer.close()
    cache.write_manifest(folder, records, key)


def _open_entry(cfg: DictConfig, folder: Path, given: tuple[Task, Tokenizer] | None, note: str) -> Prepared:
    """A Prepared whose splits are memory-mapped from an entry."""
    manifest = cache.read_manifest(folder)
    if given is not None:
        task, tokenizer = given
    else:
        tokenizer = Tokenizer.from_str((folder / "tokenizer.json").read_text())
        task = build_task(cfg.task, cfg.loss.name, read_json(folder / "task.json"))
    splits = {name: cache.open_split(folder, name, record) for name, record in manifest["splits"].items()}
    return Prepared(task=task, splits=splits, sizes={k: len(v) for k, v in splits.items()}, tokenizer=tokenizer,
                    loss_context=task.loss_context(splits["train"].targets), cache=note)
