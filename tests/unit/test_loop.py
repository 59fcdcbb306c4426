"""The loop: accumulation equals one big batch, padding does not change the loss, early stopping, precision, and
the guards against non-finite steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.data.batching import EncodedSplit, collate
from transformer_cli.device import Precision, resolve_precision
from transformer_cli.errors import TformerError
from transformer_cli.loop import (
    Fitter,
    NonFiniteError,
    is_better,
    nonfinite_hooks,
    total_steps,
    train_step,
    windows,
)
from transformer_cli.losses import build_loss
from transformer_cli.losses.base import LossContext
from transformer_cli.losses.cross_entropy import CrossEntropyConfig
from transformer_cli.model import SequenceModel
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask


def tiny_setup(seed: int = 0) -> tuple[SequenceModel, ClassifyTask, EncodedSplit]:
    """A dropout-free tiny classifier and 8 examples of varied length."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0)
    task = ClassifyTask(ClassifyConfig(head_dropout=0.0), "index", {"labels": ["a", "b", "c"]})
    model = task.build_model(cfg, 50)
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 50, size=int(n)).astype(np.int32) for n in rng.integers(3, 12, size=8)]
    return model, task, EncodedSplit(ids, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))


def step_on(model: SequenceModel, task: ClassifyTask, micro: list, cfg: CrossEntropyConfig) -> SequenceModel:
    """One SGD step on the given micro-batches; returns the updated model."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = build_loss(cfg, LossContext(num_outputs=3, label_counts=torch.tensor([3, 3, 2])))
    precision = Precision("fp32", torch.device("cpu"))
    train_step(model, micro, task, loss, opt, precision.scaler(), precision, grad_clip=0.0)
    return model


def batch_of(split: EncodedSplit, idx: list[int]):
    """A padded batch of the given examples."""
    arr = np.asarray(idx)
    return collate([split.ids[i] for i in idx], split.targets[torch.from_numpy(arr)], arr)


@pytest.mark.parametrize("cfg", [CrossEntropyConfig(), CrossEntropyConfig(label_smoothing=0.1, class_weights="auto"),
                                 CrossEntropyConfig(class_weights=[1.0, 2.0, 0.5])])
def test_accumulation_equals_one_big_batch(cfg: CrossEntropyConfig) -> None:
    """Two micro-batches of 3 and 5 examples give the same update as one batch of all 8."""
    model, task, split = tiny_setup()
    whole = step_on(model, task, [batch_of(split, list(range(8)))], cfg)
    accum = step_on(model, task, [batch_of(split, [0, 1, 2]), batch_of(split, [3, 4, 5, 6, 7])], cfg)
    for (name, a), (_, b) in zip(whole.named_parameters(), accum.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_extra_padding_does_not_change_the_update() -> None:
    """Padding a batch further (longer T) leaves the update unchanged."""
    model, task, split = tiny_setup()
    batch = batch_of(split, [0, 1, 2])
    T = batch.input_ids.shape[1]
    padded = copy.copy(batch)
    padded.input_ids = torch.nn.functional.pad(batch.input_ids, (0, 7))
    padded.mask = torch.nn.functional.pad(batch.mask, (0, 7))
    assert padded.input_ids.shape[1] == T + 7
    a = step_on(model, task, [batch], CrossEntropyConfig())
    b = step_on(model, task, [padded], CrossEntropyConfig())
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)


def test_windows_and_total_steps() -> None:
    """Micro-batches group into accumulation windows; total steps follow epochs and max_steps."""
    assert [len(w) for w in windows(iter(range(7)), 3)] == [3, 3, 1]
    _, _, split = tiny_setup()

    class Cfg:
        batch_size, grad_accum, max_epochs, max_steps, max_tokens = 3, 2, 4, -1, 0

    assert total_steps(split, Cfg) == 2 * 4  # ceil(8/3)=3 batches -> 2 steps per epoch
    Cfg.max_steps = 5
    assert total_steps(split, Cfg) == 5


def test_is_better_follows_mode_and_ignores_nan() -> None:
    """Higher is better for max metrics, lower for min; NaN never improves."""
    assert is_better(0.7, 0.6, "max") and not is_better(0.7, 0.6, "min")
    assert is_better(1.0, None, "min") and not is_better(float("nan"), None, "max")


def test_precision_defaults_per_device() -> None:
    """fp32 on CPU by default; fp16 on CPU is refused with a hint."""
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with pytest.raises(TformerError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_too_many_consecutive_skips_give_up() -> None:
    """nan_policy=skip still stops a run that keeps producing NaN."""
    fitter = Fitter.__new__(Fitter)
    from types import SimpleNamespace

    from transformer_cli.loop import FitState

    fitter.state = FitState()
    fitter.cfg = SimpleNamespace(nan_policy="skip", max_consecutive_skips=2)
    fitter.writer = SimpleNamespace(write=lambda record: None)
    batch = SimpleNamespace(index=torch.tensor([4, 5]))
    fitter._non_finite([batch])
    fitter._non_finite([batch])
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        fitter._non_finite([batch])


def test_detect_anomaly_names_the_first_module() -> None:
    """With the forward hooks on, the first module whose output is non-finite is named."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    with nonfinite_hooks(model), pytest.raises(NonFiniteError, match="module '1' \\(Linear\\)"):
        model(torch.ones(1, 2))
