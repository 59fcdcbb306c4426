"""Seq2seq: decoding equivalences, padding-invariant loss, metrics, and learning on real G2P data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train, run_cli
from omegaconf import OmegaConf

from transformer_cli.config import ModelConfig
from transformer_cli.data.batching import EncodedSplit, collate
from transformer_cli.decoding import beam_search, greedy
from transformer_cli.device import Precision
from transformer_cli.loop import compute_loss, evaluate
from transformer_cli.losses import build_loss
from transformer_cli.losses.base import LossContext
from transformer_cli.losses.cross_entropy import CrossEntropyConfig
from transformer_cli.metrics import edit_distance
from transformer_cli.model import Seq2SeqModel
from transformer_cli.run import train
from transformer_cli.tasks import TASKS
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask

BOS, EOS = 4, 5


def random_model(seed: int = 0, tie: bool = False) -> Seq2SeqModel:
    """An untrained model whose outputs vary with the input (a wide random output projection)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0, tie_embeddings=tie)
    model = Seq2SeqModel(50, 40, cfg).eval()
    if not tie:
        torch.nn.init.normal_(model.proj.weight, std=1.0)
    return model


def sources(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six sources with padding, and per-source length limits."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(6, 50, (6, 9), generator=g)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[2, 6:] = False
    mask[4, 3:] = False
    src[~mask] = 0
    return src, mask, torch.tensor([12, 5, 12, 8, 12, 3])


def test_beam_of_one_equals_greedy() -> None:
    """Beam search with beam size 1 returns greedy's tokens and scores."""
    model, (src, mask, limits) = random_model(), sources()
    g = greedy(model, src, mask, BOS, EOS, limits)
    b = beam_search(model, src, mask, BOS, EOS, limits, beam=1)
    assert [h.tokens for h in g] == [h.tokens for h in b]
    assert [h.score for h in g] == pytest.approx([h.score for h in b], abs=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_cache_changes_nothing(beam: int) -> None:
    """Decoding with the key/value cache equals recomputing every prefix, token for token."""
    model, (src, mask, limits) = random_model(), sources()
    run = greedy if beam == 1 else beam_search
    kwargs = {} if beam == 1 else {"beam": beam}
    cached = run(model, src, mask, BOS, EOS, limits, use_cache=True, **kwargs)
    plain = run(model, src, mask, BOS, EOS, limits, use_cache=False, **kwargs)
    assert [h.tokens for h in cached] == [h.tokens for h in plain]
    assert [h.score for h in cached] == pytest.approx([h.score for h in plain], abs=1e-4)


def test_beam_finds_no_worse_scores_and_respects_limits() -> None:
    """Beam 4 scores at least as well as greedy (length penalty 0), and no output exceeds its limit."""
    model, (src, mask, limits) = random_model(), sources()
    g = greedy(model, src, mask, BOS, EOS, limits)
    b = beam_search(model, src, mask, BOS, EOS, limits, beam=4, length_penalty=0.0)
    assert all(hb.score >= hg.score - 1e-5 for hb, hg in zip(b, g))
    assert all(len(h.tokens) < int(n) for h, n in zip(b + g, list(limits) * 2))


def test_no_repeat_ngram() -> None:
    """With no_repeat_ngram=2 no bigram occurs twice in an output."""
    model, (src, mask, limits) = random_model(tie=True), sources()
    for h in beam_search(model, src, mask, BOS, EOS, limits * 3, beam=3, no_repeat_ngram=2):
        grams = list(zip(h.tokens, h.tokens[1:]))
        assert len(grams) == len(set(grams))


def seq2seq_task() -> Seq2SeqTask:
    """A task with a target vocabulary trained on a few phoneme strings."""
    cfg = OmegaConf.structured(Seq2SeqConfig(target_vocab_size=60, target_min_frequency=1))
    targets = ["HH AH0 L OW1", "W ER1 L D", "K AE1 T", "D AO1 G"] * 5
    return Seq2SeqTask(cfg, "index", json.loads(json.dumps(Seq2SeqTask.fit_state(targets, cfg, None, "t"))))


def test_targets_are_framed_and_decode_back() -> None:
    """Targets become [BOS] ... [EOS]; decoding the ids gives the text back."""
    task = seq2seq_task()
    ids = task.encode_targets(["HH AH0 L OW1"], Where("train", "t"))[0]
    assert ids[0] == task.bos and ids[-1] == task.eos
    assert task.decode(ids.tolist()) == "HH AH0 L OW1"


def test_padding_does_not_change_the_loss() -> None:
    """Padding sources and targets further (a longer batch mate, extra columns) leaves the loss unchanged."""
    task = seq2seq_task()
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0), 30).eval()
    loss = build_loss(CrossEntropyConfig(label_smoothing=0.1), task.loss_context(None))
    src = [np.array([7, 8, 9], dtype=np.int32), np.array([10, 11], dtype=np.int32)]
    tgt = task.encode_targets(["K AE1 T", "D AO1 G"], Where("train", "t"))
    precision = Precision("fp32", torch.device("cpu"))
    with torch.no_grad():
        alone = compute_loss(model, collate(src, EncodedSplit(src, tgt).targets_of(np.arange(2)), np.arange(2)),
                             task, loss, precision)[0]
    longer_src = [*src, np.arange(6, 20, dtype=np.int32)]
    longer_tgt = [*tgt, task.encode_targets(["HH AH0 L OW1 W ER1 L D K AE1 T"], Where("train", "t"))[0]]
    padded = collate(longer_src, EncodedSplit(longer_src, longer_tgt).targets_of(np.arange(3)), np.arange(3))
    with torch.no_grad():
        logits = task.forward(model, padded)
        per_row = [F.cross_entropy(*task.loss_inputs(logits[i : i + 1], padded.targets[i : i + 1]),
                                   label_smoothing=0.1, ignore_index=-100, reduction="sum") for i in range(2)]
    assert float(alone.total) == pytest.approx(float(sum(per_row)), rel=1e-5)
    assert float(alone.weight) == sum(len(t) - 1 for t in tgt)


