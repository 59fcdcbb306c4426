"""tformer: train and evaluate Transformer models from Hydra configs.

The Python API (transformer_cli/api.py) is imported on first use, so `import transformer_cli` stays cheap
(no torch, no Hydra):

    from transformer_cli import load, train

    summary = train(["task=regress", "trainer.max_epochs=2"])   # what `tformer train ...` does; summary.json
    model = load(summary["checkpoints"]["best"])                  # a checkpoint, as `tformer predict` reads it
    model.predict(["a text", "another"])                          # the records `tformer predict` writes
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformer_cli.version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__ below
    from transformer_cli.api import Predictor, load, train

API = ("load", "train", "Predictor")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    """`transformer_cli.load` / `.train` / `.Predictor`: imported from transformer_cli.api when first asked for."""
    if name in API:
        from transformer_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'transformer_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily imported API included."""
    return sorted({*globals(), *API})
