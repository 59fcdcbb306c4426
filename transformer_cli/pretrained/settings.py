"""A run's config and model made ready for a pretrained encoder: its settings filled in, its weights loaded.

The model presets (model=pretrained, hub, minilm) leave the architecture null: the directory's
config.json decides it. A value the user gave anyway must agree with it (it is an error otherwise, never
silently replaced). The completed config is what the run stores, so its checkpoints rebuild the model
without the directory; a resumed run takes these settings from its checkpoint instead.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig
from tokenizers import Tokenizer
from torch import nn

from transformer_cli.distributed import SINGLE, Dist
from transformer_cli.errors import TformerError
from transformer_cli.model import SequenceModel
from transformer_cli.pretrained.directory import (
    Pretrained,
    encoder_names,
    has_tensors,
    open_pretrained,
    read_tensors,
)
from transformer_cli.pretrained.source import locate
from transformer_cli.restore import Restored, restore
from transformer_cli.validate import ARCHITECTURE, check_train_config

log = logging.getLogger("tformer")


@dataclass
class Start:
    """Where a new model's weights start from: a pretrained model's directory, or an earlier run's checkpoint."""

    description: str  # what it is, for the log and `tformer plan`
    tokenizer: Tokenizer  # its tokenizer, as it is (the run sets its own truncation)
    load: Callable[[nn.Module], None]  # copies its encoder (and what else fits) into the new model


def start_from(cfg: DictConfig, dist: Dist = SINGLE) -> tuple[DictConfig, Start | None]:
    """The config completed with what the model starts from (model.init_from, or a pretrained model), and that
    start (None: from scratch).

    With several processes rank 0 downloads or unpacks a pretrained model first; the others then read the cache."""
    if cfg.model.init_from:
        path = Path(str(cfg.model.init_from)).expanduser()
        if not path.exists():
            raise TformerError(f"model.init_from={cfg.model.init_from}: no such run or checkpoint directory",
                               hint="give an earlier run's directory (outputs/train/<date>/<time>_...) or one of "
                                    "its checkpoints/<name> directories")
        restored = restore(path)
        cfg = adopt(cfg, restored.config, f"{restored.path / 'config.yaml'} (model.init_from)")
        check_train_config(cfg)
        return cfg, Start(f"the encoder of {restored.path} (a {restored.config.task.name} run)", restored.tokenizer,
                          partial(copy_encoder, restored))
    if cfg.model.source is None:
        return cfg, None
    with dist.main_first():
        pretrained = open_pretrained(locate(cfg.model))
    cfg = resolve(cfg, pretrained)
    check_train_config(cfg)
    return cfg, Start(f"pretrained {pretrained.settings['family']} from {pretrained.path}", pretrained.tokenizer,
                      partial(load_pretrained_weights, pretrained=pretrained))


def resolve(cfg: DictConfig, pretrained: Pretrained) -> DictConfig:
    """The config with the pretrained encoder's settings in `model` (a differing given value is an error)."""
    out = copy.deepcopy(cfg)  # the caller's config stays as composed
    for key, value in pretrained.settings.items():
        out.model[key] = _settled(cfg.model, key, value, str(pretrained.path / "config.json"))
    longest = pretrained.settings["max_positions"] - pretrained.settings["position_offset"]
    own = min(pretrained.max_length or longest, longest)  # its tokenizer's truncation, within its positions
    if cfg.data.tokenizer.max_length is None:
        out.data.tokenizer.max_length = own  # the model's own length, unless the run asks for another
    elif cfg.data.tokenizer.max_length > own:
        log.info("data.tokenizer.max_length=%d is longer than the %d the model's tokenizer truncates at",
                 cfg.data.tokenizer.max_length, own)
    return out


def adopt(cfg: DictConfig, saved: DictConfig, source: str = "the checkpoint's config.yaml") -> DictConfig:
    """The config with a checkpoint's model settings and tokenizer in place: a resumed run, or a run that starts
    from an earlier one's encoder (model.init_from). Neither needs a model directory."""
    out = copy.deepcopy(cfg)
    for key in SETTINGS:
        out.model[key] = _settled(cfg.model, key, saved.model[key], source)
    for key in TOKENIZER:  # the checkpoint's tokenizer is the one used, whatever settings this run has
        if cfg.data.tokenizer[key] != saved.data.tokenizer[key]:
            log.info("data.tokenizer.%s=%r is not used: the tokenizer of %s was made with %r", key,
                     cfg.data.tokenizer[key], source, saved.data.tokenizer[key])
        out.data.tokenizer[key] = saved.data.tokenizer[key]
    if cfg.data.tokenizer.max_length is None:  # the model's own length, as the run found it
        out.data.tokenizer.max_length = saved.data.tokenizer.max_length
    return out


SETTINGS = (*ARCHITECTURE, "vocab_size", "sep_id")  # what a pretrained model's directory decides
TOKENIZER = ("kind", "vocab_size", "min_frequency", "lowercase")  # what made a stored tokenizer


def _settled(node: DictConfig, key: str, value: Any, source: str, prefix: str = "model") -> Any:
    """The pretrained value where the setting is unset (null); a different given value is an error."""
    if node[key] is None or node[key] == value:
        return value
    raise TformerError(f"{prefix}.{key}={node[key]!r}, but the model it starts from has {value!r} ({source})",
                       hint=f"drop the {prefix}.{key} override, or choose the same model preset as that model: it "
                            "keeps its architecture and tokenizer")


def truncating(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """A copy of a tokenizer, truncating at `max_length` and padding nothing (batches pad themselves)."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def copy_encoder(restored: Restored, model: nn.Module) -> None:
    """Copy an earlier run's encoder into `model.encoder`, tensor by tensor (a mismatch names the tensor)."""
    theirs, ours = restored.model.encoder.state_dict(), model.encoder.state_dict()
    problems = [f"{k}: {tuple(theirs[k].shape)} there, {tuple(v.shape)} here" for k, v in ours.items()
                if k in theirs and theirs[k].shape != v.shape]
    problems += [f"{k} is missing there" for k in ours if k not in theirs]
    if problems:
        raise TformerError(f"the encoder of {restored.path} does not fit this model: {'; '.join(problems[:5])}",
                           hint="use the same model settings as that run")
    model.encoder.load_state_dict(theirs)
    log.info("encoder weights from %s (%s run, step %s)", restored.path, restored.config.task.name,
             restored.checkpoint.meta.get("step"))


def load_pretrained_weights(model: nn.Module, pretrained: Pretrained) -> None:
    """Copy the pretrained encoder into `model.encoder` (and BERT's pooler into a first-token head's dense layer)."""
    settings = pretrained.settings
    state = read_tensors(pretrained, encoder_names(pretrained.family, settings))
    model.encoder.load_state_dict(state, strict=True)
    if isinstance(model, SequenceModel) and pretrained.family.pooler and model.head.pooling == "cls":
        pooler = {ours: (theirs,) for ours, theirs in pretrained.family.pooler.items()}
        if has_tensors(pretrained, pooler):
            model.head.load_state_dict(read_tensors(pretrained, pooler), strict=False)
        else:  # saved without its pooler: the head's dense layer starts fresh
            log.info("%s has no pooler weights; the head's dense layer starts fresh", pretrained.weights)
    log.info("encoder weights from %s (%s, %d layers, d_model %d)", pretrained.path, settings["family"],
             settings["n_layers"], settings["d_model"])
