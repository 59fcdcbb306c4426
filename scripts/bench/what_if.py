"""Proposed changes to our training step, measured beside the real one (`--what-if`); nothing here ships.

Each variant is `tformer train`'s step with changes applied to the built model or optimizer; a change swaps
submodules or the optimizer, never a module's forward:
  fused_adamw     torch.optim.AdamW(fused=True): one kernel per parameter instead of a dozen (Trainer's default)
  no_ffn_dropout  no dropout inside the feed-forward block (BERT, GPT-2 and Vaswani et al. have none there)
  nn_dropout      torch's nn.Dropout back in place of transformer_cli.model.Dropout (the step before that change)
  all             fused_adamw + no_ffn_dropout
(The first-token shortcut is part of tformer itself; the step without it is the `ours_full` contender.)
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_cli.model import Dropout, FeedForward


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


def apply(changes: tuple[str, ...], model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Apply the named changes to a built model and optimizer; returns the optimizer to use."""
    if "no_ffn_dropout" in changes:
        no_ffn_dropout(model)
    if "nn_dropout" in changes:
        nn_dropout(model)
    return fused_adamw(optimizer) if "fused_adamw" in changes else optimizer


VARIANTS: dict[str, tuple[str, ...]] = {
    "fused_adamw": ("fused_adamw",),
    "no_ffn_dropout": ("no_ffn_dropout",),
    "nn_dropout": ("nn_dropout",),
    "all": ("fused_adamw", "no_ffn_dropout"),
}
