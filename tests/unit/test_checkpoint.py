"""Checkpoints: exact round trips, atomic overwrites, damage detection, shape checks, no code execution, a full
disk, non-finite weights, and retention."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError
from tokenizers import Tokenizer
from torch import nn

from transformer_cli import checkpoint as ckpt_module
from transformer_cli.checkpoint import (
    FILES,
    FORMAT,
    VERSION,
    CheckpointDir,
    _describe,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from transformer_cli.config import ModelConfig, TokenizerConfig, conf_dir
from transformer_cli.data.tokenize import encode, train_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.heads import SequenceHead
from transformer_cli.model import Encoder, SequenceModel
from transformer_cli.validate import load_train_config, register_schemas

SENTENCES = ["a fine film with a fine cast", "dull and slow, far too long", "the cast is fine, the plot is not",
             "not a film i would see twice", "slow but fine"]
TASK_STATE = {"labels": ["neg", "pos", "mixed"], "loss_kind": "index",
              "loss_context": {"num_outputs": 3, "label_counts": [2, 2, 1], "num_examples": 5}}
META = {"step": 12, "epoch": 1, "monitor": "accuracy", "metrics": {"accuracy": 0.75, "loss": 0.5}}
CHECKPOINT_FILES = {*FILES, "manifest.json"}
TINY = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32",
        "data.tokenizer.vocab_size=100", "data.tokenizer.min_frequency=1"]


class Payload:
    """A pickle payload: unpickling it creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        """Unpickling calls open(marker, "w")."""
        return (open, (str(self.marker), "w"))


