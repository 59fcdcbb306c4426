"""The encoder-decoder rows: teacher-forced training and decoding, ours against BART of the same size.

Training: `tformer train experiment=g2p model=base` (CMUdict letters -> phonemes) step by step, against BART
in a plain loop on the same batches and in Trainer with DataCollatorForSeq2Seq + group_by_length.
Decoding: greedy and beam search over the same validation sources, ours (transformer_cli.decoding, with its
key/value cache) against `generate()`. Both models are freshly initialised, so neither is let stop early: every
row runs to its batch's length limit (a x longest source + b, the task's rule), the same number of steps for both.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from transformer_cli.data.batching import collate
from transformer_cli.decoding import beam_search, greedy

from . import contenders as C
from . import hf
from .flops import summary
from .runner import Spec
from .workload import Settings, Workload

SEQ2SEQ: dict[str, Spec] = {
    "ours": Spec("tformer", "length-bucketed", False, False, lambda w, s: C.ours(w, s)),
    "hf_loop_same": Spec("HF BART, plain loop", "ours (length-bucketed)", False, True,
                         lambda w, s: hf.hf_loop(w, s, bucket=True, pad_to=None)),
    "hf_trainer_grouped": Spec("HF Trainer (BART)", "dynamic + group_by_length", False, True,
                               lambda w, s: hf.trainer_seq2seq(w, s)),
}


def training_settings(work: Workload, settings: Settings) -> Settings:
    """The mode's settings with the experiment's own batch size and the encoder-decoder step count."""
    return dataclasses.replace(settings, batch_size=int(work.cfg.trainer.batch_size),
                               steps_bucketed=settings.seq2seq_steps)


def _batches(work: Workload, size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The workload's validation sources in length-sorted batches."""
    return length_batches(work.validation, work.task.cfg, size)


def length_batches(sources: list[np.ndarray], task: Any, size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Sources sorted by length (as evaluation batches them): (ids, mask, max target lengths) per batch, the
    limits by the seq2seq task's rule (a x source length + b, below target_max_length)."""
    order = np.argsort([len(x) for x in sources], kind="stable")
    out = []
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        b = collate([sources[j] for j in idx], torch.zeros(len(idx)), idx)
        limits = (b.mask.sum(1).float() * task.max_len_a + task.max_len_b).ceil().long()
        out.append((b.input_ids, b.mask, limits.clamp(max=task.target_max_length - 1)))
    return out


def _ours(work: Workload, model: torch.nn.Module, beam: int) -> Callable[[Any], None]:
    """Decode one batch with tformer's greedy or beam search, run to the batch's length limit."""
    task = work.task

    def run(batch: Any) -> None:
        src, mask, limits = batch
        # eos=-1: no token ends a hypothesis, so every row runs to the limit, as generate() is told to below.
        if beam == 1:
            greedy(model, src, mask, task.bos, -1, limits)
        else:
            beam_search(model, src, mask, task.bos, -1, limits, beam=beam, length_penalty=task.cfg.length_penalty)

    return run


def _hf(work: Workload, model: torch.nn.Module, beam: int) -> Callable[[Any], None]:
    """Decode one batch with generate(), forced to the batch's length limit."""
    task = work.task.cfg

    def run(batch: Any) -> None:
        ids, mask, limits = batch
        n = int(limits.max())
        extra = {"early_stopping": True, "length_penalty": task.length_penalty} if beam > 1 else {}
        model.generate(input_ids=ids, attention_mask=mask.long(), num_beams=beam, do_sample=False,
                       min_new_tokens=n, max_new_tokens=n, no_repeat_ngram_size=0, **extra)

    return run


def decoding(work: Workload, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Time greedy and beam decoding, ours and generate(), interleaved over repetitions."""
    work.validation = work.validation[: settings.decode_sources]
    batches = _batches(work, settings.decode_batch)
    ours_model = work.task.build_model(work.cfg.model, work.vocab_size).eval()
    beam = int(work.task.cfg.beam_size)
    rows: dict[str, Callable[[Any], int]] = {"ours greedy": _ours(work, ours_model, 1),
                                             f"ours beam {beam}": _ours(work, ours_model, beam)}
    if hf.available() is None:
        bart = hf.bart(work).eval()
        rows |= {"HF generate greedy": _hf(work, bart, 1), f"HF generate beam {beam}": _hf(work, bart, beam)}
    for run in rows.values():  # warm-up
        run(batches[0])
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        for _ in range(settings.reps):
            for name, run in rows.items():
                start = time.perf_counter()
                for b in batches:
                    run(b)
                seconds[name].append(time.perf_counter() - start)
    log("decoding timed")
    n = sum(len(b[0]) for b in batches)
    positions = sum(len(b[0]) * int(b[2].max()) for b in batches)  # rows x steps, per beam
    out: dict[str, Any] = {"sources": n, "batch": settings.decode_batch, "positions": positions, "rows": {},
                           "ratios": {}}
    for name in rows:
        out["rows"][name] = {"seconds": summary(seconds[name]),
                             "sources_per_s": summary([n / s for s in seconds[name]]),
                             "positions_per_s": summary([positions / s for s in seconds[name]])}
    for kind in ("greedy", f"beam {beam}"):
        theirs = f"HF generate {kind}"
        if theirs in seconds:
            out["ratios"][kind] = summary([a / b for a, b in zip(seconds[f"ours {kind}"], seconds[theirs])])
    return out
