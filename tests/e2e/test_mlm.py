"""Masked-language modelling through the real code: it learns real text, reads plain text files, fills masks."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import torch

from transformer_cli.data.batching import EncodedSplit
from transformer_cli.data.loading import load_splits
from transformer_cli.data.tokenize import encode


@pytest.mark.slow
def test_mlm_lowers_held_out_perplexity_well_below_unigram(tmp_path: Path, compose_train: Callable) -> None:
    """Five hundred steps on 3,000 Rotten Tomatoes texts (labels unused): the masked tokens of held-out text
    are predicted far better than by their training frequencies alone."""
    from transformer_cli.restore import restore
    from transformer_cli.run import train

    cfg = compose_train(["task=mlm", "model=small", "data.max_train_examples=3000", "data.max_eval_examples=300",
                         "data.tokenizer.vocab_size=2000", "trainer=debug", "trainer.max_epochs=20", "trainer.max_steps=500",
                         "trainer.eval_every=500", "optim.lr=2e-3"])
    train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    restored = restore(tmp_path / "run")
    splits = load_splits(restored.config.data, labels=False)
    counts = Counter(t for ids in encode(restored.tokenizer, splits["train"].texts) for t in ids.tolist())
    total, vocab = sum(counts.values()), restored.tokenizer.get_vocab_size()
    held_out = EncodedSplit(encode(restored.tokenizer, splits["validation"].texts), torch.zeros(300))
    nll, n = 0.0, 0
    model = restored.model.eval()
    with torch.no_grad():  # the same fixed masks the evaluation scored
        for batch in held_out.batches(restored.config.trainer.eval_batch_size, shuffle=False, bucket=True):
            _, labels = restored.task.forward(model, batch)
            nll -= sum(math.log((counts[t] + 1) / (total + vocab)) for t in labels.tolist())
            n += len(labels)
    unigram = math.exp(nll / n)
    perplexity = summary["final"]["validation"]["perplexity"]
    assert perplexity < 0.6 * unigram, (perplexity, unigram)


@pytest.mark.slow
def test_plain_text_corpus_and_fill_mask(tmp_path: Path, run_cli: Callable) -> None:
    """A .txt corpus is read line by line (blank lines skipped); predict fills [MASK]; a blank file is refused."""
    lines = ["the film was good", "", "a dull story with bad music", "   ", "great actors and a long plot"] * 40
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    proc = run_cli(["train", "task=mlm", "data=local", f"data.train={tmp_path / 'corpus.txt'}", "model=tiny",
                    "data.tokenizer.min_frequency=1", "trainer=debug", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    examples = json.loads((run / "summary.json").read_text())["examples"]
    assert examples["train"] + examples["validation"] == 120  # the 80 blank lines are not examples
    (tmp_path / "masked.txt").write_text("the film was [MASK]\n")
    proc = run_cli(["predict", f"ckpt={run}", f"input={tmp_path / 'masked.txt'}", "top_k=2",
                    f"hydra.run.dir={tmp_path / 'p'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.splitlines()[0])
    assert len(record["masks"]) == 1 and len(record["masks"][0]["top_k"]) == 2

    (tmp_path / "blank.txt").write_text("\n  \n\n")
    proc = run_cli(["train", "task=mlm", "data=local", f"data.train={tmp_path / 'blank.txt'}", "model=tiny",
                    "trainer=debug", f"hydra.run.dir={tmp_path / 'r2'}"], tmp_path)
    assert proc.returncode == 2 and "blank.txt" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
