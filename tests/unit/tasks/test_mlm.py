"""task=mlm: what is masked and how, what the loss sees, fixed masks for held-out text, fill-mask records."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli.config import ModelConfig, TokenizerConfig
from transformer_cli.data.batching import Batch
from transformer_cli.data.tokenize import MASK, train_tokenizer
from transformer_cli.tasks.mlm import IGNORE, MLMConfig, MLMTask, fixed_draws

WORDS = "the film was a very good and quite long story with some great actors but dull music".split()


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Sentences of 4 to 20 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(n)]


def make_task(vocab_size: int = 120, **settings: object) -> tuple[MLMTask, object]:
    """An MLM task over a tokenizer trained (with [MASK]) on the corpus."""
    tokenizer = train_tokenizer(corpus(), TokenizerConfig(vocab_size=vocab_size, min_frequency=1), (MASK,))
    cfg = OmegaConf.structured(MLMConfig(**settings))
    return MLMTask(cfg, "index", MLMTask.fit_state([None] * 3, cfg, None, "corpus", tokenizer)), tokenizer


def batch_of(tokenizer: object, texts: list[str]) -> Batch:
    """A padded batch of the texts."""
    encoded = tokenizer.encode_batch(texts)
    T = max(len(e.ids) for e in encoded)
    ids, mask = torch.zeros(len(texts), T, dtype=torch.long), torch.zeros(len(texts), T, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = torch.tensor(e.ids), True
    return Batch(ids, mask, torch.zeros(len(texts), dtype=torch.long), torch.arange(len(texts)))


def test_masking_statistics() -> None:
    """15 % of the real tokens chosen, of those 80 % [MASK], 10 % random, 10 % kept; specials and padding never."""
    task, tokenizer = make_task()
    batch = batch_of(tokenizer, corpus(2000, seed=1))
    torch.manual_seed(0)
    hidden, chosen = task.mask(batch.input_ids, batch.mask, torch.rand((*batch.input_ids.shape, 3)))
    special = torch.isin(batch.input_ids, task.special)
    assert not (chosen & (special | ~batch.mask)).any()  # [CLS], [SEP] and padding are never chosen
    candidates = batch.mask & ~special
    assert chosen.sum() / candidates.sum() == pytest.approx(0.15, abs=0.01)
    masked = (hidden == task.mask_id) & chosen
    kept = (hidden == batch.input_ids) & chosen
    n = chosen.sum().item()
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / len(task.tokens), abs=0.02)  # a random draw may hit it
    assert torch.equal(hidden[~chosen], batch.input_ids[~chosen])  # nothing else changes


def test_the_loss_sees_only_the_chosen_positions() -> None:
    """The model scores the chosen positions only, against the tokens that were there; the loss is theirs alone."""
    from transformer_cli.losses import build_loss
    from transformer_cli.losses.cross_entropy import CrossEntropyConfig

    task, tokenizer = make_task()
    batch = batch_of(tokenizer, corpus(40))
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tokenizer.get_vocab_size())
    torch.manual_seed(1)
    logits, labels = task.forward(model.train(), batch)
    torch.manual_seed(1)
    _, chosen = task.mask(batch.input_ids, batch.mask, torch.rand((*batch.input_ids.shape, 3)))
    assert logits.shape == (int(chosen.sum()), tokenizer.get_vocab_size())
    assert torch.equal(labels, batch.input_ids[chosen]) and not (labels == IGNORE).any()
    scores, targets = task.loss_inputs((logits, labels), batch.targets)
    loss = build_loss(OmegaConf.structured(CrossEntropyConfig()), task.loss_context(batch.targets))(scores, targets)
    expected = torch.nn.functional.cross_entropy(logits, batch.input_ids[chosen], reduction="sum")
    assert loss.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.weight.item() == int(chosen.sum())  # one per chosen position, none for the others


def test_held_out_masks_are_fixed_and_training_masks_are_fresh() -> None:
    task, tokenizer = make_task()
    batch = batch_of(tokenizer, corpus(30))
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tokenizer.get_vocab_size())
    model.eval()
    with torch.no_grad():
        assert torch.equal(task.forward(model, batch)[1], task.forward(model, batch)[1])
    model.train()
    first, second = task.forward(model, batch)[1], task.forward(model, batch)[1]
    assert first.shape != second.shape or not torch.equal(first, second)


def test_held_out_masks_do_not_depend_on_the_batching() -> None:
    """An example's held-out mask is the same alone, in a batch with others, and with more padding."""
    task, tokenizer = make_task()
    texts = corpus(12, seed=3)
    together = batch_of(tokenizer, texts)
    draws = fixed_draws(together.index, together.input_ids.shape[1], seed=0)
    _, chosen_together = task.mask(together.input_ids, together.mask, draws)
    assert chosen_together.any()
    for i, text in enumerate(texts):
        alone = batch_of(tokenizer, [text])
        alone.index[0] = i
        draws = fixed_draws(alone.index, alone.input_ids.shape[1] + 7, seed=0)[:, : alone.input_ids.shape[1]]
        _, chosen = task.mask(alone.input_ids, alone.mask, draws)
        n = int(alone.mask.sum())
        assert torch.equal(chosen[0, :n], chosen_together[i, :n])
    other_seed = fixed_draws(together.index, together.input_ids.shape[1], seed=1)
    assert not torch.equal(task.mask(together.input_ids, together.mask, other_seed)[1], chosen_together)


