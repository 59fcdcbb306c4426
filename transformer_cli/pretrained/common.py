"""Reading a Hugging Face config.json as data: typed, checked values, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_cli.errors import TformerError

# Hugging Face activation names -> tformer's model.activation (the same function, not an approximation of it).
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "relu": "relu"}
# Keys of Hugging Face's generic model config that describe the file, not the computation.
# tformer's model.activation -> the Hugging Face name written on export.
ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
GENERIC = ("_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
           "id2label", "label2id", "num_labels", "problem_type", "return_dict", "output_attentions",
           "output_hidden_states", "is_encoder_decoder", "chunk_size_feed_forward", "output_past",
           "finetuning_task", "_attn_implementation_autoset", "pruned_heads", "torchscript", "use_return_dict")
NOT_ALLOWED = object()


class ConfigReader:
    """The values of one config.json; every read is checked, and unknown keys are refused up front."""

    def __init__(self, data: dict[str, Any], path: Path, family: str, known: tuple[str, ...]) -> None:
        self.data, self.path, self.family = data, path, family
        unknown = sorted(set(data) - set(known) - set(GENERIC))
        if unknown:
            raise TformerError(
                f"{path} has key(s) tformer does not know for a {family} model: {', '.join(unknown)}; they may "
                "change what the model computes, so it is not loaded",
                hint="remove the key(s) from config.json if they do not change the architecture")

    def get(self, key: str, default: Any = NOT_ALLOWED) -> Any:
        """A value, or `default` when the key is absent (absent without a default is an error)."""
        if key in self.data:
            return self.data[key]
        if default is NOT_ALLOWED:
            raise TformerError(f"{self.path} has no '{key}', which a {self.family} model needs",
                               hint="the file is incomplete or not a Hugging Face model config")
        return default

    def integer(self, key: str, default: Any = NOT_ALLOWED) -> int:
        """A positive integer value."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TformerError(f"{self.path}: '{key}' must be a positive integer, got {value!r}")
        return value

    def choice(self, key: str, table: dict[str, str]) -> str:
        """A value that must be one of the table's keys; the table's value for it."""
        value = self.get(key)
        if value not in table:
            raise TformerError(f"{self.path}: {key}={value!r} is not supported",
                               hint=f"supported: {', '.join(table)}")
        return table[value]

    def require(self, key: str, expected: Any, default: Any) -> None:
        """Refuse a value that would make the model compute something tformer does not reproduce."""
        value = self.get(key, default)
        if value != expected:
            raise TformerError(f"{self.path}: {key}={value!r} is not supported (tformer reproduces {expected!r})",
                               hint="choose a checkpoint with the standard architecture")


def layered_names(embeddings: dict[str, tuple[str, ...]], layer: str, layers: dict[str, tuple[str, ...]],
                 n_layers: int) -> dict[str, tuple[str, ...]]:
    """tformer encoder tensor -> the family's tensors it is made of (several: concatenated along rows).

    `embeddings` names whole tensors; `layers` names each layer's modules (tformer's -> theirs, with `layer`,
    e.g. "encoder.layer.{i}.", before them), each with a weight and a bias."""
    names = dict(embeddings)
    for i in range(n_layers):
        for ours, theirs in layers.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = tuple(f"{layer.format(i=i)}{t}.{kind}" for t in theirs)
    return names
