"""Learning tests on real data: a small encoder beats the majority class clearly on Rotten Tomatoes, a
seq2seq model learns grapheme-to-phoneme conversion from CMUdict (then predicts), a tiny one starts learning
Debian synopses (next to the lead-8 baseline it does not reach), and a summarizer on the pretrained MiniLM
beats lead-8."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.run import train

pytestmark = pytest.mark.slow

MAJORITY = 0.578  # share of "fresh" snippets in the published dataset; our test split has 725 / 1307 = 0.555


def test_small_encoder_learns_rotten_tomatoes(tmp_path: Path, compose_train: Callable) -> None:
    """2,000 training snippets, 5 epochs of the small model: test accuracy well above the majority class."""
    cfg = compose_train(["data.max_train_examples=2000", "trainer.max_epochs=5", "trainer.progress=false"])
    best = train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    test = summary["final"]["test"]
    print(f"validation accuracy {best:.4f}, test {test}")
    assert test["accuracy"] > MAJORITY + 0.05  # measured about 0.69 on 2 CPU cores in ~25 s
    assert test["mcc"] > 0.2
    losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "train"]
    assert losses[-1] < losses[0] - 0.1  # training loss goes down


G2P = ["experiment=g2p", "data.max_train_examples=3000", "data.max_eval_examples=200", "model.d_model=96",
       "model.d_ff=256", "trainer.batch_size=64", "trainer.max_epochs=8", "schedule.warmup_steps=100",
       "optim.lr=2e-3", "trainer.progress=false", "task.beam_size=2", "task.eval_decode_every=2"]


@pytest.mark.slow
def test_g2p_learns_and_predicts(tmp_path: Path, compose_train: Callable, run_cli: Callable) -> None:
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


SUMMARIZE = ["experiment=summarize", "data.max_train_examples=1500", "data.max_eval_examples=100",
             "data.tokenizer.max_length=48", "data.tokenizer.vocab_size=2000",
             "model.d_model=64", "model.d_ff=128", "model.n_layers=1", "trainer.max_epochs=4",
             "trainer.batch_size=16", "schedule.warmup_steps=50", "optim.lr=3e-3", "task.beam_size=1",
             "trainer.threads=1", "trainer.progress=false"]


def lead8(split: str) -> dict[str, float]:
    """ROUGE of the first 8 words of each description on the first 100 rows of a split (what
    data.max_eval_examples=100 keeps), rows of the same description pooled as the evaluation pools them."""
    import csv

    from transformer_cli.data.builtin import prepare_builtin
    from transformer_cli.metrics.rouge import rouge

    with prepare_builtin("debian_descriptions")[split].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:100]
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r["source"], []).append(r["target"])
    return rouge([(" ".join(source.split()[:8]), targets) for source, targets in refs.items()])


@pytest.mark.slow
def test_summarize_learns_on_debian_descriptions(tmp_path: Path, compose_train: Callable) -> None:
    """On 1,500 real Debian description -> synopsis pairs (376 steps), a tiny copying encoder-decoder (the
    preset's shared vocabulary and copy attention) learns: its loss falls from its first evaluation (after one
    epoch) and its test ROUGE-L passes 8 (measured: 11.7; untrained: 0; the same budget without copying: 6.1). Printed next to it: the
    lead-8 baseline (the description's first 8 words) on the same test examples (24.3), which this budget does
    not reach (test_minilm_summarizer_beats_lead8 below does, from the pretrained encoder)."""
    train(compose_train(SUMMARIZE), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    test = summary["final"]["test"]
    first = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "eval")
    lead = lead8("test")
    print("summarize test:", {k: round(v, 3) for k, v in test.items() if isinstance(v, float)}, "first eval:",
          {k: round(first[k], 3) for k in ("loss", "token_accuracy", "rougeL")}, "lead-8:", lead)
    assert test["rougeL"] > 8.0  # an untrained decoder's outputs score 0
    assert test["loss"] < first["loss"]
    assert lead["rougeL"] > 20.0  # the baseline is computed on real pairs: far above the tiny model


SUMMARIZE_MINILM = ["experiment=summarize_minilm", "data.max_train_examples=4800", "data.max_eval_examples=100",
                    "data.tokenizer.max_length=32", "trainer.batch_size=16", "optim.lr=3e-4",
                    "schedule.warmup_steps=30", "trainer.max_epochs=1", "trainer.threads=1", "trainer.progress=false"]


def test_minilm_summarizer_beats_lead8(tmp_path: Path, compose_train: Callable, minilm_dir: Path) -> None:
    """The summarize_minilm preset on 4,800 real pairs (300 steps of 16, descriptions cut at 32 WordPiece tokens,
    one thread: about 7 minutes) beats the lead-8 baseline in ROUGE-L on the validation and the test
    descriptions it is evaluated on (measured: validation 28.19 against 25.57, test 30.01 against 24.27)."""
    train(compose_train(SUMMARIZE_MINILM), tmp_path)
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    for split in ("validation", "test"):
        lead = lead8(split)
        print(f"{split}: summarize_minilm", {k: round(final[split][k], 2) for k in ("rouge1", "rouge2", "rougeL")},
              "lead-8", {k: round(v, 2) for k, v in lead.items()})
        assert final[split]["rougeL"] > lead["rougeL"] + 1.0
