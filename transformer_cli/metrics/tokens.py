"""Token-level metrics of a language model: accuracy and perplexity over the predicted positions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from transformer_cli.metrics.common import safe_div


class TokenMetrics:
    """Accuracy and perplexity of (N, V) logits against (N,) token labels, streamed (ignored labels skipped)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self.nll = 0.0
        self.tokens = 0
        self.correct = 0

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100) -> None:
        """(N, V) logits and (N,) labels; positions labelled `ignore_index` do not count."""
        keep = labels != ignore_index
        logits, labels = logits[keep].float(), labels[keep]
        logp = torch.log_softmax(logits, dim=-1)
        self.nll += float(-logp.gather(1, labels[:, None]).sum())
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.tokens += int(labels.numel())

    def compute(self) -> dict[str, float]:
        """token_accuracy and perplexity (exp of the mean negative log-likelihood), and the count."""
        return {"token_accuracy": safe_div(self.correct, self.tokens) if self.tokens else math.nan,
                "perplexity": math.exp(min(self.nll / self.tokens, 700.0)) if self.tokens else math.nan,
                "count": self.tokens}

    def details(self) -> dict[str, Any]:
        """Nothing beyond the scalars."""
        return {}
