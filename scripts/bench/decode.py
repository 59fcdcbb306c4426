"""`python -m scripts.bench.decode`: greedy and beam-search decoding of a trained G2P model, tformer's decoding
against transformers' `generate()` on BART carrying the same weights, with EOS stopping and at full length.

It trains a model with `tformer train experiment=g2p` for a few hundred steps (enough for its outputs to end
with EOS), in the shape BART has: post-norm, learned positions, a LayerNorm over the embeddings, embeddings
scaled by sqrt(d_model), GELU, output projection tied to the target embeddings. Its weights are copied into
BartForConditionalGeneration (separate source and target embedding tables, the output projection's scale folded
into lm_head) and both models must give the same logits before anything is timed.

Rows, interleaved over repetitions, on the same validation sources in the same length-sorted batches:
  EOS:  decoding stops where the model ends its outputs (a beam-search source once `beam` hypotheses ended).
  full: no token ends an output, every row runs to the batch's length limit (tformer: eos=-1; generate():
        min_new_tokens = max_new_tokens), the same number of steps on both sides.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from scripts.bench.command import TFORMER, run
from scripts.bench.flops import summary
from transformer_cli.data.loading import open_splits
from transformer_cli.data.tokenize import encode
from transformer_cli.decoding import beam_search, greedy
from transformer_cli.files import write_json
from transformer_cli.model import Seq2SeqModel
from transformer_cli.restore import restore

from .seq2seq import length_batches

# The model: G2P at d_model 256 with 3 encoder and 3 decoder layers, in BART's layout.
SHAPE = ("model=base", "model.n_layers=3", "model.norm=post", "model.positional=learned", "model.embed_norm=true",
         "model.tie_embeddings=true", "model.activation=gelu")
COMMON = ("experiment=g2p", "trainer.device=cpu", "trainer.precision=fp32", "trainer.max_epochs=1",
          "trainer.progress=false", "trainer.threads=1")

# What remains different between the two sides, printed beside the figures.
DIFFERENCES = (
    "same weights, same batches, same beam size, length penalty and step limit; fp32 on CPU, one thread",
    "step limit: the batch's longest (a x source length + b) for every source on both sides; at that limit tformer "
    "forces EOS as the last token where generate() stops after it (outputs compared without that last token)",
    "work: tformer stops computing an output (greedy) or a source (beam search) once it is done; generate() "
    "computes every row until the whole batch is done (the decoder rows x steps column shows each side's work)",
    "beam search: tformer ends a source's search with the first `beam` hypotheses that ended among each step's "
    "2 x beam best candidates; generate() counts EOS only among the `beam` best candidates and keeps the best "
    "`beam` ended ones",
    "full-length rows: tformer with eos=-1 (no token ends an output); generate() with min_new_tokens = "
    "max_new_tokens (EOS suppressed): the same steps, outputs not compared",
)


@dataclass(frozen=True)
class Mode:
    """Sizes of one run: the training overrides, the sources decoded and the repetitions."""

    train: tuple[str, ...]
    sources: int
    batch: int
    reps: int


MODES = {
    "full": Mode((*SHAPE, "trainer.max_steps=500", "data.max_eval_examples=128"), sources=256, batch=64, reps=7),
    "smoke": Mode(("model=tiny", "model.norm=post", "model.positional=learned", "model.embed_norm=true",
                   "trainer.max_steps=4", "trainer.batch_size=16", "data.max_train_examples=256",
                   "data.max_eval_examples=8"), sources=8, batch=4, reps=1),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model trained a few steps: checks the script runs")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/decode"))
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a checkpoint (or run directory) trained in the shape above, instead of training one")
    p.add_argument("--reps", type=int, default=None, help="default: the mode's")
    return p.parse_args(argv)


def train(mode: Mode, out: Path) -> Path:
    """Train the model with the CLI; its run directory."""
    run_dir = out / "run"
    run([*TFORMER, "train", *COMMON, *mode.train, f"hydra.run.dir={run_dir}"], out / "train.log")
    return run_dir


def bart_from(model: Seq2SeqModel, src_vocab: int, pad: int, bos: int, eos: int) -> nn.Module:
    """BartForConditionalGeneration with `model`'s weights (which must be in BART's layout: post-norm, learned
    positions, embedding LayerNorm, scaled embeddings); separate source and target embedding tables."""
    from transformers import BartConfig, BartForConditionalGeneration
    from transformers.models.bart.modeling_bart import BartScaledWordEmbedding

    enc, dec = model.encoder, model.decoder
    D, tgt_vocab = enc.embed.tokens.embedding_dim, dec.embed.tokens.num_embeddings
    first = enc.layers[0]
    config = BartConfig(vocab_size=tgt_vocab, d_model=D, encoder_layers=len(enc.layers), decoder_layers=len(dec.layers),
                        encoder_attention_heads=first.attn.n_heads, decoder_attention_heads=first.attn.n_heads,
                        encoder_ffn_dim=first.ff.up.out_features, decoder_ffn_dim=first.ff.up.out_features,
                        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        max_position_embeddings=enc.embed.positions.num_embeddings, scale_embedding=True,
                        pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=bos,
                        forced_eos_token_id=None, forced_bos_token_id=None, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    bart = BartForConditionalGeneration(config).eval()
    scale = enc.embed.scale
    bart.model.encoder.embed_tokens = BartScaledWordEmbedding(src_vocab, D, pad, embed_scale=scale)
    bart.model.decoder.embed_tokens = BartScaledWordEmbedding(tgt_vocab, D, pad, embed_scale=scale)
    with torch.no_grad():
        for ours, theirs in ((enc, bart.model.encoder), (dec, bart.model.decoder)):
            theirs.embed_tokens.weight.copy_(ours.embed.tokens.weight)
            theirs.embed_positions.weight.zero_()
            theirs.embed_positions.weight[2:].copy_(ours.embed.positions.weight)  # BART's positions start at 2
            _copy_norm(ours.embed.norm, theirs.layernorm_embedding)
        for ours, theirs in zip(enc.layers, bart.model.encoder.layers):
            _copy_fused(ours.attn.qkv, (theirs.self_attn.q_proj, theirs.self_attn.k_proj, theirs.self_attn.v_proj))
            _copy_linear(ours.attn.out, theirs.self_attn.out_proj)
            _copy_block(ours, theirs, (ours.norm1, ours.norm2), (theirs.self_attn_layer_norm, theirs.final_layer_norm))
        for ours, theirs in zip(dec.layers, bart.model.decoder.layers):
            _copy_fused(ours.self_attn.qkv, (theirs.self_attn.q_proj, theirs.self_attn.k_proj, theirs.self_attn.v_proj))
            _copy_linear(ours.self_attn.out, theirs.self_attn.out_proj)
            _copy_linear(ours.cross_attn.q, theirs.encoder_attn.q_proj)
            _copy_fused(ours.cross_attn.kv, (theirs.encoder_attn.k_proj, theirs.encoder_attn.v_proj))
            _copy_linear(ours.cross_attn.out, theirs.encoder_attn.out_proj)
            _copy_block(ours, theirs, (ours.norm1, ours.norm3),
                        (theirs.self_attn_layer_norm, theirs.final_layer_norm))
            _copy_norm(ours.norm2, theirs.encoder_attn_layer_norm)
        bart.lm_head.weight.copy_(model.proj.weight * model.scale_out)  # tformer scales the tied projection
        bart.final_logits_bias.zero_()
    return bart


def _copy_linear(ours: nn.Linear, theirs: nn.Linear) -> None:
    """One linear map's weight and bias."""
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def _copy_fused(ours: nn.Linear, parts: tuple[nn.Linear, ...]) -> None:
    """A fused projection (rows: query, key, value, or key, value) into separate linear maps."""
    for part, weight, bias in zip(parts, ours.weight.chunk(len(parts)), ours.bias.chunk(len(parts))):
        part.weight.copy_(weight)
        part.bias.copy_(bias)


