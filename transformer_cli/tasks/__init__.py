"""The task table: each task names its head, its targets, its natural loss and its metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask
from transformer_cli.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from transformer_cli.tasks.regress import RegressConfig, RegressTask
from transformer_cli.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask


@dataclass(frozen=True)
class TaskSpec:
    """One task: its config schema, the class that does its work, and what it offers."""

    schema: type
    build: Callable[..., Any]
    target_kinds: tuple[str, ...]  # what its losses may consume (see losses/base.py)
    natural_loss: str  # the loss used when none is given
    metric_names: tuple[str, ...]  # validation metrics it reports (any can be monitored)
    default_monitor: str
    summary: str


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec(
        ClassifyConfig, ClassifyTask, ("index", "binary"), "ce",
        ("loss", "accuracy", "macro_f1", "mcc"), "accuracy",
        "single-label classification of a text or a text pair",
    ),
    "regress": TaskSpec(
        RegressConfig, RegressTask, ("real",), "mse",
        ("loss", "mse", "rmse", "mae", "r2", "pearson", "spearman"), "rmse",
        "one real-valued target per text or text pair",
    ),
    "multilabel": TaskSpec(
        MultiLabelConfig, MultiLabelTask, ("multilabel",), "bce",
        ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"), "micro_f1",
        "any number of labels per text (per-label binary decisions)",
    ),
    "seq2seq": TaskSpec(
        Seq2SeqConfig, Seq2SeqTask, ("index",), "ce",
        ("loss", "token_accuracy", "perplexity", "bleu", "chrf", "exact_match", "wer", "per"), "bleu",
        "text to text with an encoder-decoder (translation, grapheme-to-phoneme), beam search",
    ),
}
