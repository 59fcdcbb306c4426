"""task=qa: windows and their span targets, what the loss sees, the answer search, merged predictions."""

from __future__ import annotations

import json
import random
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from transformer_cli.config import ModelConfig, TokenizerConfig
from transformer_cli.data.batching import Batch, Encoded, collate
from transformer_cli.data.loading import RawSplit
from transformer_cli.data.tokenize import train_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.losses.cross_entropy import CrossEntropyConfig
from transformer_cli.tasks.common import Where
from transformer_cli.tasks.qa import HEAD, QAConfig, QATask, best_spans, context_mask

WORDS = ("the river flows north through old stone towns where bakers sell bread and fishermen mend nets while "
         "children play near the bridge built in 1820 by a Scottish engineer named Thomas").split()
TRAIN = Where(split="train", source="train.jsonl")


def paragraph(rng: random.Random, n: int) -> str:
    """n words, some followed by punctuation."""
    return " ".join(rng.choice(WORDS) + rng.choice(["", "", "", ",", "."]) for _ in range(n))


def rows_of(n: int = 40, seed: int = 0, words: tuple[int, int] = (20, 120)) -> RawSplit:
    """Question / context rows, each answer a run of 1-4 words of its context at its true offset."""
    rng = random.Random(seed)
    texts, contexts, answers = [], [], []
    for _ in range(n):
        context = paragraph(rng, rng.randint(*words))
        spaces = [0] + [i + 1 for i, ch in enumerate(context) if ch == " "]
        a = rng.randrange(len(spaces))
        start = spaces[a]
        stop = spaces[a + rng.randint(1, 4)] - 1 if a + 4 < len(spaces) else len(context)
        text = context[start:stop].rstrip(",.")
        texts.append("where does " + rng.choice(WORDS) + " go?")
        contexts.append(context)
        answers.append({"text": [text], "answer_start": [start]})
    return RawSplit(texts, contexts, answers, TRAIN)


def make_task(max_length: int = 48, doc_stride: int = 16, **settings: object) -> tuple[QATask, object]:
    """A qa task over a BPE vocabulary trained on the rows' texts, windows of max_length tokens."""
    rows = rows_of()
    tokenizer = train_tokenizer(rows.texts + rows.pairs, TokenizerConfig(vocab_size=300, min_frequency=1,
                                                                         lowercase=False, max_length=max_length))
    cfg = OmegaConf.structured(QAConfig(doc_stride=doc_stride, **settings))
    state = json.loads(json.dumps(QATask.fit_state([], cfg, None, "train.jsonl", tokenizer)))
    return QATask(cfg, "span", state), tokenizer


def batch_of(encoded: Encoded) -> Batch:
    """Every window of an encoding as one padded batch, as the loop builds it."""
    split = encoded.split()
    idx = np.arange(len(split))
    return collate([split.ids[i] for i in idx], split.targets_of(idx), idx)


def test_span_targets_cover_exactly_the_answer_characters() -> None:
    """Every window that holds an answer targets tokens whose characters are the answer; windows without it target
    [CLS]; every answer is held whole by at least one window."""
    task, tokenizer = make_task()
    rows = rows_of()
    encoded = task.encode(rows, tokenizer)
    assert len(encoded.lengths) > len(rows.texts)  # long contexts were cut into several windows
    held = set()
    for target in encoded.targets:
        row = int(target[2])
        context, answer = rows.pairs[row - 1], rows.labels[row - 1]
        start, end = int(target[0]), int(target[1])
        offsets = target[HEAD:].reshape(-1, 2) - 1
        if (start, end) == (0, 0):
            continue
        held.add(row)
        assert context[offsets[start, 0]:offsets[end, 1]] == answer["text"][0]
    assert held == set(range(1, len(rows.texts) + 1))


def test_consecutive_windows_share_doc_stride_context_tokens() -> None:
    """run_qa.py's stride: the next window starts doc_stride context tokens before the previous one ended."""
    task, tokenizer = make_task(max_length=40, doc_stride=7)
    encoded = task.encode(rows_of(10, words=(60, 90)), tokenizer)
    by_row: dict[int, list[list[tuple[int, int]]]] = {}
    for target, n in zip(encoded.targets, encoded.lengths):
        offsets = [tuple(p) for p in (target[HEAD:].reshape(-1, 2) - 1).tolist()]
        by_row.setdefault(int(target[2]), []).append([p for p in offsets if p != (-1, -1)])
        assert n <= 40
    pairs = 0
    for windows in by_row.values():
        for left, right in zip(windows, windows[1:]):
            assert left[-7:] == right[:7]
            pairs += 1
    assert pairs > 10


