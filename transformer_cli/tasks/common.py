"""Pieces the task files share: error locations, label sets, and the encoder-plus-head model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.data.tokenize import encode_flat
from transformer_cli.errors import TformerError
from transformer_cli.heads import SequenceHead
from transformer_cli.model import Encoder, SequenceModel


@dataclass(frozen=True)
class Where:
    """Where a column of values came from, so errors can name the file and row."""

    split: str
    source: str  # file path or hub dataset id
    rows: Sequence[int] | None = None  # 1-based data row of each value (header not counted)

    def row(self, i: int) -> int:
        """The 1-based row number of value i."""
        return int(self.rows[i]) if self.rows is not None else i + 1

    def at(self, i: int) -> str:
        """A human description of value i's location."""
        return f"row {self.row(i)} of the {self.split} split ({self.source})"


class Rows(Protocol):
    """Data rows as a task encodes them (data/loading.py's RawSplit): texts, pair texts, labels, where from."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    where: Where


def encode_rows(rows: Rows, tokenizer: Tokenizer, labelled: bool,
                encode_targets: Callable[[Sequence[Any], Where], Any]) -> Encoded:
    """One input per row (the text, or the text pair, framed and truncated by the tokenizer) and its target:
    `encode_targets` of the labels, or zeros for texts to predict; no side records."""
    flat, lengths = encode_flat(tokenizer, rows.texts, rows.pairs)
    targets = encode_targets(rows.labels, rows.where) if labelled else torch.zeros(len(rows.texts))
    return Encoded(flat, lengths, targets)


def one_per_row(records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
    """Prediction records of tasks that encode each row as one input: already one per row."""
    return records


def is_missing(value: Any) -> bool:
    """An empty cell: None, or a float NaN as Parquet and JSON readers produce."""
    return value is None or (isinstance(value, float) and value != value)


def label_key(value: Any) -> str:
    """A label as the string we store: 1, 1.0 and '1' are the same class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    return str(value).strip()


def sorted_labels(keys: set[str]) -> list[str]:
    """Label names in class-index order: numeric order when all are integers, else alphabetical."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def odd_labels(values: Sequence[Any]) -> dict[str, str]:
    """Training labels that look like mistakes, with why: a class of a single example, or an integer outside the
    contiguous range that holds most examples (a stray -3 in a 0/1 column)."""
    counts = Counter(label_key(v) for v in values if not is_missing(v))
    odd = {name: f"{n} example of {sum(counts.values())}" for name, n in counts.items() if n < 2}
    try:
        numbers = sorted(int(name) for name in counts)
    except ValueError:
        return odd
    runs: list[list[int]] = []
    for x in numbers:  # maximal runs of consecutive integers
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    main = max(runs, key=lambda run: sum(counts[str(x)] for x in run))
    for x in numbers:
        if x not in main:
            odd[str(x)] = ", ".join(filter(None, [odd.get(str(x)), f"outside {main[0]}..{main[-1]}"]))
    return odd


def check_label_set(labels: list[str], source: str) -> list[str]:
    """A label set must have at least two distinct names."""
    if len(labels) < 2:
        raise TformerError(
            f"the training data has {len(labels)} distinct label(s) {labels} ({source})",
            hint="a classifier needs at least two classes: check data.label_column",
        )
    if len(set(labels)) != len(labels):
        raise TformerError(f"data.labels repeats a name: {labels}")
    return labels


def unknown_label(value: Any, where: Where, i: int, labels: list[str]) -> TformerError:
    """The error for a label outside the known set."""
    shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
    return TformerError(
        f"label {value!r} at {where.at(i)} is not one of the {len(labels)} known labels: {shown}",
        hint="fix that row, or list every label in data.labels=[...]",
    )


def sequence_model(model_cfg: Any, vocab_size: int, num_outputs: int, task_cfg: Any, squeeze: bool) -> SequenceModel:
    """The encoder over the input vocabulary, topped by a pooling head with `num_outputs` outputs (squeezed to
    (B,) when there is one value per example); the task config gives the pooling and head dropout."""
    encoder = Encoder(vocab_size, model_cfg)  # first: a seed gives the same initial weights as ever
    return SequenceModel(encoder, SequenceHead(model_cfg.d_model, num_outputs, task_cfg.pooling,
                                               task_cfg.head_dropout, squeeze=squeeze, style=model_cfg.family))


def sequence_forward(model: nn.Module, batch: Batch) -> Tensor:
    """An encoder-plus-head model on a batch: ids and mask in, the head's outputs out."""
    return model(batch.input_ids, batch.mask)


def top_k_records(probs: Tensor, labels: list[str], top_k: int) -> list[list[dict[str, Any]]]:
    """Per example, the k most probable labels with their probabilities; probs is (B, C) on the CPU."""
    ranked = probs.argsort(dim=-1, descending=True, stable=True)[:, :top_k].tolist()  # (B, k)
    rows = probs.tolist()
    return [[{"label": labels[c], "probability": row[c]} for c in best] for row, best in zip(rows, ranked)]
