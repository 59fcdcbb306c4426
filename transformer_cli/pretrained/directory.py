"""A Hugging Face model directory, read and checked before anything is built from it.

config.json is parsed as JSON and must describe a model_type of the family table, with no key tformer
does not know; tokenizer.json is read by `tokenizers`; model.safetensors' header must list every tensor
the encoder needs, in the shape its config implies, before a single weight is read. Pickled weights
(pytorch_model.bin) are refused, and no file of the directory is ever imported or executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from transformer_cli.config import ModelConfig
from transformer_cli.errors import TformerError
from transformer_cli.pretrained import FAMILIES, Family
from transformer_cli.pretrained.common import ConfigReader

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
UNSAFE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
MAX_CONFIG_BYTES = 1 << 20  # a model config is a few hundred bytes; anything this large is not one
FILES = (CONFIG, TOKENIZER, "tokenizer_config.json", "special_tokens_map.json", WEIGHTS)  # what a model needs


@dataclass
class Pretrained:
    """A checked model directory: its family, the tformer model settings it implies, its tokenizer."""

    path: Path
    family: Family
    settings: dict[str, Any]  # ModelConfig values that reproduce the encoder
    tokenizer: Tokenizer  # as the directory gives it, without padding or truncation
    max_length: int | None  # the truncation length its tokenizer.json sets, if any
    prefix: str  # what precedes the encoder's tensor names in model.safetensors ("" or e.g. "bert.")

    @property
    def weights(self) -> Path:
        """The safetensors file."""
        return self.path / WEIGHTS


def open_pretrained(path: Path) -> Pretrained:
    """Read and check a model directory: config, tokenizer and the weights' names and shapes."""
    if not path.is_dir():
        raise TformerError(f"model.path={path} is not a directory",
                           hint="point model.path at a folder holding config.json, model.safetensors and "
                                "tokenizer.json (a Hugging Face model saved with save_pretrained)")
    config = _read_config(path / CONFIG)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise TformerError(f"{path / CONFIG}: model_type {model_type!r} is not supported",
                           hint=f"supported model types: {', '.join(FAMILIES)}")
    family = FAMILIES[model_type]
    reader = ConfigReader(config, path / CONFIG, model_type, family.known_keys)
    settings = {**family.architecture(reader), "family": model_type, "vocab_size": reader.integer("vocab_size")}
    tokenizer, max_length = _read_tokenizer(path / TOKENIZER)
    if tokenizer.get_vocab_size() > settings["vocab_size"]:
        raise TformerError(f"{path / TOKENIZER} has {tokenizer.get_vocab_size():,} tokens, more than the "
                           f"{settings['vocab_size']:,} rows of the model's embeddings ({path / CONFIG})")
    settings["sep_id"] = _separator(tokenizer, family, path) if settings["type_vocab_size"] > 1 else None
    prefix = _check_weights(path, family, settings)
    return Pretrained(path, family, settings, tokenizer, max_length, prefix)


