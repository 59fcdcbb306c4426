"""A run's config completed from a pretrained directory, frozen layers, layer-wise learning rates."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from transformer_cli.errors import TformerError
from transformer_cli.optim import AdamWConfig, build_adamw
from transformer_cli.pretrained.directory import open_pretrained
from transformer_cli.pretrained.settings import adopt, resolve
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask


def pretrained_config(compose_train: Callable, folder: Path, *overrides: str):
    """The composed train config of model=pretrained on `folder`."""
    return compose_train(["model=pretrained", f"model.path={folder}", *overrides])


def test_the_preset_leaves_the_architecture_to_the_directory(compose_train: Callable,
                                                             tiny_hf: Callable[..., Path]) -> None:
    """model=pretrained composes with null architecture; resolve fills it from config.json and tokenizer.json,
    and the fine-tuning defaults come with the preset."""
    folder = tiny_hf("bert")
    cfg = pretrained_config(compose_train, folder)
    assert cfg.model.d_model is None and cfg.data.tokenizer.max_length is None and cfg.data.tokenizer.kind == "pretrained"
    assert (cfg.optim.lr, cfg.schedule.name, cfg.schedule.warmup_ratio, cfg.trainer.max_epochs) == (5e-5, "linear", 0.06, 3)
    done = resolve(cfg, open_pretrained(folder))
    assert (done.model.family, done.model.d_model, done.model.n_layers, done.model.norm) == ("bert", 32, 2, "post")
    assert done.data.tokenizer.max_length == 64  # the position table's length: its tokenizer.json sets none
    assert cfg.model.d_model is None  # the composed config is not changed


def test_a_given_setting_must_agree_with_the_directory(compose_train: Callable, tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    same = resolve(pretrained_config(compose_train, folder, "model.n_layers=2"), open_pretrained(folder))
    assert same.model.n_layers == 2
    with pytest.raises(TformerError, match=r"model.n_layers=5, but the model it starts from has 2"):
        resolve(pretrained_config(compose_train, folder, "model.n_layers=5"), open_pretrained(folder))


def test_a_resumed_run_takes_the_settings_from_its_checkpoint(compose_train: Callable,
                                                               tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("roberta")
    stored = resolve(pretrained_config(compose_train, folder), open_pretrained(folder))
    again = adopt(pretrained_config(compose_train, folder), stored)
    assert again.model == stored.model and again.data.tokenizer.max_length == stored.data.tokenizer.max_length == 64


def small_model(layers: int = 3) -> torch.nn.Module:
    """A tiny classifier to count parameter groups on."""
    from transformer_cli.config import ModelConfig

    task = ClassifyTask(ClassifyConfig(), "index", {"labels": ["a", "b"]})
    return task.build_model(ModelConfig(d_model=8, n_layers=layers, n_heads=2, d_ff=16), 30)


def test_layer_decay_gives_lower_layers_smaller_rates() -> None:
    """Layer i of L learns at lr x decay^(L + 1 - i); embeddings at decay^(L + 1); the head at lr."""
    model = small_model(layers=3)
    optimizer = build_adamw(AdamWConfig(lr=1.0, layer_decay=0.5), model)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rate[id(model.head.proj.weight)] == 1.0
    assert rate[id(model.encoder.layers[2].ff.up.weight)] == 0.5
    assert rate[id(model.encoder.layers[0].ff.up.weight)] == 0.125
    assert rate[id(model.encoder.embed.tokens.weight)] == 0.0625
    flat = build_adamw(AdamWConfig(lr=1.0), model)
    assert {g["lr"] for g in flat.param_groups} == {1.0}


def test_frozen_layers_do_not_train() -> None:
    """freeze(n): the embeddings and the first n layers keep their weights; the rest train."""
    model = small_model(layers=3)
    model.encoder.freeze(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_adamw(AdamWConfig(lr=1e-2), model)
    ids, mask = torch.randint(1, 30, (4, 6)), torch.ones(4, 6, dtype=torch.bool)
    model(ids, mask).square().sum().backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.embed.", "encoder.layers.0.",
                                                                                    "encoder.layers.1.")))
    assert not torch.equal(before["encoder.layers.2.ff.up.weight"], after["encoder.layers.2.ff.up.weight"])
    assert not torch.equal(before["head.proj.weight"], after["head.proj.weight"])
