"""Task heads: encoder hidden states -> predictions. One small module per kind of output."""

from __future__ import annotations

from torch import Tensor, nn

POOLINGS = ("cls", "mean")
# The head layout of each model family's sequence classifier: (dropout before the dense layer, its activation).
# tformer and RoBERTa: dropout, dense, tanh, dropout, projection. BERT: its pooler (dense, tanh on [CLS]), then
# dropout and the classifier. DistilBERT: dense, ReLU, dropout, classifier.
HEAD_STYLES: dict[str, tuple[bool, str]] = {"tformer": (True, "tanh"), "roberta": (True, "tanh"),
                                            "bert": (False, "tanh"), "distilbert": (False, "relu")}


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """(B, T, D) hidden states -> (B, D): the first token, or the mean over real tokens."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SequenceHead(nn.Module):
    """Pool the sequence, then a dense layer (tanh or ReLU) and a linear map to `num_outputs` values."""

    def __init__(self, d_model: int, num_outputs: int, pooling: str, dropout: float, squeeze: bool,
                 style: str = "tformer") -> None:
        super().__init__()
        self.pooling = pooling
        self.pool_dropout, activation = HEAD_STYLES[style]
        self.act = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.dense = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_outputs)
        self.squeeze = squeeze  # one output per example: return (B,) rather than (B, 1)
        for layer in (self.dense, self.proj):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D) -> (B, num_outputs), or (B,) when squeezed."""
        x = pool(hidden, mask, self.pooling)  # (B, D)
        if self.pool_dropout:
            x = self.dropout(x)
        out = self.proj(self.dropout(self.act(self.dense(x))))  # (B, K)
        return out.squeeze(-1) if self.squeeze else out


class TokenHead(nn.Module):
    """Hidden states of chosen positions -> vocabulary logits, as BERT's masked-LM head: a dense layer, GELU and
    a LayerNorm, then the token embeddings (tied: the same matrix that embeds the tokens) and a bias."""

    def __init__(self, embeddings: nn.Embedding, eps: float) -> None:
        super().__init__()
        vocab, d_model = embeddings.weight.shape
        self.dense = nn.Linear(d_model, d_model)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.decoder = nn.Linear(d_model, vocab)
        self.decoder.weight = embeddings.weight  # tied
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(M, D) hidden states -> (M, V) logits."""
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class SpanHead(nn.Module):
    """Two scores per token, where an answer span starts and where it ends (BERT's question-answering head)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 2)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, 2) start and end logits."""
        return self.proj(hidden)
