"""DistilBERT: its config.json as tformer model settings, its tensor names.

A post-LayerNorm encoder with learned positions (sinusoidal ones are stored as weights too), a LayerNorm
over the embeddings, no token types, and every LayerNorm at eps 1e-12.
"""

from __future__ import annotations

from typing import Any

from transformer_cli.pretrained.common import (
    ACTIVATION_NAMES,
    ACTIVATIONS,
    ConfigReader,
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


def weight_names(n_layers: int) -> dict[str, tuple[str, ...]]:
    """tformer encoder tensor -> the DistilBERT tensors it is made of (several: concatenated along rows)."""
    names: dict[str, tuple[str, ...]] = {
        "embed.tokens.weight": ("embeddings.word_embeddings.weight",),
        "embed.positions.weight": ("embeddings.position_embeddings.weight",),
        "embed.norm.weight": ("embeddings.LayerNorm.weight",),
        "embed.norm.bias": ("embeddings.LayerNorm.bias",),
    }
    for i in range(n_layers):
        theirs, ours = f"transformer.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            qkv = ("q", "k", "v")
            names[f"{ours}attn.qkv.{kind}"] = tuple(f"{theirs}attention.{p}_lin.{kind}" for p in qkv)
            names[f"{ours}attn.out.{kind}"] = (f"{theirs}attention.out_lin.{kind}",)
            names[f"{ours}norm1.{kind}"] = (f"{theirs}sa_layer_norm.{kind}",)
            names[f"{ours}ff.up.{kind}"] = (f"{theirs}ffn.lin1.{kind}",)
            names[f"{ours}ff.down.{kind}"] = (f"{theirs}ffn.lin2.{kind}",)
            names[f"{ours}norm2.{kind}"] = (f"{theirs}output_layer_norm.{kind}",)
    return names


def hf_config(model: Any, head_dropout: float) -> dict[str, Any]:
    """The config.json keys of a DistilBERT with tformer's model settings (the inverse of architecture)."""
    return {"seq_classif_dropout": head_dropout, "vocab_size": model.vocab_size, "dim": model.d_model,
            "n_layers": model.n_layers, "n_heads": model.n_heads, "hidden_dim": model.d_ff,
            "activation": ACTIVATION_NAMES[model.activation], "dropout": model.dropout,
            "attention_dropout": model.attn_dropout,
            "max_position_embeddings": model.max_positions, "pad_token_id": model.pad_id,
            "sinusoidal_pos_embds": False}