def _read_config(path: Path) -> dict[str, Any]:
    """config.json as a JSON object (never as code)."""
    if not path.is_file():
        raise TformerError(f"{path} is missing: a Hugging Face model directory starts with its config",
                           hint="save the model with save_pretrained, or point model.path at the right folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise TformerError(f"{path} is {path.stat().st_size:,} bytes: too large to be a model config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise TformerError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise TformerError(f"{path} does not hold a JSON object")
    if "auto_map" in data or data.get("trust_remote_code"):
        raise TformerError(f"{path} asks for custom model code (auto_map): tformer never runs code from a model "
                           "directory", hint=f"use a standard model of one of these types: {', '.join(FAMILIES)}")
    return data


def _read_tokenizer(path: Path) -> tuple[Tokenizer, int | None]:
    """tokenizer.json, with its own padding and truncation switched off (tformer pads per batch)."""
    if not path.is_file():
        raise TformerError(f"{path} is missing: tformer uses the model's own tokenizer as it is",
                           hint="save the tokenizer too (tokenizer.save_pretrained(DIR) with a fast tokenizer)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exceptions for malformed files
        raise TformerError(f"cannot read {path}: {err}") from err
    truncation = tokenizer.truncation
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, (int(truncation["max_length"]) if truncation else None)


def _separator(tokenizer: Tokenizer, family: Family, path: Path) -> int:
    """The id of the separator after a pair's first text; the second segment's token types start after it."""
    sep = tokenizer.token_to_id(family.sep_token)
    if sep is None:
        raise TformerError(f"{path / TOKENIZER} has no {family.sep_token} token, which marks where the second "
                           "text of a pair starts")
    return sep


def _check_weights(path: Path, family: Family, settings: dict[str, Any]) -> str:
    """Every tensor the encoder needs is in model.safetensors with the right shape; returns their name prefix."""
    weights = _weights_file(path)
    expected = encoder_shapes(settings)
    names = encoder_names(family, settings)
    with _open_safetensors(weights) as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    prefix = _prefix(shapes, [t for theirs in names.values() for t in theirs], family, weights)
    for ours, theirs in names.items():
        parts = [shapes[prefix + t] for t in theirs]
        rows = sum(p[0] for p in parts)
        if any(p[1:] != expected[ours][1:] for p in parts) or rows != expected[ours][0]:
            shown = " + ".join(f"{prefix + t} {p}" for t, p in zip(theirs, parts))
            raise TformerError(f"{weights}: {shown} does not fit the model its config describes, which needs "
                               f"{expected[ours]} there ({path / CONFIG})",
                               hint="the weights and config.json come from different models")
    return prefix


def encoder_shapes(settings: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every encoder tensor the settings imply (built on the meta device: nothing allocated)."""
    from transformer_cli.model import Encoder

    with torch.device("meta"):
        encoder = Encoder(settings["vocab_size"], ModelConfig(**settings))
    return {name: tuple(t.shape) for name, t in encoder.state_dict().items()}


def _weights_file(path: Path) -> Path:
    """model.safetensors; pickled formats are refused with a way to convert them."""
    weights = path / WEIGHTS
    if weights.is_file():
        return weights
    unsafe = [name for name in UNSAFE_WEIGHTS if (path / name).exists()]
    if unsafe:
        raise TformerError(
            f"{path / unsafe[0]} is not in safetensors format; tformer loads weights only from {WEIGHTS} (a "
            "pickled file can run code when it is read)",
            hint="convert it once where you trust the file: python -c \"import torch; from safetensors.torch "
                 f"import save_file; save_file(torch.load('{path / unsafe[0]}', weights_only=True), "
                 f"'{weights}')\" (or save_pretrained with a recent transformers)")
    if (path / f"{WEIGHTS}.index.json").exists():
        raise TformerError(f"{path} holds weights sharded over several files; tformer reads one {WEIGHTS}",
                           hint="save the model with a larger max_shard_size so that it fits in one file")
    raise TformerError(f"{weights} is missing", hint="save the model with save_pretrained into this directory")


def _open_safetensors(path: Path) -> Any:
    """safetensors' reader over one file, with a clear error for a truncated or corrupt one."""
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise TformerError(f"cannot read {path}: {err}", hint="the file is truncated or corrupt; copy it again") \
            from err


def encoder_names(family: Family, settings: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each tensor of the encoder the settings describe -> the family's tensors it is made of."""
    names = family.weight_names(settings["n_layers"])
    ours = encoder_shapes(settings)
    missing = set(ours) - set(names)
    if missing:  # the family table and the encoder disagree: a bug, not a user's mistake
        raise AssertionError(f"no pretrained name for encoder tensors {sorted(missing)}")
    return {k: v for k, v in names.items() if k in ours}


def _prefix(shapes: dict[str, tuple[int, ...]], needed: list[str], family: Family, weights: Path) -> str:
    """"" for a base model's file, or the family's prefix for a task model's; missing tensors are named."""
    for prefix in ("", family.prefix):
        if all(prefix + t in shapes for t in needed):
            return prefix
    missing = [t for t in needed if t not in shapes and family.prefix + t not in shapes]
    raise TformerError(f"{weights} lacks {len(missing)} tensor(s) the encoder needs, e.g. {', '.join(missing[:3])}",
                       hint="the file is not the weights of the model its config.json describes")


def read_tensors(pretrained: Pretrained, names: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """Our tensor name -> its value from model.safetensors (parts concatenated along rows), in float32."""
    with _open_safetensors(pretrained.weights) as f:
        return {ours: torch.cat([f.get_tensor(pretrained.prefix + t) for t in theirs]).float()
                for ours, theirs in names.items()}


def has_tensors(pretrained: Pretrained, names: dict[str, tuple[str, ...]]) -> bool:
    """Whether model.safetensors holds every tensor named (after the file's prefix)."""
    with _open_safetensors(pretrained.weights) as f:
        present = set(f.keys())
    return all(pretrained.prefix + t in present for theirs in names.values() for t in theirs)
