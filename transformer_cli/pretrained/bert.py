"""BERT and RoBERTa (MiniLM is a BERT): their config.json as tformer model settings, their tensor names.

Both are post-LayerNorm encoders with learned absolute positions, token-type embeddings and a LayerNorm
over the embeddings, and both name their tensors alike. RoBERTa differs in two settings read from its
config: its positions count real tokens from padding_idx + 1, and it has a single token type.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from transformer_cli.pretrained.common import (
    ACTIVATION_NAMES,
    ACTIVATIONS,
    ConfigReader,
    layered_names,
)

# config.json keys these families read, and keys of Hugging Face's generic config that change nothing here.
READ = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "vocab_size",
        "position_embedding_type", "is_decoder", "add_cross_attention")
HARMLESS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "initializer_range",
            "bos_token_id", "eos_token_id", "use_cache", "gradient_checkpointing", "tie_word_embeddings")


def architecture(config: ConfigReader, roberta: bool) -> dict[str, Any]:
    """tformer's model settings that reproduce a BERT (or RoBERTa) encoder exactly."""
    config.require("position_embedding_type", "absolute", default="absolute")
    config.require("is_decoder", False, default=False)
    config.require("add_cross_attention", False, default=False)
    pad = int(config.get("pad_token_id", 1 if roberta else 0))
    return {
        "d_model": config.integer("hidden_size"),
        "n_layers": config.integer("num_hidden_layers"),
        "n_heads": config.integer("num_attention_heads"),
        "d_ff": config.integer("intermediate_size"),
        "activation": config.choice("hidden_act", ACTIVATIONS),
        "norm": "post",
        "positional": "learned",
        "max_positions": config.integer("max_position_embeddings"),
        "embed_scale": False,
        "embed_norm": True,
        "type_vocab_size": config.integer("type_vocab_size", 1 if roberta else 2),
        "position_offset": pad + 1 if roberta else 0,  # RoBERTa: positions padding_idx+1, +2, ... of real tokens
        "norm_eps": float(config.get("layer_norm_eps", 1e-5 if roberta else 1e-12)),
        "pad_id": pad,
    }


EMBEDDINGS = {
    "embed.tokens.weight": ("embeddings.word_embeddings.weight",),
    "embed.positions.weight": ("embeddings.position_embeddings.weight",),
    "embed.types.weight": ("embeddings.token_type_embeddings.weight",),
    "embed.norm.weight": ("embeddings.LayerNorm.weight",),
    "embed.norm.bias": ("embeddings.LayerNorm.bias",),
}
LAYER = {  # tformer's modules in a layer -> BERT's (the fused query/key/value projection is made of three)
    "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn.out": ("attention.output.dense",),
    "norm1": ("attention.output.LayerNorm",),
    "ff.up": ("intermediate.dense",),
    "ff.down": ("output.dense",),
    "norm2": ("output.LayerNorm",),
}
weight_names = partial(layered_names, EMBEDDINGS, "encoder.layer.{i}.", LAYER)

POOLER = {"dense.weight": "pooler.dense.weight", "dense.bias": "pooler.dense.bias"}  # head tensor -> BERT's


def hf_config(model: Any, head_dropout: float, roberta: bool) -> dict[str, Any]:
    """The config.json keys of a BERT (or RoBERTa) with tformer's model settings (the inverse of architecture)."""
    out = {"classifier_dropout": head_dropout,
        "vocab_size": model.vocab_size, "hidden_size": model.d_model, "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads, "intermediate_size": model.d_ff,
        "hidden_act": ACTIVATION_NAMES[model.activation], "hidden_dropout_prob": model.dropout,
        "attention_probs_dropout_prob": model.attn_dropout, "max_position_embeddings": model.max_positions,
        "type_vocab_size": model.type_vocab_size, "layer_norm_eps": model.norm_eps, "pad_token_id": model.pad_id,
        "position_embedding_type": "absolute",
    }
    if roberta:
        out.update(bos_token_id=0, eos_token_id=2)
    return out
