"""Proposed changes to our training step, measured beside the real one (`--what-if`); nothing here ships.

Each variant is `tformer train`'s step with changes applied to the built model or optimizer:
  fused_adamw     torch.optim.AdamW(fused=True): one kernel per parameter instead of a dozen (Trainer's default)
  no_ffn_dropout  no dropout inside the feed-forward block (BERT, GPT-2 and Vaswani et al. have none there)
  cls_last_layer  with first-token pooling, the last layer computes only the first position (keys and values
                  still come from every token): the same outputs, about a fifth less matmul work at 4 layers
  nn_dropout      torch's nn.Dropout back in place of transformer_cli.model.Dropout (the step before that change)
  all             fused_adamw + no_ffn_dropout + cls_last_layer
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.model import Dropout, EncoderLayer, FeedForward


def fused_adamw(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same AdamW groups and settings, with the fused kernel."""
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
    d = optimizer.defaults
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=True)


def no_ffn_dropout(model: nn.Module) -> None:
    """Remove the dropout between the feed-forward block's two linear maps."""
    for module in model.modules():
        if isinstance(module, FeedForward):
            module.dropout = nn.Identity()


def nn_dropout(model: nn.Module) -> None:
    """Put torch's nn.Dropout back wherever the model uses ours."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))


def first_row(layer: EncoderLayer, x: Tensor, mask: Tensor) -> Tensor:
    """A pre-norm encoder layer's output at position 0 only: (B, T, D) -> (B, 1, D)."""
    B, T, D = x.shape
    attn, H = layer.attn, layer.attn.n_heads
    h = layer.norm1(x)
    w, b = attn.qkv.weight, attn.qkv.bias  # rows: query, key, value
    q = F.linear(h[:, :1], w[:D], b[:D]).view(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, hs)
    k, v = F.linear(h, w[D:], b[D:]).view(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, 1, hs)
    x0 = x[:, :1] + layer.dropout(attn.out(y.transpose(1, 2).reshape(B, 1, D)))
    return x0 + layer.dropout(layer.ff(layer.norm2(x0)))


def cls_last_layer(model: nn.Module) -> None:
    """Compute only the pooled first position in the last layer (pre-norm models with cls pooling)."""
    encoder = getattr(model, "encoder", None)
    if getattr(getattr(model, "head", None), "pooling", None) != "cls" or not encoder.layers[-1].pre_norm:
        return

    def forward(input_ids: Tensor, mask: Tensor) -> Tensor:
        x = encoder.embed(input_ids)
        for layer in encoder.layers[:-1]:
            x = layer(x, mask)
        return encoder.final_norm(first_row(encoder.layers[-1], x, mask))  # (B, 1, D): the head reads row 0

    encoder.forward = forward


def apply(changes: tuple[str, ...], model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Apply the named changes to a built model and optimizer; returns the optimizer to use."""
    if "no_ffn_dropout" in changes:
        no_ffn_dropout(model)
    if "nn_dropout" in changes:
        nn_dropout(model)
    if "cls_last_layer" in changes:
        cls_last_layer(model)
    return fused_adamw(optimizer) if "fused_adamw" in changes else optimizer


VARIANTS: dict[str, tuple[str, ...]] = {
    "fused_adamw": ("fused_adamw",),
    "no_ffn_dropout": ("no_ffn_dropout",),
    "cls_last_layer": ("cls_last_layer",),
    "nn_dropout": ("nn_dropout",),
    "all": ("fused_adamw", "no_ffn_dropout", "cls_last_layer"),
}
