"""Changes to our training step, measured beside the real one (`--what-if`); nothing here ships.

Each variant is `tformer train`'s step with changes applied to the built model; a change swaps submodules,
never a module's forward. Both undo one of the step's speed choices, so their rows show what that choice is
worth on the machine at hand:
  ffn_dropout  dropout inside the feed-forward block again, at the model's residual rate (the step before
               model.ffn_dropout=0 became the default, as in BERT, GPT-2 and Vaswani et al.)
  nn_dropout   torch's nn.Dropout back in place of transformer_cli.model.Dropout (the step before that change)
(Fused AdamW is every contender's optimizer, and the first-token shortcut is part of tformer; the step
without it is the `ours_full` contender.)
"""

from __future__ import annotations

from torch import nn

from transformer_cli.model import Dropout, FeedForward


def ffn_dropout(model: nn.Module) -> None:
    """Dropout between the feed-forward block's two linear maps, at the rate of the model's other dropout."""
    rate = next((m.p for m in model.modules() if isinstance(m, Dropout) and m.p > 0), 0.1)
    for module in model.modules():
        if isinstance(module, FeedForward):
            module.dropout = Dropout(rate)


def nn_dropout(model: nn.Module) -> None:
    """Put torch's nn.Dropout back wherever the model uses ours."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))


CHANGES = {"ffn_dropout": ffn_dropout, "nn_dropout": nn_dropout}  # name -> change to a built model


def apply(changes: tuple[str, ...], model: nn.Module) -> None:
    """Apply the named changes to a built model, in order."""
    for name in changes:
        CHANGES[name](model)


VARIANTS: dict[str, tuple[str, ...]] = {name: (name,) for name in CHANGES}
