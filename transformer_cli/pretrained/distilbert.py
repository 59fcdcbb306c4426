"""DistilBERT: its config.json as tformer model settings, its tensor names.

A post-LayerNorm encoder with learned positions (sinusoidal ones are stored as weights too), a LayerNorm
over the embeddings, no token types, and every LayerNorm at eps 1e-12.
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

READ = ("dim", "n_layers", "n_heads", "hidden_dim", "activation", "max_position_embeddings", "pad_token_id",
        "vocab_size", "sinusoidal_pos_embds")
HARMLESS = ("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout", "initializer_range",
            "bos_token_id", "eos_token_id", "tie_word_embeddings")


def architecture(config: ConfigReader) -> dict[str, Any]:
    """tformer's model settings that reproduce a DistilBERT encoder exactly."""
    return {
        "d_model": config.integer("dim"),
        "n_layers": config.integer("n_layers"),
        "n_heads": config.integer("n_heads"),
        "d_ff": config.integer("hidden_dim"),
        "activation": config.choice("activation", ACTIVATIONS),
        "norm": "post",
        "positional": "learned",  # sinusoidal_pos_embds=true: the table is in the weights all the same
        "max_positions": config.integer("max_position_embeddings"),
        "embed_scale": False,
        "embed_norm": True,
        "type_vocab_size": 0,
        "position_offset": 0,
        "norm_eps": 1e-12,
        "pad_id": int(config.get("pad_token_id", 0)),
    }


EMBEDDINGS = {
    "embed.tokens.weight": ("embeddings.word_embeddings.weight",),
    "embed.positions.weight": ("embeddings.position_embeddings.weight",),
    "embed.norm.weight": ("embeddings.LayerNorm.weight",),
    "embed.norm.bias": ("embeddings.LayerNorm.bias",),
}
LAYER = {  # tformer's modules in a layer -> DistilBERT's (the fused query/key/value projection is made of three)
    "attn.qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
    "attn.out": ("attention.out_lin",),
    "norm1": ("sa_layer_norm",),
    "ff.up": ("ffn.lin1",),
    "ff.down": ("ffn.lin2",),
    "norm2": ("output_layer_norm",),
}
weight_names = partial(layered_names, EMBEDDINGS, "transformer.layer.{i}.", LAYER)


def hf_config(model: Any, head_dropout: float) -> dict[str, Any]:
    """The config.json keys of a DistilBERT with tformer's model settings (the inverse of architecture)."""
    return {"seq_classif_dropout": head_dropout, "vocab_size": model.vocab_size, "dim": model.d_model,
            "n_layers": model.n_layers, "n_heads": model.n_heads, "hidden_dim": model.d_ff,
            "activation": ACTIVATION_NAMES[model.activation], "dropout": model.dropout,
            "attention_dropout": model.attn_dropout,
            "max_position_embeddings": model.max_positions, "pad_token_id": model.pad_id,
            "sinusoidal_pos_embds": False}
