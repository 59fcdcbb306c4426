"""model.init_from: a new run starts from an earlier run's encoder (exactly) and tokenizer; a mismatch is named."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from transformer_cli.errors import TformerError
from transformer_cli.pretrained.settings import copy_encoder, start_from
from transformer_cli.restore import restore


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory, compose_train: Callable, tiny: list[str]) -> Path:
    """A few steps of masked-language modelling on Rotten Tomatoes' texts."""
    from transformer_cli.run import train

    run = tmp_path_factory.mktemp("mlm")
    train(compose_train(["task=mlm", *tiny, "trainer.max_steps=4", "trainer.eval_every=4"]), run)
    return run


@pytest.mark.slow
def test_the_encoder_is_copied_exactly_and_the_head_is_fresh(earlier_run: Path, compose_train: Callable,
                                                              tiny: list[str]) -> None:
    cfg, begin = start_from(compose_train(["task=classify", *tiny, f"model.init_from={earlier_run}"]))
    assert begin is not None and "mlm run" in begin.description
    earlier = restore(earlier_run)
    assert begin.tokenizer.to_str() == earlier.tokenizer.to_str()  # the same vocabulary, as it is
    from transformer_cli.tasks import build_task

    task = build_task(cfg.task, cfg.loss.name, {"labels": ["fresh", "rotten"]})
    model = task.build_model(cfg.model, begin.tokenizer.get_vocab_size())
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    begin.load(model)
    theirs = earlier.model.encoder.state_dict()
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())  # untouched


@pytest.mark.slow
def test_other_model_settings_are_refused_by_name(earlier_run: Path, compose_train: Callable,
                                                  tiny: list[str]) -> None:
    with pytest.raises(TformerError, match=r"model.d_model=256, but the model it starts from has 64"):
        start_from(compose_train(["task=classify", *tiny, "model=base", f"model.init_from={earlier_run}"]))


@pytest.mark.slow
def test_a_tensor_that_does_not_fit_is_named(earlier_run: Path, compose_train: Callable, tiny: list[str]) -> None:
    from transformer_cli.config import ModelConfig
    from transformer_cli.tasks import build_task

    earlier = restore(earlier_run)
    cfg = compose_train(["task=classify", *tiny])
    wide = build_task(cfg.task, "ce", {"labels": ["a", "b"]}).build_model(
        ModelConfig(d_model=64, n_layers=1, n_heads=2, d_ff=100), earlier.tokenizer.get_vocab_size())
    with pytest.raises(TformerError, match=r"layers.0.ff.up.weight: \(128, 64\) there, \(100, 64\) here"):
        copy_encoder(earlier, wide)


@pytest.mark.slow
def test_the_earlier_tokenizer_settings_are_taken_not_compared(earlier_run: Path, compose_train: Callable,
                                                               tiny: list[str]) -> None:
    """Its tokenizer is used as it is: this run's data.tokenizer settings give way (a log line says so)."""
    earlier = restore(earlier_run)
    cfg, _ = start_from(compose_train(["task=classify", *tiny, "data.tokenizer.vocab_size=123",
                                       f"model.init_from={earlier_run}"]))
    assert cfg.data.tokenizer.vocab_size == earlier.config.data.tokenizer.vocab_size != 123


def test_a_missing_directory_names_model_init_from(tmp_path: Path, compose_train: Callable) -> None:
    with pytest.raises(TformerError, match=r"model.init_from=.*no such run or checkpoint directory"):
        start_from(compose_train(["task=classify", f"model.init_from={tmp_path / 'nowhere'}"]))


@pytest.mark.slow
def test_a_classifier_without_a_mask_token_cannot_continue_as_mlm(tmp_path: Path, compose_train: Callable,
                                                                   tiny: list[str]) -> None:
    """A classify run's vocabulary has no [MASK]: task=mlm from it is refused with the reason."""
    from transformer_cli.run import train

    classifier = tmp_path / "classify"
    train(compose_train(["task=classify", *tiny, "trainer.max_steps=2", "trainer.eval_every=2"]), classifier)
    with pytest.raises(TformerError, match="no mask token") as err:
        train(compose_train(["task=mlm", *tiny, f"model.init_from={classifier}"]), tmp_path / "mlm")
    assert "only those trained for task=mlm" in (err.value.hint or "")
