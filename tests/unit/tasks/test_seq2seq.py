"""The seq2seq task: framed targets, a padding-invariant loss, and evaluation that decodes every listed metric."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers

from transformer_cli.config import ModelConfig
from transformer_cli.data.batching import EncodedSplit, collate
from transformer_cli.device import Precision
from transformer_cli.loop import compute_loss, evaluate
from transformer_cli.losses import build_loss
from transformer_cli.losses.base import LossContext
from transformer_cli.losses.cross_entropy import CrossEntropyConfig
from transformer_cli.tasks import TASKS
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, source_key


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


def test_sources_are_their_texts_not_their_truncated_ids() -> None:
    """Two rows whose source texts differ but truncate to the same ids are two sources (two decodes, one
    reference each); two rows of the same text are one source with two references, as keyed by encode()."""
    task = seq2seq_task()
    task.final_decoding()
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0), 30)
    same = np.array([7, 8, 9], dtype=np.int32)  # what the model reads of every row
    targets = task.encode_targets(["K AE1 T", "D AO1 G", "W ER1 L D"], Where("validation", "t"))
    texts = ["a long description that", "a long description that was cut", "a long description that"]

    def scalars(side: list[int] | None) -> dict[str, float]:
        split = EncodedSplit([same, same, same], targets, side)
        loss = build_loss(CrossEntropyConfig(), task.loss_context(None))
        return evaluate(model, split.batches(8, shuffle=False, bucket=True), task, loss,
                        Precision("fp32", torch.device("cpu")), side=side)[0]

    rows = SimpleNamespace(texts=texts, pairs=None, labels=["K AE1 T", "D AO1 G", "W ER1 L D"],
                           where=Where("validation", "t"))
    words = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 2, "long": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    keys = task.encode(rows, words, labelled=True).side
    assert keys == [source_key(t) for t in texts] and keys[0] == keys[2] != keys[1]
    assert scalars(keys)["decoded"] == 2  # the first and third rows are one text
    assert scalars(None)["decoded"] == 1  # without keys: one source, as the model reads them all alike
