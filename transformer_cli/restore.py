"""The one way back from a checkpoint: checkpoint -> config -> tokenizer, task -> model -> weights.

eval, predict, export and resume all rebuild through `restore`, so a checkpoint means the same thing to
each of them: the stored config is validated against the schemas, the task is rebuilt from task.json
(labels, target scaling or target vocabulary) and the loss kind its config implies, the model is built by
the task from the stored model config, and the weights must fit it tensor by tensor.

Nothing is allocated on the strength of the stored config alone: the model is first built on PyTorch's
"meta" device (shapes, no memory), and its tensors are compared with those in model.safetensors before the
real model is built, so a forged config claiming a huge model is refused, not allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer
from torch import nn

from transformer_cli.checkpoint import Checkpoint, corrupt, load_checkpoint, load_weights, weight_problems
from transformer_cli.errors import TformerError
from transformer_cli.losses import Loss, LossContext, build_loss
from transformer_cli.tasks import TASKS, Task, build_task
from transformer_cli.typecheck import mismatches
from transformer_cli.validate import load_train_config

# Room for what a model holds beyond its stored weights (buffers rebuilt from config, such as position
# tables); a stored config that needs more than this above the weights file is refused before allocation.
BUFFER_ALLOWANCE = 256 << 20
# task.json's keys besides the task's own state (run.py's make_fitter writes them).
TASK_JSON = {"loss_kind": str,
             "loss_context": {"num_outputs": int, "label_counts": list[int] | None, "num_examples": int | None}}


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
    check_model_size(task, config, ckpt)
    model = task.build_model(config.model, ckpt.tokenizer.get_vocab_size())
    load_weights(model, ckpt.weights, ckpt.path)
    return Restored(checkpoint=ckpt, config=config, task=task, model=model)


def check_model_size(task: Task, config: DictConfig, ckpt: Checkpoint) -> None:
    """Build the model on the meta device (no memory) and refuse it unless its tensors are exactly the stored
    ones and its buffers fit in BUFFER_ALLOWANCE."""
    try:
        with torch.device("meta"):
            shell = task.build_model(config.model, ckpt.tokenizer.get_vocab_size())
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise corrupt(ckpt.path, f"config.yaml describes a model that cannot be built ({str(err)[:200]})") from err
    stored = {name: tuple(t.shape) for name, t in ckpt.weights.items()}
    problems = weight_problems(_unique_shapes(shell), stored)
    if problems:
        raise corrupt(ckpt.path, "the model its config.yaml describes does not match model.safetensors: "
                      + "; ".join(problems[:5]))
    needed = sum(t.numel() * t.element_size() for t in [*shell.parameters(), *shell.buffers()])
    have = sum(t.numel() * t.element_size() for t in ckpt.weights.values())
    if needed > have + BUFFER_ALLOWANCE:
        raise corrupt(ckpt.path, f"its config.yaml needs {needed / 2**20:,.0f} MB for a model whose weights take "
                      f"{have / 2**20:,.1f} MB")


def _unique_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model's state, a tied tensor once (by identity: meta tensors have no address)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out[name] = tuple(tensor.shape)
    return out


def restore_task(config: DictConfig, ckpt: Checkpoint) -> Task:
    """The task exactly as trained: the same labels, target scaling or target vocabulary, the same loss kind."""
    spec = TASKS[config.task.name]  # the stored config was validated: the task exists
    state = ckpt.task_state
    problems = [f"{key}: missing" for key in spec.state if key not in state]
    problems += mismatches(state, {**spec.state, **TASK_JSON})
    if problems:
        raise corrupt(ckpt.path, f"task.json does not describe a '{config.task.name}' task "
                      f"({'; '.join(problems[:5])})")
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
