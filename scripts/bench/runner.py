"""Time every contender side by side in one process, interleaving repetitions, and turn steps into figures.

Repetition r runs a block of steps of every contender in turn, in an order shuffled per repetition under the
seed, so drifting background load and cache state land on all of them alike; ratios are taken per repetition
(paired), then summarised as median and min-max.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from transformer_cli.data.batching import batch_order

from . import contenders as C
from . import hf
from .contenders import Contender, EpochShape, Step
from .flops import summary
from .what_if import VARIANTS
from .workload import Settings, Workload, epoch_batches, padding_fraction


@dataclass(frozen=True)
class Spec:
    """One contender: who trains, on which batches, how to build it, and what still differs from our step."""

    who: str
    batching: str
    padded: bool  # padded to max_length: fewer, longer steps per repetition
    needs_hf: bool
    build: Callable[[Workload, Settings], Contender]
    differs: str = ""  # every difference from tformer's step that remains (same optimizer, dropout and batches)


# What every Hugging Face BERT row has that ours has not; the same sizes, dropout rates and optimizer otherwise.
BERT = ("BERT's layout: post-norm, learned positions, embedding LayerNorm and token types, its pooler (no dropout "
        "before the dense layer); torch's nn.Dropout (ours draws 16 random bits per element); the full last layer; "
        "linear schedule")
REFERENCE = "ours"  # the shipped step: what epoch-time and tokens/s ratios divide
FULL = "ours_full"  # our step doing the work the FLOPs count (and the others do): what MFU ratios divide
RATIO_REFERENCES = {"epoch_s": REFERENCE, "real_tokens_per_s": REFERENCE, "mfu_real": FULL}
SHORTCUT = "the last layer computes only the pooled first token (the same outputs, less work than the FLOPs count)"
FULL_LAYER = "the first-token shortcut off: the last layer computes every position, as the other contenders do"
SAME_BATCHES = ("hf_loop_same", "torch_encoder")  # other contenders stepping on exactly our batches
CONTENDERS: dict[str, Spec] = {
    "ours": Spec("tformer", "length-bucketed", False, False, lambda w, s: C.ours(w, s),
                 f"the reference: `tformer train`'s step; {SHORTCUT}"),
    "ours_full": Spec("tformer, full last layer", "length-bucketed", False, False,
                      lambda w, s: C.ours(w, s, full_last_layer=True), f"the MFU reference: {FULL_LAYER}"),
    "ours_pad": Spec("tformer", "pad to max_length", True, False,
                     lambda w, s: C.ours(w, s, bucket=False, pad_to=w.max_length),
                     f"every batch padded to max_length (more computed tokens); {SHORTCUT}"),
    "ours_full_pad": Spec("tformer, full last layer", "pad to max_length", True, False,
                          lambda w, s: C.ours(w, s, bucket=False, pad_to=w.max_length, full_last_layer=True),
                          f"every batch padded to max_length; {FULL_LAYER}"),
    "hf_loop_pad": Spec("HF BERT, plain loop", "pad to max_length", True, True,
                        lambda w, s: hf.hf_loop(w, s, bucket=False, pad_to=w.max_length),
                        f"{BERT}; every batch padded to max_length"),
    "hf_loop_same": Spec("HF BERT, plain loop", "ours (length-bucketed)", False, True,
                         lambda w, s: hf.hf_loop(w, s, bucket=True, pad_to=None), BERT),
    "hf_trainer_pad": Spec("HF Trainer", "pad to max_length (example defaults)", True, True,
                           lambda w, s: hf.trainer_classify(w, s, grouped=False),
                           f"{BERT}; Trainer's data loader, collator and callbacks are timed; texts padded to "
                           "max_length at tokenization, random order"),
    "hf_trainer_grouped": Spec("HF Trainer", "dynamic + group_by_length", False, True,
                               lambda w, s: hf.trainer_classify(w, s, grouped=True),
                               f"{BERT}; Trainer's data loader, collator and callbacks are timed; its own "
                               "length-grouped batches (more padding than ours)"),
    "torch_encoder": Spec("nn.TransformerEncoder", "ours (length-bucketed)", False, False,
                          lambda w, s: C.torch_encoder(w, s),
                          "nn.MultiheadAttention and torch's nn.Dropout (ours draws 16 random bits per element); "
                          "learned positions without sqrt(d) token scaling (ours: fixed sinusoids); the full last "
                          "layer; mean cross-entropy, no schedule"),
}
WHAT_IF = {  # our step with a speed choice undone (what_if.py), timed only with --what-if
    f"ours+{name}": Spec(f"tformer + {name}", "length-bucketed", False, False,
                         lambda w, s, changes=changes: C.ours(w, s, changes=changes),
                         f"our step with one speed choice undone: {name} (what_if.py)")
    for name, changes in VARIANTS.items()
}
WHAT_IF["ours+compile"] = Spec("tformer, trainer.compile=true", "length-bucketed", False, False,
                               lambda w, s: C.ours(w, s, compile=True),
                               "trainer.compile=true: torch.compile with dynamic shapes (compilation in warm-up)")
CONTENDERS.update(WHAT_IF)


def steps_per_block(spec: Spec, settings: Settings) -> int:
    """Timed steps in one repetition of this contender."""
    return settings.steps_padded if spec.padded else settings.steps_bucketed


def rep_orders(names: list[str], reps: int, seed: int) -> list[list[str]]:
    """The contenders' order in each repetition, shuffled anew per repetition under the seed, so no contender
    always runs first (cold caches) or right after the same neighbour."""
    rng = random.Random(seed)
    orders = []
    for _ in range(reps):
        order = list(names)
        rng.shuffle(order)
        orders.append(order)
    return orders


def time_contenders(work: Workload, settings: Settings, names: list[str], log: Callable[[str], None],
                    table: dict[str, Spec] | None = None
                    ) -> tuple[dict[str, list[list[Step]]], dict[str, EpochShape], dict[str, Contender]]:
    """Build every contender, warm each up, then run `reps` interleaved blocks: {name: [block per rep]}."""
    table = CONTENDERS if table is None else table
    built: dict[str, Contender] = {}
    for name in names:
        start = time.perf_counter()
        built[name] = table[name].build(work, settings)
        built[name].block(settings.warmup)
        log(f"built and warmed up {name} ({time.perf_counter() - start:.1f} s)")
    blocks: dict[str, list[list[Step]]] = {name: [] for name in names}
    for rep, order in enumerate(rep_orders(names, settings.reps, settings.seed)):
        for name in order:
            blocks[name].append(built[name].block(steps_per_block(table[name], settings)))
        log(f"repetition {rep + 1}/{settings.reps} done")
    return blocks, {name: c.epoch() for name, c in built.items()}, built


def block_figures(steps: list[Step], epoch: EpochShape, peak_gflops: float) -> dict[str, float]:
    """Figures of one repetition: step time, tokens/s, MFU, and the epoch time it extrapolates to.

    Epoch seconds = this block's seconds x (the epoch's padded tokens / this block's padded tokens): time
    scales with computed tokens, and the sample's share of long and short batches is corrected for."""
    seconds = sum(s.seconds for s in steps)
    real = sum(s.real_tokens for s in steps)
    padded = sum(s.padded_tokens for s in steps)
    return {
        "step_ms": 1000 * seconds / len(steps),
        "real_tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "epoch_s": seconds * epoch.padded_tokens / padded,
        "mfu_real": sum(s.real_flops for s in steps) / seconds / (peak_gflops * 1e9),
        "mfu_padded": sum(s.padded_flops for s in steps) / seconds / (peak_gflops * 1e9),
        "achieved_gflops_real": sum(s.real_flops for s in steps) / seconds / 1e9,
    }