def test_fixed_draws_are_uniform() -> None:
    """The hashed draws behave like uniform ones: mean, spread and no correlation between the three."""
    draws = fixed_draws(torch.arange(400), 50, seed=0).view(-1, 3)  # 20,000 positions
    assert float(draws.min()) >= 0.0 and float(draws.max()) < 1.0
    assert draws.mean(0).tolist() == pytest.approx([0.5] * 3, abs=0.01)
    assert draws.var(0).tolist() == pytest.approx([1 / 12] * 3, abs=0.005)
    assert abs(float(torch.corrcoef(draws.T)[0, 1])) < 0.03
    assert (draws[:, 0] < 0.15).float().mean().item() == pytest.approx(0.15, abs=0.01)


def test_whole_words_are_masked_together() -> None:
    """With whole_words, every piece of a chosen word is chosen; words are cut into several pieces here."""
    task, tokenizer = make_task(vocab_size=45, whole_words=True, mask_prob=0.3)
    batch = batch_of(tokenizer, corpus(300, seed=2))
    torch.manual_seed(0)
    _, chosen = task.mask(batch.input_ids, batch.mask, torch.rand((*batch.input_ids.shape, 3)))
    continues = task.continues[batch.input_ids] & batch.mask & ~torch.isin(batch.input_ids, task.special)
    assert continues.any()  # the small vocabulary splits words into pieces
    previous = torch.cat([chosen[:, :1], chosen[:, :-1]], dim=1)
    assert torch.equal(chosen[continues], previous[continues])  # a piece goes with the piece before it


def test_fill_mask_records() -> None:
    """predict fills each [MASK] of a text with the k most probable tokens, in probability order."""
    task, tokenizer = make_task()
    batch = batch_of(tokenizer, ["the film was [MASK] good", "no mask here"])
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tokenizer.get_vocab_size())
    records = task.predict(model.eval(), batch, top_k=3)
    assert len(records[0]["masks"]) == 1 and records[1]["masks"] == []
    top = records[0]["masks"][0]["top_k"]
    assert len(top) == 3 and [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_a_tokenizer_without_a_mask_token_is_refused() -> None:
    from transformer_cli.errors import TformerError

    tokenizer = train_tokenizer(corpus(), TokenizerConfig(vocab_size=120, min_frequency=1))
    with pytest.raises(TformerError, match="no mask token"):
        MLMTask.fit_state([None], OmegaConf.structured(MLMConfig()), None, "corpus", tokenizer)


def test_every_metric_has_a_direction() -> None:
    """The metrics an evaluation reports are the task's METRICS (the loop adds the loss)."""
    from transformer_cli.tasks import TASKS

    task, tokenizer = make_task()
    batch = batch_of(tokenizer, corpus(20))
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tokenizer.get_vocab_size())
    metrics = task.new_metrics()
    with torch.no_grad():
        task.observe(metrics, model, batch, task.forward(model.eval(), batch))
    assert set(metrics.compute()) - {"count"} | {"loss"} == set(TASKS["mlm"].metrics)
