"""A run's config and model made ready for a pretrained encoder: its settings filled in, its weights loaded.

The model presets (model=pretrained, hub, minilm) leave the architecture null: the directory's
config.json decides it. A value the user gave anyway must agree with it (it is an error otherwise, never
silently replaced). The completed config is what the run stores, so its checkpoints rebuild the model
without the directory; a resumed run takes these settings from its checkpoint instead.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

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
from transformer_cli.validate import ARCHITECTURE, check_train_config

log = logging.getLogger("tformer")


def start_from(cfg: DictConfig, dist: Dist = SINGLE) -> tuple[DictConfig, Pretrained | None]:
    """The config completed with the pretrained model it starts from, and that model (None: from scratch).

    With several processes rank 0 downloads or unpacks the model first; the others then read the cache."""
    if cfg.model.source is None:
        return cfg, None
    with dist.main_first():
        pretrained = open_pretrained(locate(cfg.model))
    cfg = resolve(cfg, pretrained)
    check_train_config(cfg)
    return cfg, pretrained


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


def adopt(cfg: DictConfig, saved: DictConfig) -> DictConfig:
    """The config with a checkpoint's pretrained settings in `model` (resuming needs no model directory)."""
    out = copy.deepcopy(cfg)
    for key in SETTINGS:
        out.model[key] = _settled(cfg.model, key, saved.model[key], "the checkpoint's config.yaml")
    if cfg.data.tokenizer.max_length is None:  # the model's own length, as the run found it
        out.data.tokenizer.max_length = saved.data.tokenizer.max_length
    return out


SETTINGS = (*ARCHITECTURE, "vocab_size", "sep_id")  # what a pretrained model's directory decides


def _settled(model: DictConfig, key: str, value: Any, source: str) -> Any:
    """The pretrained value where the setting is unset (null); a different given value is an error."""
    if model[key] is None or model[key] == value:
        return value
    raise TformerError(f"model.{key}={model[key]!r}, but the pretrained model has {value!r} ({source})",
                       hint=f"drop the model.{key} override: a pretrained encoder keeps its architecture")


def pretrained_tokenizer(pretrained: Pretrained, max_length: int) -> Tokenizer:
    """The model's own tokenizer, truncating at `max_length` and padding nothing (batches pad themselves)."""
    tokenizer = Tokenizer.from_str(pretrained.tokenizer.to_str())
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


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