def contender_figures(blocks: list[list[Step]], epoch: EpochShape, peak_gflops: float) -> dict[str, Any]:
    """Per-repetition figures and their median/min/max for one contender."""
    reps = [block_figures(b, epoch, peak_gflops) for b in blocks]
    return {
        "reps": reps,
        **{key: summary([r[key] for r in reps]) for key in reps[0]},
        "steps_per_rep": len(blocks[0]),
        "epoch": {"batches": epoch.batches, "real_tokens": epoch.real_tokens, "padded_tokens": epoch.padded_tokens,
                  "padding_fraction": 1 - epoch.real_tokens / max(1, epoch.padded_tokens)},
    }


def paired_ratio(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> dict[str, float]:
    """ours / theirs of `key`, repetition by repetition, summarised."""
    return summary([a[key] / b[key] for a, b in zip(ours["reps"], theirs["reps"])])


def ratio_table(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Paired ratios ours / theirs for every other row: epoch time and tokens/s against the shipped step
    (`ours`), MFU against the step without the first-token shortcut (`ours_full`), which does the same work."""
    return {name: {key: paired_ratio(figures[ref], figures[name], key)
                   for key, ref in RATIO_REFERENCES.items() if ref in figures and ref != name}
            for name in figures if name != REFERENCE}


def padding_table(work: Workload, settings: Settings, epochs: int = 3) -> dict[str, Any]:
    """Padding share of one dataset's training batches under each batching, averaged over a few epochs."""
    lengths = work.split.lengths
    bs, seed = settings.batch_size, settings.seed
    rows = {
        "bucketed (ours)": [padding_fraction(epoch_batches(work, bs, True, seed, e), lengths) for e in range(epochs)],
        "random order, pad to batch max": [padding_fraction(epoch_batches(work, bs, False, seed, e), lengths)
                                           for e in range(epochs)],
        "pad to max_length": [padding_fraction(epoch_batches(work, bs, False, seed, 0), lengths, work.max_length)],
        # trainer.max_tokens at the same mean batch: examples sorted by length, cut by a token budget
        "token budget (ours, max_tokens)": [
            padding_fraction(batch_order(lengths, 4 * bs, shuffle=True, bucket=True, seed=seed, epoch=e,
                                         max_tokens=int(bs * lengths.mean())), lengths) for e in range(epochs)],
    }
    if hf.available() is None:
        rows["HF group_by_length"] = [padding_fraction(hf.length_grouped_batches(lengths, bs, seed + e), lengths)
                                      for e in range(epochs)]
    return {
        "examples": len(lengths), "mean_tokens": float(lengths.mean()), "max_tokens": int(lengths.max()),
        "max_length": work.max_length, "batch_size": bs,
        "padding_fraction": {k: float(np.mean(v)) for k, v in rows.items()},
    }


def full_epoch_ours(work: Workload, settings: Settings, timed: dict[str, Any]) -> dict[str, Any]:
    """Train ours for one real epoch through EncodedSplit.batches (no extrapolation), after the same untimed
    warm-up as the timed rows, as a check of `timed`'s (ours' figures) estimated epoch time."""
    c = C.ours(work, settings)
    c.block(settings.warmup)
    start = time.perf_counter()
    n, real = 0, 0
    for batch in work.split.batches(settings.batch_size, shuffle=True, bucket=True, seed=settings.seed, epoch=1):
        c.step_fn(batch)
        n, real = n + 1, real + batch.real_tokens
    seconds = time.perf_counter() - start
    est = timed["epoch_s"]  # the estimate's median (min-max) over the repetitions
    return {"epoch_s": seconds, "batches": n, "real_tokens_per_s": real / seconds, "estimated_epoch_s": est,
            "measured_over_estimated": {"median": seconds / est["median"], "min": seconds / est["max"],
                                        "max": seconds / est["min"], "n": est["n"]}}
