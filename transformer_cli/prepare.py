"""The training data made ready for a model: splits loaded, the task and vocabulary learned, all encoded.

The label set (or target scaling, or target vocabulary) and the input tokenizer are learned on the
training split, or taken from the checkpoint a run resumes. `tformer train` and `tformer plan` both
prepare data here, so a plan counts exactly the examples and tokens the training will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from tokenizers import Tokenizer

from transformer_cli.data.batching import EncodedSplit
from transformer_cli.data.loading import RawSplit, load_splits
from transformer_cli.data.tokenize import encode, train_tokenizer
from transformer_cli.distributed import SINGLE, Dist
from transformer_cli.losses.base import LossContext
from transformer_cli.pretrained.settings import Start, truncating
from transformer_cli.restore import Restored
from transformer_cli.tasks import TASKS, Task, build_task


@dataclass
class Prepared:
    """Data, task and tokenizer ready for a model."""

    task: Task
    splits: dict[str, EncodedSplit]
    sizes: dict[str, int]
    tokenizer: Tokenizer
    loss_context: LossContext


def prepare_training_data(cfg: DictConfig, resumed: Restored | None = None, dist: Dist = SINGLE,
                          start: Start | None = None) -> Prepared:
    """Load splits, learn the task state and vocabulary on train (or take them from `resumed`; the model a run
    `start`s from brings its own tokenizer), encode.

    With several processes rank 0 fetches the data first (one download into the cache) and learns the label
    set and vocabulary; the other ranks receive them, so every rank encodes with the same ones."""
    with dist.main_first():
        raw = load_splits(cfg.data, labels=TASKS[cfg.task.name].reads_labels)
    if resumed is not None:
        task, tokenizer = resumed.task, resumed.tokenizer
    else:
        task, tokenizer = learn_task(cfg, raw["train"], dist, start)
    targets = {name: task.encode_targets(split.labels, split.where) for name, split in raw.items()}
    splits = {name: EncodedSplit(encode(tokenizer, s.texts, s.pairs), targets[name]) for name, s in raw.items()}
    return Prepared(task=task, splits=splits, sizes={k: len(v) for k, v in raw.items()}, tokenizer=tokenizer,
                    loss_context=task.loss_context(targets["train"]))


def learn_task(cfg: DictConfig, train: RawSplit, dist: Dist = SINGLE,
               start: Start | None = None) -> tuple[Task, Tokenizer]:
    """The task and the input tokenizer, learned from the training split (on rank 0, shared with the rest)."""
    state, tokenizer = _fit_vocabularies(cfg, train, start) if dist.is_main else (None, None)
    if dist.enabled:  # every rank encodes with rank 0's label set and vocabulary
        state, vocab = dist.broadcast((state, tokenizer.to_str() if dist.is_main else None))
        tokenizer = Tokenizer.from_str(vocab)
    return build_task(cfg.task, cfg.loss.name, state), tokenizer


def _fit_vocabularies(cfg: DictConfig, train: RawSplit,
                      start: Start | None) -> tuple[dict[str, Any], Tokenizer]:
    """The task's state (labels, target scaling or vocabulary) learned on train, and the input tokenizer:
    trained on train, or the one of the model the run starts from."""
    spec = TASKS[cfg.task.name]
    if start is not None:
        tokenizer = truncating(start.tokenizer, cfg.data.tokenizer.max_length)
    else:
        tokenizer = train_tokenizer(train.texts + (train.pairs or []), cfg.data.tokenizer, spec.specials)
    return spec.fit_state(train.labels, cfg.task, cfg.data.labels, train.where.source, tokenizer), tokenizer