@pytest.fixture(autouse=True)
def no_stray_dirs(tmp_path: Path) -> Iterator[None]:
    """After each test, no temporary or moved-aside checkpoint directory is left anywhere under tmp_path."""
    yield
    leftovers = [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    assert not leftovers


@pytest.fixture(scope="module")
def cfg() -> DictConfig:
    """The real `train` config, composed by Hydra and shrunk to a tiny model."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=TINY)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small BPE vocabulary."""
    return train_tokenizer(SENTENCES, TokenizerConfig(vocab_size=100, min_frequency=1))


def tiny_model(vocab: int, num_outputs: int = 3, **sizes: Any) -> SequenceModel:
    """An encoder and a classification head, small enough to build in milliseconds."""
    mcfg = ModelConfig(**{"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, **sizes})
    return SequenceModel(Encoder(vocab, mcfg), SequenceHead(mcfg.d_model, num_outputs, "cls", 0.0, squeeze=False))


@pytest.fixture
def model(tokenizer: Tokenizer) -> SequenceModel:
    """A freshly initialised tiny model."""
    torch.manual_seed(0)
    return tiny_model(tokenizer.get_vocab_size())


@pytest.fixture
def ckpt(tmp_path: Path, model: nn.Module, cfg: DictConfig, tokenizer: Tokenizer) -> Path:
    """A freshly saved checkpoint directory."""
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "best", model, cfg, tokenizer, TASK_STATE, META)


def rewrite_manifest(path: Path) -> None:
    """Recompute manifest.json so that it vouches for whatever the files now hold (as a forger would)."""
    (path / "manifest.json").write_text(json.dumps({name: _describe(path / name) for name in FILES}))


def error_of(path: Path) -> str:
    """The TformerError message load_checkpoint raises for `path`."""
    with pytest.raises(TformerError) as err:
        load_checkpoint(path)
    return str(err.value)


# ----------------------------------------------------------------------------- round trip


def test_round_trip(ckpt: Path, model: nn.Module, cfg: DictConfig, tokenizer: Tokenizer) -> None:
    """Weights, config, tokenizer, task state and meta come back exactly as saved."""
    assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES
    assert set(json.loads((ckpt / "manifest.json").read_text())) == set(FILES)
    got = load_checkpoint(ckpt)
    assert got.path == ckpt
    expected = model.state_dict()
    assert set(got.weights) == set(expected)
    for name, tensor in expected.items():
        assert got.weights[name].dtype == tensor.dtype, name
        assert torch.equal(got.weights[name], tensor), name
    assert got.config == cfg
    assert load_train_config(got.config, str(ckpt / "config.yaml")) == cfg
    assert got.tokenizer.get_vocab() == tokenizer.get_vocab()
    for a, b in zip(encode(got.tokenizer, SENTENCES, SENTENCES[::-1]), encode(tokenizer, SENTENCES, SENTENCES[::-1])):
        assert a.tolist() == b.tolist()
    assert got.task_state == TASK_STATE
    assert {k: got.meta[k] for k in META} == META
    assert got.meta["format"] == FORMAT and got.meta["version"] == VERSION
    assert got.meta["torch"] == torch.__version__ and "tformer" in got.meta


def test_loaded_weights_give_the_same_outputs(ckpt: Path, model: nn.Module, tokenizer: Tokenizer) -> None:
    """A model rebuilt from the checkpoint computes what the saved one did."""
    torch.manual_seed(1)
    other = tiny_model(tokenizer.get_vocab_size())
    got = load_checkpoint(ckpt)
    load_weights(other, got.weights, got.path)
    ids = torch.tensor([[2, 7, 9, 3, 0]])  # (B, T)
    mask = ids != 0
    model.eval()
    other.eval()
    torch.testing.assert_close(other(ids, mask), model(ids, mask), rtol=0, atol=0)


def test_a_run_directory_resolves_to_its_best_checkpoint(ckpt: Path) -> None:
    """Passing the run directory loads <run>/checkpoints/best."""
    assert load_checkpoint(ckpt.parent.parent).path == ckpt


def test_overwrite_leaves_one_valid_checkpoint(ckpt: Path, model: nn.Module, cfg: DictConfig,
                                               tokenizer: Tokenizer) -> None:
    """Saving over a checkpoint replaces it whole and leaves no temporary or old directories."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(ckpt, model, cfg, tokenizer, {**TASK_STATE, "labels": ["a", "b", "c"]}, {**META, "step": 99})
    assert [p.name for p in ckpt.parent.iterdir()] == ["best"]
    assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES
    got = load_checkpoint(ckpt)
    assert got.meta["step"] == 99 and got.task_state["labels"] == ["a", "b", "c"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(got.weights[name], tensor), name


def test_failed_save_keeps_the_old_checkpoint(ckpt: Path, model: nn.Module, cfg: DictConfig,
                                              tokenizer: Tokenizer) -> None:
    """A save that fails half-way leaves the previous checkpoint intact and cleans up after itself."""
    with pytest.raises(TypeError):
        save_checkpoint(ckpt, model, cfg, tokenizer, {"labels": {1, 2}}, META)  # a set is not JSON
    assert [p.name for p in ckpt.parent.iterdir()] == ["best"]
    assert load_checkpoint(ckpt).task_state == TASK_STATE


# ----------------------------------------------------------------------------- damage


def test_flipped_bytes_in_the_weights(ckpt: Path) -> None:
    """Bytes changed in place (same size) are caught by the sha256 and the file is named."""
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    for i in (len(data) // 2, len(data) - 1):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    msg = error_of(ckpt)
    assert str(f) in msg and "corrupt" in msg


@pytest.mark.parametrize("name", sorted(FILES))
def test_truncated_file(ckpt: Path, name: str) -> None:
    """A truncated file is named."""
    f = ckpt / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert str(f) in error_of(ckpt)


@pytest.mark.parametrize("name", sorted(FILES))
def test_missing_file(ckpt: Path, name: str) -> None:
    """A missing file is named."""
    (ckpt / name).unlink()
    msg = error_of(ckpt)
    assert name in msg and "missing" in msg


def test_missing_manifest(ckpt: Path) -> None:
    """Without manifest.json the directory is not accepted, and the message says what is missing."""
    (ckpt / "manifest.json").unlink()
    assert "manifest.json" in error_of(ckpt)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({name: "sha" for name in FILES}),
                                  json.dumps({"model.safetensors": {"size": 1}})])
def test_damaged_manifest(ckpt: Path, text: str) -> None:
    """A manifest that is not JSON, not an object, or has malformed entries is named."""
    (ckpt / "manifest.json").write_text(text)
    assert "manifest.json" in error_of(ckpt)


def test_foreign_format_tag(ckpt: Path) -> None:
    """A consistent directory whose meta.json names another format is refused, naming meta.json."""
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "format": "someone-elses-checkpoint"}))
    assert "meta.json" in error_of(ckpt)  # caught by the manifest
    rewrite_manifest(ckpt)
    msg = error_of(ckpt)
    assert "meta.json" in msg and "someone-elses-checkpoint" in msg


def test_other_format_version(ckpt: Path) -> None:
    """A checkpoint of another format version is refused, naming both versions."""
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "version": VERSION + 1}))
    rewrite_manifest(ckpt)
    msg = error_of(ckpt)
    assert "meta.json" in msg and str(VERSION + 1) in msg


@pytest.mark.parametrize("name,text", [
    ("config.yaml", "model: [unclosed"),
    ("config.yaml", "- a list\n- not a mapping\n"),
    ("tokenizer.json", '{"version": "1.0"}'),
    ("task.json", "[1, 2, 3]"),
    ("task.json", "{broken"),
    ("meta.json", "null"),
])
def test_unreadable_file_with_a_matching_manifest(ckpt: Path, name: str, text: str) -> None:
    """A file that passes the manifest but cannot be parsed is still named."""
    (ckpt / name).write_text(text)
    rewrite_manifest(ckpt)
    assert name in error_of(ckpt)


def test_nonexistent_path(tmp_path: Path) -> None:
    """A path that does not exist is named."""
    missing = tmp_path / "nowhere"
    assert str(missing) in error_of(missing)


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A file (e.g. the weights themselves) is refused with a hint to pass the directory."""
    f = tmp_path / "model.pt"
    f.write_bytes(b"\0" * 8)
    assert str(f) in error_of(f)


def test_an_empty_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    """An empty directory is refused, naming what is missing."""
    assert "manifest.json" in error_of(tmp_path)


# ----------------------------------------------------------------------------- shapes


def test_weights_of_another_shape_name_every_tensor(ckpt: Path, tokenizer: Tokenizer) -> None:
    """Loading into a different shape lists each mismatched tensor with both shapes."""
    got = load_checkpoint(ckpt)
    other = tiny_model(tokenizer.get_vocab_size(), num_outputs=2, d_ff=64)
    expected = other.state_dict()
    wrong = [k for k, v in expected.items() if got.weights[k].shape != v.shape]
    assert len(wrong) >= 5  # ff weights and biases, head projection
    with pytest.raises(TformerError) as err:
        load_weights(other, got.weights, got.path)
    msg = str(err.value)
    assert str(ckpt) in msg
    for k in wrong:
        assert f"{k}: checkpoint has {tuple(got.weights[k].shape)}, model needs {tuple(expected[k].shape)}" in msg


def test_missing_and_unexpected_tensors_are_named(ckpt: Path, tokenizer: Tokenizer) -> None:
    """A deeper model lacks tensors, a shallower one has extras: both are listed by name."""
    got = load_checkpoint(ckpt)
    deeper = tiny_model(tokenizer.get_vocab_size(), n_layers=2)
    with pytest.raises(TformerError) as err:
        load_weights(deeper, got.weights, got.path)
    assert "missing tensor encoder.layers.1." in str(err.value)
    weights = {**got.weights, "encoder.layers.7.extra": torch.zeros(2, 3)}
    with pytest.raises(TformerError, match=r"unexpected tensor encoder\.layers\.7\.extra \(2, 3\)"):
        load_weights(tiny_model(tokenizer.get_vocab_size()), weights, got.path)


def test_many_mismatches_are_summarised(ckpt: Path, tokenizer: Tokenizer) -> None:
    """A completely different model gives a bounded message that says how many more there are."""
    got = load_checkpoint(ckpt)
    with pytest.raises(TformerError, match=r"\.\.\. and \d+ more"):
        load_weights(tiny_model(tokenizer.get_vocab_size(), d_model=32, n_layers=4, d_ff=64), got.weights, got.path)


# ----------------------------------------------------------------------------- nothing executes


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Sanity check of the tests below: unpickling the payload does create its marker."""
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickled_weights_are_never_unpickled(ckpt: Path, tmp_path: Path, how: str) -> None:
    """A pickle in place of the weights, vouched for by a forged manifest, is refused without running it."""
    marker = tmp_path / "pwned"
    f = ckpt / "model.safetensors"
    if how == "pickle":
        f.write_bytes(pickle.dumps({"encoder.embed.tokens.weight": Payload(marker)}))
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Payload(marker)}, f)
    rewrite_manifest(ckpt)
    msg = error_of(ckpt)
    assert "model.safetensors" in msg
    assert not marker.exists()


def test_yaml_tags_in_config_are_not_executed(ckpt: Path, tmp_path: Path) -> None:
    """A config.yaml carrying a python-object YAML tag is refused without constructing the object."""
    marker = tmp_path / "pwned"
    (ckpt / "config.yaml").write_text(f"seed: 0\nx: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    rewrite_manifest(ckpt)
    assert "config.yaml" in error_of(ckpt)
    assert not marker.exists()


def with_node(cfg: DictConfig, dotted: str, value: Any) -> DictConfig:
    """A plain copy of `cfg` with `value` set at `dotted` (a list index may appear in the path)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    *parents, last = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return OmegaConf.create(data)


TARGET = {"_target_": "os.system", "command": "true"}


@pytest.mark.parametrize("dotted,value", [
    ("_target_", "os.system"),
    ("loss._target_", "os.system"),
    ("loss.class_weights", [1.0, TARGET]),
    ("optim.betas", [TARGET, 0.999]),
    ("data.tokenizer", {**TARGET, "kind": "bpe"}),
    ("model._partial_", True),
    ("trainer._args_", ["rm -rf /"]),
])
def test_stored_config_refuses_targets(cfg: DictConfig, dotted: str, value: Any) -> None:
    """`_target_` (and Hydra's other instantiate keys) anywhere in a stored config is refused, by path."""
    raw = with_node(cfg, dotted, value)
    with pytest.raises(TformerError) as err:
        load_train_config(raw, "ckpt/config.yaml")
    msg = str(err.value)
    assert "ckpt/config.yaml" in msg
    assert any(k in msg for k in ("_target_", "_partial_", "_args_"))


def test_checkpoint_with_a_target_in_its_config(ckpt: Path) -> None:
    """A forged checkpoint config with `_target_` loads as data but never validates as a training config."""
    (ckpt / "config.yaml").write_text((ckpt / "config.yaml").read_text() + "_target_: os.system\n")
    rewrite_manifest(ckpt)
    got = load_checkpoint(ckpt)
    with pytest.raises(TformerError, match="_target_") as err:
        load_train_config(got.config, str(got.path / "config.yaml"))
    assert str(ckpt / "config.yaml") in str(err.value)


@pytest.mark.parametrize("dotted,value,named", [
    ("surprise", 1, "surprise"),
    ("model.widht", 64, "widht"),
    ("trainer.epochs", 3, "epochs"),
    ("loss.gamma", 2.0, "gamma"),  # a focal setting under the ce loss
    ("task.threshold", 0.5, "threshold"),  # a multilabel setting under classify
    ("model.d_model", "big", "d_model"),
])
def test_stored_config_with_unknown_keys_or_bad_types(cfg: DictConfig, dotted: str, value: Any, named: str) -> None:
    """A stored config that does not match the schema is refused, naming the key and the source."""
    with pytest.raises(TformerError) as err:
        load_train_config(with_node(cfg, dotted, value), "ckpt/config.yaml")
    msg = str(err.value)
    assert named in msg and "ckpt/config.yaml" in msg


@pytest.mark.parametrize("dotted,value,named", [
    ("task", "classify", "task"),  # a group flattened to its name
    ("loss", {"label_smoothing": 0.1}, "loss.name"),  # a group without its name
    ("loss.label_smoothing", "high", "loss.label_smoothing"),  # a bad type inside a group's own schema
    ("optim.lr", "${oc.env:TFORMER_TEST_SURELY_UNSET}", "TFORMER_TEST_SURELY_UNSET"),
    ("loss.label_smoothing", "${nowhere.at_all}", "nowhere.at_all"),
])
def test_stored_config_with_a_broken_structure(cfg: DictConfig, dotted: str, value: Any, named: str) -> None:
    """Hand-edited groups and dangling interpolations fail at load, naming the key, not mid-run."""
    with pytest.raises(TformerError) as err:
        load_train_config(with_node(cfg, dotted, value), "ckpt/config.yaml")
    msg = str(err.value)
    assert named in msg and "ckpt/config.yaml" in msg


@pytest.mark.parametrize("group,name", [("task", "summarize"), ("loss", "os.system"), ("optim", "lbfgs")])
def test_stored_config_with_unknown_component(cfg: DictConfig, group: str, name: str) -> None:
    """A component name outside our tables is refused, naming it."""
    with pytest.raises(TformerError, match=f"unknown {group} '{name}'"):
        load_train_config(with_node(cfg, f"{group}.name", name), "ckpt/config.yaml")


def test_stored_config_that_fails_cross_checks(cfg: DictConfig) -> None:
    """A stored config whose loss does not fit its task is refused like a composed one."""
    with pytest.raises(TformerError, match="does not fit"):
        load_train_config(with_node(cfg, "loss", {"name": "mse"}), "ckpt/config.yaml")


def test_stored_config_is_validated_to_full_schema(cfg: DictConfig) -> None:
    """A stored config missing optional keys is filled with defaults, typed like a composed one."""
    data = OmegaConf.to_container(cfg, resolve=True)
    del data["trainer"]["progress"], data["loss"]["label_smoothing"]
    got = load_train_config(OmegaConf.create(data), "ckpt/config.yaml")
    assert got == cfg
    with pytest.raises(ConfigAttributeError):
        got.model.widht = 3  # the result is struct: typos still fail later


# ----------------------------------------------------------------------------- saving under failure, retention


def tiny_checkpoint_parts(compose_train: Callable):
    """A model, config, tokenizer and task state to save (no training)."""
    from transformer_cli.tasks.classify import ClassifyTask

    cfg = compose_train(["model=tiny"])
    tok = train_tokenizer(["a good film", "a bad film"] * 20, TokenizerConfig(vocab_size=50, min_frequency=1))
    task = ClassifyTask(cfg.task, "index", {"labels": ["bad", "good"]})
    return task.build_model(cfg.model, tok.get_vocab_size()), cfg, tok, {**task.state(), "loss_kind": "index"}


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              compose_train: Callable) -> None:
    """ENOSPC mid-save: a clear error, no temporary debris, and the previous checkpoint still loads."""
    model, cfg, tok, task_state = tiny_checkpoint_parts(compose_train)
    target = tmp_path / "ckpt"
    save_checkpoint(target, model, cfg, tok, task_state, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_tokenizer", full)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(TformerError, match="No space left on device"):
        save_checkpoint(target, model, cfg, tok, task_state, {"step": 2})
    assert load_checkpoint(target).meta["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_non_finite_weights_are_never_saved(tmp_path: Path, compose_train: Callable) -> None:
    """save_checkpoint refuses weights holding NaN or inf."""
    model, cfg, tok, task_state = tiny_checkpoint_parts(compose_train)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    with pytest.raises(TformerError, match="non-finite"):
        save_checkpoint(tmp_path / "ckpt", model, cfg, tok, task_state, {"step": 1})
    assert not (tmp_path / "ckpt").exists()


def test_retention_keeps_best_and_newest(tmp_path: Path) -> None:
    """keep_last prunes old step directories but never the target of `best` or `last`."""
    ckpts = CheckpointDir(tmp_path, keep_last=2)

    def fake(path: Path) -> Path:
        path.mkdir()
        (path / "manifest.json").write_text("{}")
        return path

    ckpts.save(1, fake, best=True)
    for step in range(2, 6):
        ckpts.save(step, fake, best=False)
    assert [p.name for p in ckpts.steps()] == ["step-0000001", "step-0000004", "step-0000005"]
    assert os.readlink(tmp_path / "best") == "step-0000001" and os.readlink(tmp_path / "last") == "step-0000005"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
