"""Every YAML under conf/ composes against its schema and builds; typos and misfits fail early."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError
from transformer_cli.losses import LOSSES, build_loss
from transformer_cli.losses.base import LossContext
from transformer_cli.model import Encoder
from transformer_cli.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
)
from transformer_cli.tasks import TASKS
from transformer_cli.validate import check_train_config

GROUPS = ("task", "loss", "data", "model", "optim", "schedule", "trainer", "experiment")


def options(group: str) -> list[str]:
    """Every option (YAML file) of a config group."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def fitting_task(loss: str) -> str:
    """A task that the loss fits."""
    return next(t for t, spec in TASKS.items() if set(LOSSES[loss].targets) & set(spec.target_kinds))


def override_for(group: str, option: str) -> list[str]:
    """Overrides selecting one option, with what it needs to compose (a fitting task, a data file)."""
    if group == "loss":
        return [f"task={fitting_task(option)}", f"loss={option}", "data=local", "data.train=x.csv"]
    if group == "data" and option == "local":
        return ["data=local", "data.train=x.csv"]
    if group == "data" and option == "hub":
        return ["data=hub", "data.name=imdb"]
    if group == "task" and option == "multilabel":
        return ["task=multilabel", "data.train=x.csv"]
    if group == "model" and option == "pretrained":
        return ["model=pretrained", "model.path=some/model"]
    if group == "model" and option == "hub":
        return ["model=hub", "model.name=some/model"]
    return [f"{group}={option}"]


ALL = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options() -> None:
    """The config tree holds every documented group."""
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}/{o}" for g, o in ALL])
def test_every_yaml_composes_and_builds(group: str, option: str, compose_train: Callable) -> None:
    """Compose the option, pass the cross-group checks, and build the pieces it configures."""
    cfg = compose_train(override_for(group, option))
    check_train_config(cfg)
    assert cfg.task.name in TASKS and cfg.loss.name in LOSSES
    assert cfg.optim.name in OPTIMIZERS and cfg.schedule.name in SCHEDULES
    if cfg.model.source is not None:  # its architecture comes from its directory (tests/unit/pretrained)
        assert cfg.model.d_model is None and cfg.data.tokenizer.kind == "pretrained"
    elif group == "model" or group == "experiment":
        Encoder(100, cfg.model)
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(cfg.optim, model)
    build_scheduler(cfg.schedule, optimizer, total_steps=100)
    kind = next(k for k in LOSSES[cfg.loss.name].targets if k in TASKS[cfg.task.name].target_kinds)
    counts = {"index": torch.tensor([3, 5]), "binary": torch.tensor([3, 5]), "multilabel": torch.tensor([3, 5]),
              "real": None, "span": None}[kind]
    build_loss(cfg.loss, LossContext(num_outputs=2 if kind != "binary" else 1, label_counts=counts, num_examples=8))


def test_each_task_brings_its_natural_loss_and_data(compose_train: Callable) -> None:
    """task=regress picks mse on VADER; the default is classification with ce on Rotten Tomatoes."""
    default = compose_train([])
    assert (default.task.name, default.loss.name, default.data.name) == ("classify", "ce", "rotten_tomatoes")
    regress = compose_train(["task=regress"])
    assert (regress.loss.name, regress.data.name, regress.data.label_column) == ("mse", "vader", "score")
    assert compose_train(["task=regress", "loss=huber"]).loss.delta == 1.0


def test_noam_follows_model_width(compose_train: Callable) -> None:
    """The noam schedule's d_model is the model's."""
    cfg = compose_train(["schedule=noam", "model=base"])
    assert cfg.schedule.d_model == cfg.model.d_model == 256


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "loss.gama=2", "model.d_modle=64", "data.txt_column=a"])
def test_misspelled_key_fails_at_compose_time(override: str, compose_train: Callable) -> None:
    """A typo in any group is rejected by the schema, not silently ignored."""
    with pytest.raises(ConfigCompositionException):
        compose_train([override])


@pytest.mark.parametrize("override", ["trainer.max_epochs=abc", "model.dropout=high", "loss.label_smoothing=x"])
def test_wrong_type_fails_at_compose_time(override: str, compose_train: Callable) -> None:
    """A value of the wrong type is rejected by the schema."""
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_train([override])


def test_loss_that_does_not_fit_the_task_names_the_fitting_ones(compose_train: Callable) -> None:
    """MSE on classification fails before training, naming the losses that fit (natural one first)."""
    cfg = compose_train(["loss=mse"])
    with pytest.raises(TformerError) as err:
        check_train_config(cfg)
    assert "does not fit" in err.value.message and "loss=ce" in str(err.value)
    cfg = compose_train(["task=regress", "loss=ce"])
    with pytest.raises(TformerError, match="mse"):
        check_train_config(cfg)


@pytest.mark.parametrize(("override", "needle"), [
    ("trainer.monitor=rmse", "monitor"),
    ("model.n_heads=3", "n_heads"),
    ("model.norm=middle", "model.norm"),
    ("data.tokenizer.max_length=1024", "max_positions"),
    ("trainer.batch_size=0", "batch_size"),
])
def test_cross_field_checks(override: str, needle: str, compose_train: Callable) -> None:
    """Values that each type-check but do not make sense together are refused with the key named."""
    with pytest.raises(TformerError, match=needle):
        check_train_config(compose_train([override]))


def test_conf_dir_is_packaged() -> None:
    """The shipped configs are found through the package, not a path relative to the checkout."""
    assert (conf_dir() / "train.yaml").is_file() and (conf_dir() / "eval.yaml").is_file()
    assert Path(conf_dir()).name == "conf"