def test_answers_that_are_not_in_the_context_are_errors_naming_the_row() -> None:
    task, tokenizer = make_task()
    rows = rows_of(3)
    rows.labels[1] = {"text": ["bread"], "answer_start": [0]}
    rows.pairs[1] = "cakes and bread"
    with pytest.raises(TformerError, match="row 2 of the train split"):
        task.encode(rows, tokenizer)
    rows.labels[1] = json.dumps([{"text": "bread", "answer_start": 10}])  # a JSON string, SQuAD's list form
    assert len(task.encode(rows, tokenizer).side) == 3
    rows.labels[1] = {"text": [], "answer_start": []}
    with pytest.raises(TformerError, match="no answer"):
        task.encode(rows, tokenizer)


def test_loss_is_the_mean_of_start_and_end_cross_entropy_over_context_positions() -> None:
    """loss_inputs: positions outside the context (but [CLS]) can never take probability; the ce loss over them
    equals torch's cross-entropy on logits masked by hand."""
    from transformer_cli.losses import build_loss
    from transformer_cli.losses.base import LossContext

    task, tokenizer = make_task()
    batch = batch_of(task.encode(rows_of(8), tokenizer))
    B, T = batch.input_ids.shape
    outputs = torch.randn(B, T, 2, generator=torch.Generator().manual_seed(0))
    logits, positions = task.loss_inputs(outputs, batch.targets)
    value = build_loss(OmegaConf.structured(CrossEntropyConfig), LossContext(num_outputs=T))(logits, positions)
    allowed = context_mask(batch.targets, T)
    allowed[:, 0] = True
    reference = []
    for which in (0, 1):
        z = outputs[..., which].masked_fill(~allowed, -1e30)
        reference.append(F.cross_entropy(z, batch.targets[:, which]))
    assert float(value.mean) == pytest.approx(float(sum(reference) / 2), rel=1e-6)
    assert not (allowed & ~batch.mask).any() and not allowed[:, 1].any()  # padding and question: never


def test_loss_is_finite_with_huge_logits_and_gradients_are_finite() -> None:
    from transformer_cli.losses import build_loss
    from transformer_cli.losses.base import LossContext

    task, tokenizer = make_task()
    batch = batch_of(task.encode(rows_of(6), tokenizer))
    B, T = batch.input_ids.shape
    outputs = (torch.randn(B, T, 2, generator=torch.Generator().manual_seed(1)) * 1e4).requires_grad_()
    loss = build_loss(OmegaConf.structured(CrossEntropyConfig), LossContext(num_outputs=T))(
        *task.loss_inputs(outputs, batch.targets))
    assert torch.isfinite(loss.mean)
    loss.mean.backward()
    assert torch.isfinite(outputs.grad).all()
    allowed = context_mask(batch.targets, T)
    allowed[:, 0] = True
    assert (outputs.grad[~allowed] == 0).all()  # masked positions take no gradient


def brute_force(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_length: int) -> tuple:
    """The best (score, start, end) over every valid pair of one window, by enumeration."""
    best = (float("-inf"), -1, -1)
    T = len(start)
    for i in range(T):
        for j in range(i, min(T, i + max_length)):
            if context[i] and context[j] and float(start[i] + end[j]) > best[0]:
                best = (float(start[i] + end[j]), i, j)
    return best


