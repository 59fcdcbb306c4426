"""Greedy and beam-search decoding for Seq2SeqModel, batched over sources, with a key/value cache.

With the cache each new token costs one decoder step over one position; without it (use_cache=False,
kept for testing and benchmarks) the whole prefix is recomputed every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from transformer_cli.model import Seq2SeqModel


@dataclass
class Hypothesis:
    """A decoded target: token ids without BOS/EOS, and its summed log-probability."""

    tokens: list[int]
    score: float


class Stepper:
    """Encoder memory and decoder caches for N running sequences; returns next-token log-probabilities."""

    def __init__(self, model: Seq2SeqModel, src: Tensor, mask: Tensor, use_cache: bool) -> None:
        self.model = model
        self.memory = model.encode(src, mask)  # encoder states, cross-attention keys and values, mask, ids
        self.caches: list[dict[str, Tensor]] | None = [{} for _ in model.decoder.layers] if use_cache else None
        self.fed = 0  # target positions already inside the caches

    def step(self, tokens: Tensor) -> Tensor:
        """(N, t) target prefixes -> (N, V) log-probabilities of the next token."""
        if self.caches is None:
            hidden = self.model.decoder(tokens, self.memory.kvs, self.memory.mask)[:, -1:]
        else:
            hidden = self.model.decoder(tokens[:, self.fed :], self.memory.kvs, self.memory.mask, self.caches,
                                        self.fed)
            self.fed = tokens.shape[1]
        return torch.log_softmax(self.model.scores(hidden[:, -1:], self.memory)[:, -1].float(), dim=-1)

    def select(self, index: Tensor) -> None:
        """Keep (and reorder, or repeat) the running sequences at `index` (N',)."""
        self.memory = self.memory.index(index)
        self.reorder(index)

    def reorder(self, index: Tensor) -> None:
        """Reorder the decoder caches only: for moves between rows of the same source (beam search), whose
        encoder keys, values and mask are the same rows already."""
        if self.caches is not None:
            self.caches = [{name: t[index] for name, t in cache.items()} for cache in self.caches]


@torch.no_grad()
def greedy(model: Seq2SeqModel, src: Tensor, mask: Tensor, bos: int, eos: int, max_lens: Tensor,
           use_cache: bool = True, min_length: int = 0, no_repeat_ngram: int = 0) -> list[Hypothesis]:
    """The most probable next token at every step, until EOS or each source's max length.

    EOS is impossible before min_length tokens (unless the max length forces it); no_repeat_ngram > 0 bans
    any token that would repeat an n-gram of the prefix. A length penalty cannot change a greedy choice."""
    B = src.shape[0]
    stepper = Stepper(model, src, mask, use_cache)
    tokens = torch.full((B, 1), bos, dtype=torch.long, device=src.device)
    scores = torch.zeros(B, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    for t in range(int(max_lens.max())):
        logp = _hold_eos(stepper.step(tokens), t, min_length, eos)  # (B, V)
        if no_repeat_ngram > 0 and tokens.shape[1] >= no_repeat_ngram:
            _ban_repeats(logp, tokens, no_repeat_ngram)
        logp = _force_eos(logp, t, max_lens, eos)
        best = logp.argmax(-1)  # (B,)
        best = torch.where(done, torch.full_like(best, eos), best)
        scores += torch.where(done, torch.zeros_like(scores), logp.gather(1, best[:, None]).squeeze(1))
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        done |= best == eos
        if bool(done.all()):
            break
    return [Hypothesis(_strip(row, eos), float(s)) for row, s in zip(tokens[:, 1:].tolist(), scores.tolist())]


@torch.no_grad()
def beam_search(model: Seq2SeqModel, src: Tensor, mask: Tensor, bos: int, eos: int, max_lens: Tensor,
                beam: int = 4, length_penalty: float = 1.0, no_repeat_ngram: int = 0,
                use_cache: bool = True, min_length: int = 0) -> list[Hypothesis]:
    """Keep the `beam` best prefixes per source; a source is done once `beam` hypotheses ended in EOS.

    Finished hypotheses are ranked by score / length**length_penalty (length counts EOS). EOS is impossible
    before min_length tokens (unless the max length forces it)."""
    B, K = src.shape[0], beam
    device = src.device
    stepper = Stepper(model, src, mask, use_cache)
    stepper.select(torch.arange(B, device=device).repeat_interleave(K))  # (B*K,) rows: source b, beam k
    limits = max_lens.repeat_interleave(K)
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # every beam starts equal: expand only the first one
    finished: list[list[tuple[float, list[int], float]]] = [[] for _ in range(B)]
    for t in range(int(max_lens.max())):
        logp = _force_eos(_hold_eos(stepper.step(tokens), t, min_length, eos), t, limits, eos)  # (B*K, V)
        if no_repeat_ngram > 0 and tokens.shape[1] >= no_repeat_ngram:
            _ban_repeats(logp, tokens, no_repeat_ngram)
        V = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_ids = candidates.topk(2 * K, dim=1)  # (B, 2K): enough to find K that do not end
        origin, token = top_ids // V, top_ids % V
        keep, next_scores, next_tokens = _advance(finished, tokens, top_scores, origin, token, eos, K, t,
                                                  length_penalty)
        if all(len(f) >= K for f in finished):
            break
        rows = (torch.arange(B, device=device)[:, None] * K + keep).view(-1)  # (B*K,) rows to continue
        stepper.reorder(rows)  # rows stay within their source's K rows: the encoder memory needs no gather
        tokens = torch.cat([tokens[rows], next_tokens.view(-1, 1)], dim=1)
        scores = next_scores
    for b in range(B):  # sources whose beams never all ended: their live prefixes compete too
        if len(finished[b]) < K:
            for k in range(K):
                raw = float(scores[b, k])
                if raw > float("-inf"):
                    row = tokens[b * K + k, 1:].tolist()
                    finished[b].append((raw / max(1, len(row)) ** length_penalty, row, raw))
    return [_best(f, eos) for f in finished]


def _advance(finished: list[list[tuple[float, list[int], float]]], tokens: Tensor, top_scores: Tensor,
             origin: Tensor, token: Tensor, eos: int, K: int, t: int, length_penalty: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Move ended candidates to `finished`; pick K live ones per source: (beam origin, score, token), each (B, K)."""
    B = top_scores.shape[0]
    keep = torch.zeros(B, K, dtype=torch.long)
    next_scores = torch.full((B, K), float("-inf"))
    next_tokens = torch.full((B, K), eos, dtype=torch.long)
    ts, os_, tk = top_scores.cpu().tolist(), origin.cpu().tolist(), token.cpu().tolist()
    for b in range(B):
        live = 0
        for score, o, tok in zip(ts[b], os_[b], tk[b]):
            if score == float("-inf") or live == K:
                break
            if len(finished[b]) >= K:
                break
            if tok == eos:
                prefix = tokens[b * K + o, 1:].tolist()
                finished[b].append((score / (t + 1) ** length_penalty, prefix, score))
            else:
                keep[b, live], next_scores[b, live], next_tokens[b, live] = o, score, tok
                live += 1
    return keep.to(origin.device), next_scores.to(top_scores.device), next_tokens.to(origin.device)


def _hold_eos(logp: Tensor, t: int, min_length: int, eos: int) -> Tensor:
    """Before min_length tokens were generated, EOS is impossible (returns logp itself when t >= min_length)."""
    if t >= min_length:
        return logp
    logp = logp.clone()
    logp[:, eos] = float("-inf")
    return logp


def _force_eos(logp: Tensor, t: int, limits: Tensor, eos: int) -> Tensor:
    """At a sequence's last allowed step only EOS remains possible."""
    at_limit = limits <= t + 1  # (N,)
    if bool(at_limit.any()):
        logp = logp.clone()
        logp[at_limit] = float("-inf")
        logp[at_limit, eos] = 0.0
    return logp


def _ban_repeats(logp: Tensor, tokens: Tensor, n: int) -> None:
    """Forbid any token that would repeat an n-gram already in the same prefix (in place)."""
    rows = tokens[:, 1:].tolist()  # without BOS
    for i, row in enumerate(rows):
        if len(row) < n - 1:
            continue
        tail = tuple(row[len(row) - (n - 1):]) if n > 1 else ()
        banned = [row[j + n - 1] for j in range(len(row) - n + 1) if tuple(row[j : j + n - 1]) == tail]
        if banned:
            logp[i, banned] = float("-inf")


def _strip(row: list[int], eos: int) -> list[int]:
    """Token ids up to (not including) the first EOS."""
    return row[: row.index(eos)] if eos in row else row


def _best(candidates: list[tuple[float, list[int], float]], eos: int) -> Hypothesis:
    """The highest normalised-score hypothesis."""
    _, row, raw = max(candidates, key=lambda c: c[0])
    return Hypothesis(_strip(row, eos), raw)