def _copy_norm(ours: nn.Module, theirs: nn.LayerNorm) -> None:
    """A LayerNorm's scale and shift."""
    if not isinstance(ours, nn.LayerNorm):
        raise ValueError("the model has no embedding LayerNorm: train it with model.embed_norm=true")
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def _copy_block(ours: nn.Module, theirs: nn.Module, norms: tuple[nn.Module, nn.Module],
                their_norms: tuple[nn.LayerNorm, nn.LayerNorm]) -> None:
    """A layer's feed-forward block and its first and last LayerNorms."""
    _copy_linear(ours.ff.up, theirs.fc1)
    _copy_linear(ours.ff.down, theirs.fc2)
    for n, t in zip(norms, their_norms):
        _copy_norm(n, t)


@torch.no_grad()
def logits_gap(model: Seq2SeqModel, bart: nn.Module, src: torch.Tensor, mask: torch.Tensor, bos: int) -> float:
    """Largest absolute difference of the two models' teacher-forced logits on (B, S) sources and their greedy
    outputs (the check that the weights were mapped right)."""
    hyps = greedy(model, src, mask, bos, -1, torch.full((src.shape[0],), 8))
    tgt = torch.tensor([[bos] + h.tokens[:7] for h in hyps])  # (B, 8)
    ours = model(src, mask, tgt)
    theirs = bart(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    return float((ours - theirs).abs().max())


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (B, S) ids, (B, S) mask, (B,) length limits


def rows(model: Seq2SeqModel, bart: nn.Module, bos: int, eos: int, beam: int, penalty: float
         ) -> dict[str, Callable[[Batch], list[list[int]]]]:
    """name -> decode one batch, returning each source's output tokens (without BOS and EOS)."""

    def ours(k: int, stop: bool) -> Callable[[Batch], list[list[int]]]:
        def go(batch: Batch) -> list[list[int]]:
            src, mask, limits = batch
            limits = torch.full_like(limits, int(limits.max()))  # generate() takes one limit per batch
            end = eos if stop else -1  # eos=-1: no token ends an output
            hyps = greedy(model, src, mask, bos, end, limits) if k == 1 else \
                beam_search(model, src, mask, bos, end, limits, beam=k, length_penalty=penalty)
            return [h.tokens for h in hyps]
        return go

    def theirs(k: int, stop: bool) -> Callable[[Batch], list[list[int]]]:
        def go(batch: Batch) -> list[list[int]]:
            src, mask, limits = batch
            n = int(limits.max())
            extra = {"early_stopping": True, "length_penalty": penalty} if k > 1 else {}
            out = bart.generate(input_ids=src, attention_mask=mask.long(), num_beams=k, do_sample=False,
                                max_new_tokens=n, min_new_tokens=0 if stop else n, no_repeat_ngram_size=0,
                                eos_token_id=eos, pad_token_id=0, decoder_start_token_id=bos, **extra)
            return [_until(row, eos) for row in out[:, 1:].tolist()]
        return go

    out: dict[str, Callable[[Batch], list[list[int]]]] = {}
    for stop, when in ((True, "EOS"), (False, "full")):
        for k, kind in ((1, "greedy"), (beam, f"beam {beam}")):
            out[f"tformer {kind}, {when}"] = ours(k, stop)
            out[f"generate {kind}, {when}"] = theirs(k, stop)
    return out


def _until(row: list[int], eos: int) -> list[int]:
    """Tokens before the first EOS (generate() pads finished rows after it)."""
    return row[: row.index(eos)] if eos in row else row


class StepCounter:
    """Counts decoder calls and the rows they computed, through forward hooks on decoders (ours and BART's)."""

    def __init__(self, decoders: tuple[nn.Module, ...]) -> None:
        self.steps = 0
        self.rows = 0
        for decoder in decoders:
            decoder.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """One decoder call: (N, T, D) states out, as a tensor (ours) or a model output (BART's)."""
        hidden = output if isinstance(output, torch.Tensor) else output.last_hidden_state
        self.steps += 1
        self.rows += hidden.shape[0]


def time_rows(decoders: dict[str, Callable[[Batch], list[list[int]]]], batches: list[Batch], reps: int,
              counter: StepCounter, seed: int = 0
              ) -> tuple[dict[str, list[float]], dict[str, list[list[int]]], dict[str, Any]]:
    """Seconds per repetition of each row (interleaved, the rows in an order shuffled per repetition under
    `seed`); each row's outputs, decoder steps and decoded rows (summed over steps) from its untimed warm-up."""
    outputs, work = {}, {}
    for name, go in decoders.items():
        counter.steps = counter.rows = 0
        outputs[name] = [t for b in batches for t in go(b)]
        work[name] = {"decoder_steps": counter.steps, "row_steps": counter.rows}
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    order = random.Random(seed)
    for _ in range(reps):
        for name in order.sample(list(decoders), len(decoders)):
            go = decoders[name]
            start = time.perf_counter()
            for b in batches:
                go(b)
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs, work


def report(seconds: dict[str, list[float]], outputs: dict[str, list[list[int]]], work: dict[str, Any],
           batches: list[Batch], beam: int) -> dict[str, Any]:
    """Examples/s and decoding work per row, ours / theirs speed ratios (per repetition, then the median),
    output agreement and how many outputs ended by EOS before their limit."""
    n = sum(len(b[0]) for b in batches)
    limits = [int(b[2].max()) for b in batches for _ in b[2]]  # every source gets its batch's longest limit
    result: dict[str, Any] = {"sources": n, "batch": len(batches[0][0]), "rows": {}, "speedup": {},
                              "same_output": {}, "ended_by_eos": {}, "differences": list(DIFFERENCES)}
    for name, s in seconds.items():
        result["rows"][name] = {"seconds": summary(s), "examples_per_s": summary([n / x for x in s]), **work[name]}
    for kind in ("greedy", f"beam {beam}"):
        for when in ("EOS", "full"):
            ours, theirs = seconds[f"tformer {kind}, {when}"], seconds[f"generate {kind}, {when}"]
            result["speedup"][f"{kind}, {when}"] = summary([t / o for o, t in zip(ours, theirs)])
        a, b = outputs[f"tformer {kind}, EOS"], outputs[f"generate {kind}, EOS"]
        result["same_output"][kind] = sum(x[: m - 1] == y[: m - 1] for x, y, m in zip(a, b, limits)) / n
        for side in ("tformer", "generate"):
            ended = sum(len(t) < limit - 1 for t, limit in zip(outputs[f"{side} {kind}, EOS"], limits))
            result["ended_by_eos"][f"{side} {kind}"] = ended / n
    return result


def print_table(result: dict[str, Any]) -> None:
    """The figures as a Markdown table, the differences below it."""
    print(f"{result['sources']} sources in batches of {result['batch']}; medians of "
          f"{next(iter(result['rows'].values()))['seconds']['n']} interleaved repetitions; "
          f"logits gap {result['logits_gap']:.1e}")
    print("| decoding | stop | tformer ex/s | generate() ex/s | speed-up | decoder rows x steps (tformer / generate) "
          "| same output | ended by EOS (tformer / generate) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, ratio in result["speedup"].items():
        kind, when = key.split(", ")
        ours, theirs = result["rows"][f"tformer {key}"], result["rows"][f"generate {key}"]
        work = f"{ours['row_steps']:,} / {theirs['row_steps']:,}"
        same = f"{result['same_output'][kind]:.3f}" if when == "EOS" else "-"
        ended = f"{result['ended_by_eos'][f'tformer {kind}']:.3f} / {result['ended_by_eos'][f'generate {kind}']:.3f}" \
            if when == "EOS" else "-"
        print(f"| {kind} | {when} | {ours['examples_per_s']['median']:.1f} | {theirs['examples_per_s']['median']:.1f} "
              f"| {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}) | {work} | {same} | {ended} |")
    for line in result["differences"]:
        print(f"- {line}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or load) the model, map it into BART, check the logits agree, time the rows on one thread (the
    caller's thread count is restored); the figures, also saved as decode.json under args.out."""
    mode = MODES["smoke" if args.smoke else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _measure(args, mode)
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "decode.json", result)
    return result


def _measure(args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    """The figures of `measure`, on the thread count already set."""
    restored = restore(args.checkpoint or train(mode, args.out))
    model, task = restored.model.eval(), restored.task
    data = OmegaConf.merge(restored.config.data, {"max_eval_examples": mode.sources})  # the first N, as in training
    split = open_splits(data)["validation"].read()
    sources = encode(restored.checkpoint.tokenizer, split.texts[: mode.sources])
    batches = length_batches(sources, task.cfg, mode.batch)
    bart = bart_from(model, model.encoder.embed.tokens.num_embeddings, 0, task.bos, task.eos)
    gap = logits_gap(model, bart, batches[0][0], batches[0][1], task.bos)
    if gap > 1e-3:
        raise SystemExit(f"BART's logits differ from tformer's by {gap:.2e}: the weights were not mapped right")
    beam = int(task.cfg.beam_size)
    counter = StepCounter((model.decoder, bart.model.decoder))
    with torch.no_grad():
        seconds, outputs, work = time_rows(rows(model, bart, task.bos, task.eos, beam, float(task.cfg.length_penalty)),
                                           batches, args.reps or mode.reps, counter)
    return {"checkpoint": str(restored.checkpoint.path), "logits_gap": gap, "mode": "smoke" if args.smoke else "full",
            **report(seconds, outputs, work, batches, beam)}


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table and save the JSON."""
    print_table(measure(parse_args(argv)))


if __name__ == "__main__":
    main()
