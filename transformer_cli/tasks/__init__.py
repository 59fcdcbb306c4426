"""The task table: each task names its schema, how it is built, what its losses consume and its metrics.

Adding a task is one file in tasks/ (a class implementing tasks/protocol.py's Task), one YAML in
conf/task/ and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tokenizers import Tokenizer

from transformer_cli.data.tokenize import MASK
from transformer_cli.errors import TformerError, choose
from transformer_cli.losses import LOSSES
from transformer_cli.tasks import classify, mlm, multilabel, qa, regress, seq2seq
from transformer_cli.tasks.protocol import Task


@dataclass(frozen=True)
class TaskSpec:
    """One task: its config schema, how it learns its state from the training targets and is built from it."""

    schema: type
    # (label values, task cfg, data.labels, source, input tokenizer) -> the state the task is built from
    fit_state: Callable[[Sequence[Any], Any, list[str] | None, str, Tokenizer | None], dict[str, Any]]
    build: Callable[[Any, str, dict[str, Any]], Task]  # (task cfg, loss kind, state) -> the task
    target_kinds: tuple[str, ...]  # what its losses may consume (see losses/base.py)
    natural_loss: str  # the loss used when none is given
    metrics: dict[str, str]  # validation metric -> "max" or "min" (which way is better); any can be monitored
    default_monitor: str
    summary: str
    reads_labels: bool = True  # False: it learns from the text alone (no label column is read)
    specials: tuple[str, ...] = ()  # special tokens it needs in a vocabulary tformer trains
    state: dict[str, Any] = field(kw_only=True)  # the keys and types of what it keeps in task.json (its STATE)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The validation metrics the task reports."""
        return tuple(self.metrics)


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec(
        classify.ClassifyConfig, classify.ClassifyTask.fit_state, classify.ClassifyTask, ("index", "binary"), "ce",
        classify.METRICS, "accuracy", "single-label classification of a text or a text pair", state=classify.STATE,
    ),
    "regress": TaskSpec(
        regress.RegressConfig, regress.RegressTask.fit_state, regress.RegressTask, ("real",), "mse",
        regress.METRICS, "rmse", "one real-valued target per text or text pair", state=regress.STATE,
    ),
    "multilabel": TaskSpec(
        multilabel.MultiLabelConfig, multilabel.MultiLabelTask.fit_state, multilabel.MultiLabelTask,
        ("multilabel",), "bce", multilabel.METRICS, "micro_f1",
        "any number of labels per text (per-label binary decisions)", state=multilabel.STATE,
    ),
    "seq2seq": TaskSpec(
        seq2seq.Seq2SeqConfig, seq2seq.Seq2SeqTask.fit_state, seq2seq.Seq2SeqTask, ("index",), "ce",
        seq2seq.METRICS, "bleu",
        "text to text with an encoder-decoder (translation, grapheme-to-phoneme), beam search", state=seq2seq.STATE,
    ),
    "mlm": TaskSpec(
        mlm.MLMConfig, mlm.MLMTask.fit_state, mlm.MLMTask, ("index",), "ce", mlm.METRICS, "perplexity",
        "masked-language modelling on unlabelled text (pretraining, or adapting a pretrained encoder)",
        reads_labels=False, specials=(MASK,), state=mlm.STATE,
    ),
    "qa": TaskSpec(
        qa.QAConfig, qa.QATask.fit_state, qa.QATask, ("span",), "ce", qa.METRICS, "f1",
        "extractive question answering: the answer as a span of the context (SQuAD), long contexts in windows",
        state=qa.STATE,
    ),
}


def target_kind(task: str, loss: str) -> str:
    """What `loss` will consume from `task`: the first of the loss's target kinds that the task produces."""
    spec = choose(TASKS, task, "task")
    loss_spec = choose(LOSSES, loss, "loss")
    for kind in loss_spec.targets:
        if kind in spec.target_kinds:
            return kind
    fitting = sorted(n for n, s in LOSSES.items() if set(s.targets) & set(spec.target_kinds))
    fitting.sort(key=lambda n: n != spec.natural_loss)  # the task's natural loss first
    raise TformerError(
        f"loss '{loss}' does not fit task '{task}': it expects {'/'.join(loss_spec.targets)} targets, "
        f"the task produces {'/'.join(spec.target_kinds)}",
        hint=f"losses that fit task={task}: {', '.join(fitting)} (e.g. loss={fitting[0]})",
    )


def monitor_of(task: str, monitor: str | None) -> tuple[str, str]:
    """The monitored validation metric (the task's default when none is set) and its direction, max or min."""
    spec = choose(TASKS, task, "task")
    name = monitor or spec.default_monitor
    if name not in spec.metrics:
        raise TformerError(f"trainer.monitor='{name}' is not a metric of task '{task}'",
                           hint=f"choose one of: {', '.join(spec.metric_names)}")
    return name, spec.metrics[name]


def build_task(task_cfg: Any, loss_name: str, state: dict[str, Any]) -> Task:
    """The task of a config, from the state it learned on the training data (or a checkpoint's task.json)."""
    return choose(TASKS, task_cfg.name, "task").build(task_cfg, target_kind(task_cfg.name, loss_name), state)


__all__ = ["TASKS", "Task", "TaskSpec", "build_task", "monitor_of", "target_kind"]
