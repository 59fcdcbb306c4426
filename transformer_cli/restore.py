"""The one way back from a checkpoint: checkpoint -> config -> tokenizer, task -> model -> weights.

eval, predict, export and resume all rebuild through `restore`, so a checkpoint means the same thing to
each of them: the stored config is validated against the schemas, the task is rebuilt from task.json
(labels, target scaling or target vocabulary) and the loss kind its config implies, the model is built by
the task from the stored model config, and the weights must fit it tensor by tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from tokenizers import Tokenizer
from torch import nn

from transformer_cli.checkpoint import Checkpoint, load_checkpoint, load_weights
from transformer_cli.errors import TformerError
from transformer_cli.losses import Loss, LossContext, build_loss
from transformer_cli.tasks import Task, build_task
from transformer_cli.validate import load_train_config


@dataclass
class Restored:
    """A checkpoint rebuilt: its files, its validated training config, its task and its model with weights."""

    checkpoint: Checkpoint
    config: DictConfig
    task: Task
    model: nn.Module

    @property
    def path(self) -> Path:
        """The checkpoint directory."""
        return self.checkpoint.path

    @property
    def tokenizer(self) -> Tokenizer:
        """The input tokenizer the model was trained with."""
        return self.checkpoint.tokenizer


def restore(path: str | Path, trainer_state: bool = False) -> Restored:
    """Read and verify a checkpoint (or a run directory's best one) and rebuild everything it describes."""
    ckpt = load_checkpoint(path, trainer_state=trainer_state)
    config = load_train_config(ckpt.config, source=str(ckpt.path / "config.yaml"))
    task = restore_task(config, ckpt)
    model = task.build_model(config.model, ckpt.tokenizer.get_vocab_size())
    load_weights(model, ckpt.weights, ckpt.path)
    return Restored(checkpoint=ckpt, config=config, task=task, model=model)


def restore_task(config: DictConfig, ckpt: Checkpoint) -> Task:
    """The task exactly as trained: the same labels, target scaling or target vocabulary, the same loss kind."""
    try:
        return build_task(config.task, config.loss.name, ckpt.task_state)
    except (KeyError, TypeError, ValueError) as err:
        raise TformerError(f"{ckpt.path / 'task.json'} does not describe a '{config.task.name}' task ({err!r}); "
                           "the checkpoint is damaged", hint="use another checkpoint of the run") from err


def restore_loss(restored: Restored) -> Loss:
    """The training loss, with the training data's class counts for `auto` weights."""
    context = restored.checkpoint.task_state.get("loss_context") or {}
    if not isinstance(context, dict):
        raise TformerError(f"{restored.path / 'task.json'} has a malformed loss_context; the checkpoint is damaged")
    return build_loss(restored.config.loss, LossContext.from_json(context))
