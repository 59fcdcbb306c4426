"""tformer: train and evaluate Transformer models from Hydra configs."""

__version__ = "0.1.0"