def test_no_smoothing_equals_plain_cross_entropy() -> None:
    """Label smoothing 0 is exactly cross-entropy over the real target tokens."""
    task = seq2seq_task()
    logits = torch.randn(2, 4, task.vocab_size)
    targets = torch.tensor([[task.bos, 9, 10, task.eos, 0], [task.bos, 11, task.eos, 0, 0]])
    flat, labels = task.loss_inputs(logits, targets)
    value = build_loss(CrossEntropyConfig(), LossContext(task.vocab_size))(flat, labels)
    reference = F.cross_entropy(logits.reshape(-1, task.vocab_size), torch.tensor([9, 10, task.eos, -100,
                                                                                     11, task.eos, -100, -100]))
    assert float(value.mean) == pytest.approx(float(reference), rel=1e-6)
    assert float(value.weight) == 5


def test_edit_distance() -> None:
    """Levenshtein distance on token lists."""
    assert edit_distance("K AE1 T".split(), "K AE1 T".split()) == 0
    assert edit_distance("K AH0 T S".split(), "K AE1 T".split()) == 2
    assert edit_distance([], ["a", "b"]) == 2


def test_evaluation_reports_every_listed_metric() -> None:
    """evaluate() on a seq2seq task decodes and reports every metric the task lists."""
    task = seq2seq_task()
    task.final_decoding()
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0), 30)
    src = [np.array([7, 8, 9], dtype=np.int32), np.array([10, 11], dtype=np.int32)]
    split = EncodedSplit(src, task.encode_targets(["K AE1 T", "D AO1 G"], Where("validation", "t")))
    loss = build_loss(CrossEntropyConfig(), task.loss_context(None))
    scalars, details = evaluate(model, split.batches(8, shuffle=False, bucket=True), task, loss,
                                Precision("fp32", torch.device("cpu")))
    assert set(TASKS["seq2seq"].metric_names) <= set(scalars)
    assert set(scalars) - {"count", "decoded"} <= set(TASKS["seq2seq"].metrics)  # each has a direction
    assert scalars["decoded"] == 2 and len(details["examples"]) == 2


G2P = ["experiment=g2p", "data.max_train_examples=3000", "data.max_eval_examples=200", "model.d_model=96",
       "model.d_ff=256", "trainer.batch_size=64", "trainer.max_epochs=8", "schedule.warmup_steps=100",
       "optim.lr=2e-3", "trainer.progress=false", "task.beam_size=2", "task.eval_decode_every=2"]


@pytest.mark.slow
def test_g2p_learns_and_predicts(tmp_path: Path) -> None:
    """On 3,000 real CMUdict pairs and 376 steps, BLEU, exact match and PER move far from an untrained
    model's; predict turns new words into pronunciations."""
    run_dir = tmp_path / "run"
    train(compose_train(G2P), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    test = summary["final"]["test"]
    print("G2P test:", {k: round(v, 4) for k, v in test.items() if isinstance(v, float)})
    first = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "eval")
    # An untrained model scores BLEU 0, exact match 0, PER ~1 (measured: BLEU 20.7, EM 0.04, PER 0.48 at lr 1e-3).
    assert test["bleu"] > 10 and test["exact_match"] > 0.01 and test["per"] < 0.65
    assert test["token_accuracy"] > first["token_accuracy"] + 0.3
    (tmp_path / "words.txt").write_text("h e l l o\nw o r l d\n")
    proc = run_cli(["predict", f"ckpt={run_dir}", "input=words.txt", "output=-"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(r["text"] and r["score"] < 0 for r in rows)
    print("predictions:", [r["text"] for r in rows])
