"""Checks of a composed or stored config that span groups and need the component tables.

It sits above the tables (tasks, losses, optimizers, schedules) and config.py's schemas: it stores every
schema in Hydra's ConfigStore so that YAML is checked at compose time, checks what a dataclass cannot
express (the loss fits the task, the monitored metric exists, sizes agree), and validates configs read
back from checkpoints, refusing anything that could make tformer import or call code.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transformer_cli.config import (
    DataConfig,
    EvalConfig,
    ExportConfig,
    LoggerConfig,
    ModelConfig,
    PredictConfig,
    TrainConfig,
    TrainerConfig,
)
from transformer_cli.errors import TformerError, choose
from transformer_cli.losses import LOSSES
from transformer_cli.optim import OPTIMIZERS, SCHEDULES
from transformer_cli.tasks import TASKS, monitor_of, target_kind

# The swappable groups: their node's `name` picks a schema from these tables.
GROUP_TABLES: dict[str, dict[str, Any]] = {"task": TASKS, "loss": LOSSES, "optim": OPTIMIZERS, "schedule": SCHEDULES}


# The fixed groups: one schema each, whatever the option.
FIXED_SCHEMAS: dict[str, type] = {"model": ModelConfig, "trainer": TrainerConfig, "data": DataConfig,
                                  "logger": LoggerConfig}


def schema_of(group: str, name: str | None) -> type | None:
    """The dataclass that checks an option of `group` (named `name` in a swappable group), if it has one."""
    if group in FIXED_SCHEMAS:
        return FIXED_SCHEMAS[group]
    table = GROUP_TABLES.get(group)
    return table[name].schema if table is not None and name in table else None


# Model settings a pretrained model's config.json decides; the presets leave them null until it is read.
ARCHITECTURE = ("family", "d_model", "n_layers", "n_heads", "d_ff", "activation", "norm", "positional",
                "max_positions", "embed_scale", "embed_norm", "type_vocab_size", "position_offset", "norm_eps",
                "pad_id")


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore; the YAML files name them in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    for group, table in GROUP_TABLES.items():
        for name, spec in table.items():
            cs.store(group=f"schema/{group}", name=name, node=spec.schema)


def check_train_config(cfg: DictConfig) -> None:
    """Cross-group checks that a dataclass cannot express: loss fits task, metric exists, sizes agree.

    A pretrained model's architecture is read from its directory later (pretrained/settings.py); until then
    its settings are null and only the rest is checked here."""
    _refuse_targets(OmegaConf.to_container(cfg, resolve=False), "the config", "", interpolations=True)
    if target_kind(cfg.task.name, cfg.loss.name) == "span":  # the loss fits the task
        _check_span_loss(cfg.loss)
    monitor_of(cfg.task.name, cfg.trainer.monitor)  # the monitored metric is one of the task's
    if OmegaConf.select(cfg.task, "copy_attention", default=False) and not cfg.task.shared_vocab:
        raise TformerError("task.copy_attention=true copies source tokens into the target, so both need one vocabulary",
                           hint="add task.shared_vocab=true (the target side then uses the source tokenizer)")
    _check_pretrained(cfg)
    if cfg.model.source is None or cfg.model.d_model is not None:
        _check_model(cfg)
    _check_choice("data.source", cfg.data.source, ("builtin", "local", "hub"))
    _check_choice("trainer.precision", cfg.trainer.precision, ("auto", "fp32", "bf16", "fp16"))
    _check_choice("trainer.nan_policy", cfg.trainer.nan_policy, ("error", "skip", "off"))
    if cfg.trainer.max_steps < 0 and cfg.trainer.max_epochs <= 0:
        raise TformerError("training has no end: trainer.max_steps=-1 and trainer.max_epochs<=0",
                           hint="set trainer.max_epochs or trainer.max_steps to a positive number")
    for key in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
        if cfg.trainer[key] <= 0:
            raise TformerError(f"trainer.{key} must be positive, got {cfg.trainer[key]}")
    if cfg.trainer.max_tokens < 0:
        raise TformerError(f"trainer.max_tokens must be 0 (off) or positive, got {cfg.trainer.max_tokens}")


def _check_span_loss(loss: DictConfig) -> None:
    """A loss over positions (qa's start and end) has no classes to weight, and smoothing would spread mass over
    the positions that cannot hold an answer: both are refused."""
    if OmegaConf.select(loss, "label_smoothing", default=0.0):
        raise TformerError(f"loss.label_smoothing={loss.label_smoothing} does not apply to answer spans",
                           hint="leave loss.label_smoothing at 0 for task=qa")
    if OmegaConf.select(loss, "class_weights", default=None) is not None:
        raise TformerError("loss.class_weights does not apply to answer spans (positions are not classes)",
                           hint="leave loss.class_weights at null for task=qa")


def _check_model(cfg: DictConfig) -> None:
    """The model's sizes and switches agree with each other and with the tokenizer's length."""
    m = cfg.model
    unset = [k for k in ARCHITECTURE if m[k] is None]
    if cfg.data.tokenizer.max_length is None:
        unset.append("data.tokenizer.max_length")
    if unset:
        name = unset[0] if "." in unset[0] else f"model.{unset[0]}"
        raise TformerError(f"{name} is null", hint="set it, or start from a pretrained model (model=pretrained)")
    if m.d_model % m.n_heads:
        raise TformerError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}",
            hint="pick n_heads that divides d_model (e.g. 4 or 8)",
        )
    _check_choice("model.norm", m.norm, ("pre", "post"))
    _check_choice("model.positional", m.positional, ("sinusoidal", "learned"))
    _check_choice("model.activation", m.activation, ("gelu", "gelu_tanh", "relu"))
    _check_choice("model.family", m.family, ("tformer", "bert", "roberta", "distilbert"))
    longest = cfg.data.tokenizer.max_length + m.position_offset
    if longest > m.max_positions:
        raise TformerError(
            f"data.tokenizer.max_length={cfg.data.tokenizer.max_length}"
            + (f" (+ {m.position_offset}, where this model's positions start)" if m.position_offset else "")
            + f" exceeds model.max_positions={m.max_positions}",
            hint="lower the one or raise the other",
        )
    if not 0 <= m.freeze_layers <= m.n_layers:
        raise TformerError(f"model.freeze_layers={m.freeze_layers} is not between 0 and model.n_layers={m.n_layers}")


def _check_pretrained(cfg: DictConfig) -> None:
    """A pretrained model brings its own tokenizer, and a model trained from scratch trains one."""
    m, kind = cfg.model, cfg.data.tokenizer.kind
    if m.source is None:
        _check_choice("data.tokenizer.kind", kind, ("bpe", "wordpiece", "pretrained") if m.init_from else
                      ("bpe", "wordpiece"))
        if m.freeze_layers and not m.init_from:
            raise TformerError("model.freeze_layers needs pretrained weights (model=pretrained, hub or minilm, or "
                               "model.init_from)")
        return
    _check_choice("model.source", m.source, ("local", "hub", "builtin"))
    if kind != "pretrained":
        raise TformerError(f"data.tokenizer.kind={kind} with a pretrained model: it is used with its own tokenizer",
                           hint="data.tokenizer.kind=pretrained (model=pretrained, hub and minilm set it)")
    needed = {"local": "path", "hub": "name", "builtin": "name"}[m.source]
    if not m[needed]:
        raise TformerError(f"model.source={m.source} needs model.{needed}",
                           hint="e.g. model=pretrained model.path=DIR, model=hub model.name=bert-base-uncased")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """Fail when a string option is not one of its allowed values."""
    if value not in allowed:
        raise TformerError(f"{key}='{value}' is not allowed", hint=f"choose one of: {', '.join(allowed)}")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """A resolved, JSON-serialisable copy of a config."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def load_train_config(raw: DictConfig, source: str) -> DictConfig:
    """Validate a stored training config (e.g. from a checkpoint) against every schema, refusing `_target_`."""
    _refuse_targets(OmegaConf.to_container(raw, resolve=False), source, "")
    prefix = ""  # errors from a group's own schema carry keys relative to that group
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), raw)
        for group, table in GROUP_TABLES.items():
            node = raw[group]
            if not isinstance(node, DictConfig):
                raise TformerError(f"the config in {source} has {group}: {node!r}; it must be a mapping with a name",
                                   hint="it was written by another version of tformer, or edited by hand")
            spec = choose(table, str(node.name), group)
            prefix = f"{group}."
            cfg[group] = OmegaConf.merge(OmegaConf.structured(spec.schema), node)
            prefix = ""
        OmegaConf.resolve(cfg)  # a hand-written ${...} fails here, by key, rather than mid-run
    except OmegaConfBaseException as err:
        key = f" at {prefix}{err.full_key}" if getattr(err, "full_key", None) else ""
        raise TformerError(f"the config in {source} does not match tformer's schema{key}: {err}".splitlines()[0],
                           hint="it was written by another version of tformer, or edited by hand") from err
    check_train_config(cfg)
    return cfg


def _refuse_targets(node: Any, source: str, path: str, interpolations: bool = False) -> None:
    """Fail on any `_target_`-style key: tformer never imports or calls a path named by a config.

    Interpolations are refused too unless allowed: a stored (resolved) config never holds one."""
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key) in ("_target_", "_partial_", "_recursive_", "_args_"):
                raise TformerError(f"{source} contains '{path}{key}': tformer never imports or calls code "
                                   "named in a config", hint="remove that key; components are chosen by name")
            _refuse_targets(value, source, f"{path}{key}.", interpolations)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_targets(value, source, f"{path}{i}.", interpolations)
    elif isinstance(node, str) and "${" in node and not interpolations:
        # tformer stores configs resolved; an interpolation here was written by hand.
        raise TformerError(f"{source} contains an interpolation at '{path.rstrip('.')}': {node!r}",
                           hint="stored configs must hold plain values")
