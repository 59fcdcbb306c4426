"""The task table's promises: natural losses that fit, task YAMLs, and every listed metric reported."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pytest
import yaml
from omegaconf import OmegaConf

from transformer_cli.config import conf_dir
from transformer_cli.losses import LOSSES
from transformer_cli.tasks import TASKS
from transformer_cli.tasks.common import Where

TRAIN = Where(split="train", source="train.csv")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_table_promises(name: str) -> None:
    """The natural loss exists and fits; metric names are known; the default monitor is reported."""
    spec = TASKS[name]
    assert spec.natural_loss in LOSSES
    assert set(LOSSES[spec.natural_loss].targets) & set(spec.target_kinds)
    assert all(kind in {k for s in LOSSES.values() for k in s.targets} for kind in spec.target_kinds)
    assert set(spec.metrics.values()) <= {"max", "min"} and spec.metrics["loss"] == "min"
    assert spec.default_monitor in spec.metric_names
    assert spec.default_monitor != "loss"  # the task's own metric, not the loss (which varies with loss=)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_yaml_brings_the_natural_loss(name: str) -> None:
    """conf/task/<name>.yaml exists, names the task and defaults to its natural loss."""
    doc = yaml.safe_load((conf_dir() / "task" / f"{name}.yaml").read_text())
    assert doc["name"] == name
    defaults = {k: v for d in doc["defaults"] if isinstance(d, dict) for k, v in d.items()}
    assert defaults["/loss@_global_.loss"] == TASKS[name].natural_loss


SAMPLES: dict[str, list[Any]] = {"classify": ["a", "b", "a"], "regress": [1.0, 2.0, 4.0],
                                 "multilabel": ["a,b", "b", ""]}


# seq2seq decodes (tasks/test_seq2seq.py); mlm masks its own inputs (tasks/test_mlm.py); qa answers over windows
# (tasks/test_qa.py)
@pytest.mark.parametrize("name", sorted(set(TASKS) - {"seq2seq", "mlm", "qa"}))
def test_task_metrics_report_every_listed_name(name: str, hidden: Callable, head_of: Callable,
                                               observe: Callable) -> None:
    """Each metric a task lists (besides the loss, which the loop adds) comes out of its metrics object."""
    spec = TASKS[name]
    cfg = OmegaConf.structured(spec.schema)
    state = spec.fit_state(SAMPLES[name], cfg, None, "train.csv")
    loss_kind = next(k for k in LOSSES[spec.natural_loss].targets if k in spec.target_kinds)
    task = spec.build(cfg, loss_kind, json.loads(json.dumps(state)))  # the state survives task.json
    targets = task.encode_targets(SAMPLES[name], TRAIN)
    outputs = head_of(task).eval()(*hidden(batch=len(targets)))
    metrics = task.new_metrics()
    observe(task, metrics, outputs, targets)
    scalars = metrics.compute()
    missing = [m for m in spec.metric_names if m != "loss" and m not in scalars]
    assert not missing
    unlisted = set(scalars) - {"count", "decoded"} - set(spec.metrics)  # every reported scalar has a direction
    assert not unlisted
    assert all(isinstance(scalars[m], float) or math.isnan(scalars[m]) for m in spec.metric_names if m != "loss")