def test_windowed_best_span_equals_brute_force_over_every_valid_pair() -> None:
    """On random logits, the best answer of each example over its windows is the best valid (start, end) pair
    found by enumerating them all; positions outside the context are never chosen, whatever their logits."""
    task, tokenizer = make_task(max_length=40, doc_stride=9, n_best=40, max_answer_length=6)
    rows = rows_of(12, seed=3)
    encoded = task.encode(rows, tokenizer)
    batch = batch_of(encoded)
    B, T = batch.input_ids.shape
    gen = torch.Generator().manual_seed(4)
    outputs = torch.randn(B, T, 2, generator=gen)
    context = context_mask(batch.targets, T)
    outputs[~context] += 100.0  # question, specials and padding look best: they must never win
    metrics = task.new_metrics(encoded.side)
    task.observe(metrics, torch.nn.Identity(), batch, outputs)
    offsets = batch.targets[:, HEAD:].reshape(B, -1, 2) - 1
    expected: dict[int, tuple[float, str]] = {}
    for b in range(B):
        score, i, j = brute_force(outputs[b, :, 0], outputs[b, :, 1], context[b], 6)
        row = int(batch.targets[b, 2])
        if i >= 0 and (row not in expected or score > expected[row][0]):
            expected[row] = (score, rows.pairs[row - 1][int(offsets[b, i, 0]):int(offsets[b, j, 1])])
    assert {row: metrics.answer(row) for row in expected} == {row: text for row, (_, text) in expected.items()}
    assert all(metrics.best[row][0] == pytest.approx(score) for row, (score, _) in expected.items())


def test_best_spans_with_few_candidates_searches_the_best_starts_and_ends_only() -> None:
    """n_best limits the search to the top starts x top ends, as run_qa.py's postprocessing."""
    start = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0]])
    end = torch.tensor([[0.0, 1.0, 2.0, 0.5, 6.0]])
    context = torch.tensor([[False, True, True, True, True]])
    score, s, e = best_spans(start, end, context, n_best=2, max_length=30)
    assert (float(score), int(s), int(e)) == (11.0, 1, 4)
    score, s, e = best_spans(start, end, context, n_best=2, max_length=2)
    assert (float(score), int(s), int(e)) == (10.0, 3, 4)
    start, end = torch.tensor([[0.0, 5.0, 4.0, 0.0, 3.9]]), torch.tensor([[0.0, 0.1, 0.2, 0.0, 6.0]])
    score, s, e = best_spans(start, end, context, n_best=2, max_length=1)  # (4, 4) scores 9.9, but 4 is no top start
    assert (round(float(score), 4), int(s), int(e)) == (4.2, 2, 2)
    score, s, e = best_spans(start, end, context, n_best=5, max_length=1)
    assert (round(float(score), 4), int(s), int(e)) == (9.9, 4, 4)
    score, _, _ = best_spans(start, end, torch.zeros_like(context), n_best=2, max_length=2)
    assert score.item() == float("-inf")  # no context: no answer


def test_predictions_merge_windows_into_one_answer_per_question() -> None:
    """predict's records per window become one per question: the answer text sliced by its offsets."""
    task, tokenizer = make_task()
    rows = rows_of(5)
    encoded = task.encode(RawSplit(rows.texts, rows.pairs, [None] * 5, Where("input", "x")), tokenizer,
                          labelled=False)
    assert all("answers" not in r for r in encoded.side)
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_positions=64),
                             tokenizer.get_vocab_size()).eval()
    split = encoded.split()
    records = [{}] * len(split)
    with torch.no_grad():
        for batch in split.batches(4, shuffle=False, bucket=True):
            for i, record in zip(batch.index.tolist(), task.predict(model, batch, 0)):
                records[i] = record
    merged = task.merge_predictions(records, encoded)
    assert len(merged) == 5
    for record, context in zip(merged, rows.pairs):
        assert record["answer"] == context[record["start"]:record["end"]] and record["answer"]
        assert record["answer"] == record["answer"].strip() and isinstance(record["score"], float)


def test_a_question_longer_than_the_window_is_an_error_naming_its_row() -> None:
    task, tokenizer = make_task(max_length=24, doc_stride=4)
    rows = rows_of(3)
    rows.texts[2] = " ".join(["where"] * 40)
    with pytest.raises(TformerError, match="row 3 of the train split") as err:
        task.encode(rows, tokenizer)
    assert "data.tokenizer.max_length" in err.value.hint


def test_class_options_of_the_loss_are_refused_for_answer_spans(compose_train: Callable) -> None:
    from transformer_cli.validate import check_train_config

    for override, needle in (("loss.label_smoothing=0.1", "label_smoothing"),
                             ("loss.class_weights=auto", "class_weights")):
        with pytest.raises(TformerError, match=needle):
            check_train_config(compose_train(["task=qa", override]))
