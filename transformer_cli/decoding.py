"""Greedy and beam-search decoding for Seq2SeqModel, batched over sources, with a key/value cache.

With the cache each new token costs one decoder step over one position; without it (use_cache=False,
kept for testing and benchmarks) the whole prefix is recomputed every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from transformer_cli.model import KVCache, Seq2SeqModel


@dataclass
class Hypothesis:
    """A decoded target: token ids without BOS/EOS, and its summed log-probability."""

    tokens: list[int]
    score: float


class Stepper:
    """Encoder memory and decoder caches for N running sequences; returns next-token log-probabilities."""

    def __init__(self, model: Seq2SeqModel, src: Tensor, mask: Tensor, use_cache: bool, capacity: int) -> None:
        self.model = model
        memory = model.encode(src, mask)  # encoder states, cross-attention keys and values, mask, ids: a row per
        # source, shared by that source's running sequences (the G consecutive rows of the decoder's batch).
        # The keys and values are made contiguous once: every step multiplies by them, and a strided view would be
        # copied by each of those matmuls.
        self.memory = replace(memory, kvs=[(k.contiguous(), v.contiguous()) for k, v in memory.kvs])
        self.caches = [KVCache(capacity) for _ in model.decoder.layers] if use_cache else None  # `capacity` positions
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

    def select(self, rows: Tensor, sources: Tensor) -> None:
        """Keep the running sequences at `rows` (N',) and the memory of their sources, `sources` (B',), in the
        same order (beam search: the G consecutive rows of a source share its one memory row)."""
        self.memory = self.memory.index(sources)
        self.reorder(rows)

    def reorder(self, index: Tensor) -> None:
        """Reorder the decoder caches only: for moves between rows of the same source (beam search), which
        read the same memory row."""
        if self.caches is not None:
            for cache in self.caches:
                cache.select(index)


@torch.inference_mode()
def greedy(model: Seq2SeqModel, src: Tensor, mask: Tensor, bos: int, eos: int, max_lens: Tensor,
           use_cache: bool = True, min_length: int = 0, no_repeat_ngram: int = 0) -> list[Hypothesis]:
    """The most probable next token at every step, until EOS or each source's max length.

    EOS is impossible before min_length tokens (unless the max length forces it); no_repeat_ngram > 0 bans
    any token that would repeat an n-gram of the prefix. A length penalty cannot change a greedy choice.
    A source that ended stops being computed: its rows leave the batch."""
    B, steps, device = src.shape[0], int(max_lens.max()), src.device
    stepper = Stepper(model, src, mask, use_cache, steps)
    out = torch.full((B, steps), eos, dtype=torch.long, device=device)  # every source's tokens, EOS after the end
    scores = torch.zeros(B, device=device)
    active = torch.arange(B, device=device)  # (A,) the sources still running
    limits = max_lens.to(device)  # (A,)
    tokens = torch.full((B, 1), bos, dtype=torch.long, device=device)  # (A, t + 1) running prefixes
    for t in range(steps):
        logp = _hold_eos(stepper.step(tokens), t, min_length, eos)  # (A, V)
        if no_repeat_ngram > 0 and tokens.shape[1] >= no_repeat_ngram:
            _ban_repeats(logp, tokens, no_repeat_ngram)
        logp = _force_eos(logp, t, limits, eos)
        best = logp.argmax(-1)  # (A,)
        scores[active] += logp.gather(1, best[:, None]).squeeze(1)
        out[active, t] = best
        ended = best == eos
        if bool(ended.all()):
            break
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        if bool(ended.any()):
            stay = (~ended).nonzero().squeeze(1)  # (A',)
            active, limits, tokens = active[stay], limits[stay], tokens[stay]
            stepper.select(stay, stay)
    return [Hypothesis(_strip(row, eos), float(s)) for row, s in zip(out.tolist(), scores.tolist())]


@torch.inference_mode()
def beam_search(model: Seq2SeqModel, src: Tensor, mask: Tensor, bos: int, eos: int, max_lens: Tensor,
                beam: int = 4, length_penalty: float = 1.0, no_repeat_ngram: int = 0,
                use_cache: bool = True, min_length: int = 0) -> list[Hypothesis]:
    """Keep the `beam` best prefixes per source; a source is done once `beam` hypotheses ended in EOS.

    Finished hypotheses are ranked by score / length**length_penalty (length counts EOS). EOS is impossible
    before min_length tokens (unless the max length forces it). A done source stops being computed: its rows
    leave the batch in the same gather that reorders the beams."""
    B, K, steps, device = src.shape[0], beam, int(max_lens.max()), src.device
    stepper = Stepper(model, src, mask, use_cache, steps)
    finished = Finished(B, K, steps, device)
    active = torch.arange(B, device=device)  # (A,) the sources still running
    limits = max_lens.to(device).repeat_interleave(K)  # (A*K,)
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=device)  # (A*K, t + 1) running prefixes
    scores = torch.zeros(B, K, device=device)  # (A, K)
    scores[:, 1:] = float("-inf")  # every beam starts equal: expand only the first one
    for t in range(steps):
        logp = _force_eos(_hold_eos(stepper.step(tokens), t, min_length, eos), t, limits, eos)  # (A*K, V)
        if no_repeat_ngram > 0 and tokens.shape[1] >= no_repeat_ngram:
            _ban_repeats(logp, tokens, no_repeat_ngram)
        A, V = scores.shape[0], logp.shape[-1]
        top_scores, top_ids = (scores.view(-1, 1) + logp).view(A, K * V).topk(2 * K, dim=1)  # (A, 2K)
        origin = top_ids // V
        keep, next_scores, next_tokens = finished.advance(active, tokens, top_scores, origin, top_ids % V, eos, t,
                                                          length_penalty)
        done = finished.count[active] >= K  # (A,)
        if bool(done.all()):
            break
        rows = torch.arange(A, device=device)[:, None] * K + keep  # (A, K) rows to continue, within their source
        if bool(done.any()):
            stay = (~done).nonzero().squeeze(1)  # (A',)
            active, rows, next_scores, next_tokens = active[stay], rows[stay], next_scores[stay], next_tokens[stay]
            limits = limits.view(A, K)[stay].view(-1)
            stepper.select(rows.view(-1), stay)  # the sources that stay, and their beams' rows
        else:
            stepper.reorder(rows.view(-1))  # rows stay within their source's K rows: the encoder memory needs no gather
        tokens = torch.cat([tokens.index_select(0, rows.view(-1)), next_tokens.view(-1, 1)], dim=1)
        scores = next_scores
    return finished.best(active, tokens, scores, eos, length_penalty)


class Finished:
    """Up to K ended hypotheses per source, in the order they ended, as tensors: normalised and raw scores,
    lengths and tokens. Slot K of every source is a sink for the candidates that are not kept."""

    def __init__(self, B: int, K: int, steps: int, device: torch.device) -> None:
        self.K = K
        self.count = torch.zeros(B, dtype=torch.long, device=device)  # (B,) hypotheses ended so far
        self.norm = torch.full((B, K + 1), float("-inf"), dtype=torch.float64, device=device)  # score / length**lp
        self.raw = torch.zeros(B, K + 1, device=device)  # summed log-probabilities
        self.lengths = torch.zeros(B, K + 1, dtype=torch.long, device=device)  # tokens before EOS
        self.tokens = torch.zeros(B, K + 1, steps, dtype=torch.long, device=device)  # (B, K+1, steps)

    def advance(self, active: Tensor, tokens: Tensor, top_scores: Tensor, origin: Tensor, token: Tensor, eos: int,
                t: int, length_penalty: float) -> tuple[Tensor, Tensor, Tensor]:
        """Store the ended candidates; pick K live ones per source: (beam origin, score, token), each (A, K).

        The candidates of a source are (A, 2K), best first; they are taken in that order while they are finite,
        fewer than K live ones were taken and the source has fewer than K ended ones (as a loop over them would)."""
        A, C = top_scores.shape
        K = self.K
        valid = top_scores > float("-inf")  # (A, C): a prefix of each row, as the scores are sorted
        ends, lives = valid & (token == eos), valid & (token != eos)
        live_before = lives.cumsum(1) - lives.long()  # (A, C) live candidates ahead of each one
        end_before = self.count[active, None] + ends.cumsum(1) - ends.long()  # (A, C) ended ones, stored included
        taken = (live_before < K) & (end_before < K)
        sink = torch.full_like(origin, K)
        live_slot = torch.where(lives & taken, live_before, sink)  # (A, C): the live slot, or K
        keep = torch.zeros(A, K + 1, dtype=torch.long, device=origin.device).scatter_(1, live_slot, origin)[:, :K]
        next_scores = torch.full((A, K + 1), float("-inf"), device=top_scores.device)
        next_scores = next_scores.scatter_(1, live_slot, top_scores)[:, :K]
        next_tokens = torch.full((A, K + 1), eos, dtype=torch.long, device=token.device)
        next_tokens = next_tokens.scatter_(1, live_slot, token)[:, :K]
        end_slot = torch.where(ends & taken, end_before, sink)  # (A, C): the ended slot, or K
        source = active[:, None].expand(A, C)
        self.norm.index_put_((source, end_slot), top_scores.double() / (t + 1) ** length_penalty)
        self.raw.index_put_((source, end_slot), top_scores)
        self.lengths.index_put_((source, end_slot), torch.full_like(origin, t))
        prefixes = tokens.index_select(0, (torch.arange(A, device=origin.device)[:, None] * K + origin).view(-1))
        self.tokens[:, :, :t].index_put_((source, end_slot), prefixes[:, 1:].view(A, C, t))
        self.count[active] += (ends & taken).sum(1)
        return keep.contiguous(), next_scores.contiguous(), next_tokens.contiguous()

    def best(self, active: Tensor, tokens: Tensor, scores: Tensor, eos: int, length_penalty: float
             ) -> list[Hypothesis]:
        """Each source's highest normalised-score hypothesis; the first one ended wins a tie. Sources with fewer
        than K ended hypotheses also rank their (A, K) live prefixes (A*K, t + 1) after their ended ones."""
        B, K = self.count.shape[0], self.K
        L = tokens.shape[1] - 1  # live prefixes without BOS
        live_norm = torch.full((B, K), float("-inf"), dtype=torch.float64, device=scores.device)
        open_ = self.count[active] < K  # (A,)
        live_norm[active] = torch.where(open_[:, None], scores.double() / max(1, L) ** length_penalty, live_norm[active])
        live_raw = torch.zeros(B, K, device=scores.device)
        live_raw[active] = scores
        live_tokens = torch.zeros(B, K, L, dtype=torch.long, device=scores.device)
        live_tokens[active] = tokens[:, 1:].view(-1, K, L)
        pick = torch.cat([self.norm[:, :K], live_norm], dim=1).argmax(1).tolist()  # (B,) first maximum
        raw = torch.cat([self.raw[:, :K], live_raw], dim=1).tolist()
        lengths = self.lengths.tolist()
        out = []
        for b, p in enumerate(pick):
            row = self.tokens[b, p, : lengths[b][p]] if p < K else live_tokens[b, p - K]
            out.append(Hypothesis(_strip(row.tolist(), eos), raw[b][p]))
        return out


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
    """Forbid any token that would repeat an n-gram already in the same prefix (in place); (N, t + 1) prefixes
    with BOS first."""
    rows = tokens[:, 1:]  # (N, L) without BOS
    L = rows.shape[1]
    if L < n:
        return  # no complete n-gram yet
    grams = rows.unfold(1, n, 1)  # (N, L - n + 1, n)
    tail = rows[:, L - (n - 1) :]  # (N, n - 1) the last n - 1 tokens
    repeats = (grams[:, :, : n - 1] == tail[:, None, :]).all(-1)  # (N, L - n + 1) n-grams starting like the tail
    banned = torch.zeros_like(logp).scatter_add_(1, grams[:, :, n - 1], repeats.to(logp.dtype)) > 0  # (N, V)
    logp.masked_fill_(banned, float("-inf"))


def _strip(row: list[int], eos: int) -> list[int]:
    """Token ids up to (not including) the first EOS."""
    return row[: row.index(eos)] if eos in row else row
