"""Extractive question answering (SQuAD v1.1): find the answer to a question as a span of its context.

The question and the context go through the encoder as a sentence pair, [CLS] question [SEP] context [SEP];
a span head scores every token as the answer's start and as its end. A context longer than the window
(`data.tokenizer.max_length` tokens) is cut into overlapping windows, consecutive windows sharing
`task.doc_stride` context tokens: exactly the windows of Hugging Face's run_qa.py, whose tokenizer call
(truncation="only_second", stride=doc_stride, return_overflowing_tokens=True) this is.

Each window's target is the token where the (first) answer starts and the one where it ends, or the [CLS]
position 0 when the window does not hold the whole answer. The loss (the `ce` loss over positions, target
kind "span") sees the start and end logits with every position that cannot hold an answer (question,
special tokens, padding; [CLS] stays, as the "not in this window" slot) set to the most negative float
before its log-softmax. An example's answer is the best span over all its windows: start and end inside
the context, start <= end, at most `task.max_answer_length` tokens, score start logit + end logit, among the
`task.n_best` best starts and ends of each window; its text is the context between the two tokens'
character offsets.

A window's target array (int32) is [start token, end token, example row, then for every token its context
character range as (first + 1, end + 1), (0, 0) outside the context]; the side records hold each example's
context and reference answers, which the metrics and predictions read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from torch import Tensor, nn

from transformer_cli.data.batching import Batch, Encoded
from transformer_cli.errors import TformerError
from transformer_cli.losses.base import LossContext
from transformer_cli.metrics.qa import QAMetrics
from transformer_cli.model import Encoder, SpanModel
from transformer_cli.tasks.common import Rows, Where, is_missing
from transformer_cli.tasks.protocol import Readout

# Validation metrics and whether higher ("max") or lower ("min") is better; any of them can be monitored.
METRICS = {"loss": "min", "exact_match": "max", "f1": "max"}
# What task.json keeps (see state()), with its types: a checkpoint whose task.json differs is refused.
STATE = {"window": int}
HEAD = 3  # a window's target array: start token, end token, example row, then the offsets


@dataclass
class QAConfig:
    """Settings of extractive question answering."""

    name: str = "qa"
    doc_stride: int = 128  # context tokens shared by consecutive windows of a long context (run_qa.py's stride)
    max_answer_length: int = 30  # the longest answer span predicted, in tokens
    n_best: int = 20  # per window, the best starts x the best ends searched for the answer span


class QATask:
    """Cuts question-context pairs into windows, builds the span head, finds and scores the answers."""

    loss_kind = "span"

    def __init__(self, cfg: Any, loss_kind: str, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.window = int(state["window"])
        if cfg.doc_stride < 0 or cfg.max_answer_length < 1 or cfg.n_best < 1:
            raise TformerError("task.doc_stride must be >= 0, task.max_answer_length and task.n_best >= 1",
                               hint="defaults: doc_stride=128, max_answer_length=30, n_best=20")

    @staticmethod
    def fit_state(values: Sequence[Any], cfg: Any, fixed: list[str] | None, source: str,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """The window length: the tokenizer's truncation length (data.tokenizer.max_length)."""
        if tokenizer is None:
            raise TformerError("task=qa needs the input tokenizer to learn its state")
        return {"window": window_length(tokenizer)}

    def build_model(self, model_cfg: Any, vocab_size: int) -> SpanModel:
        """The encoder and a start / end head."""
        return SpanModel(Encoder(vocab_size, model_cfg), model_cfg.d_model)

    def encode(self, rows: Rows, tokenizer: Tokenizer, labelled: bool = True) -> Encoded:
        """Question-context rows -> windows, each with its answer span (or [CLS]) and offsets; one side record
        per row: its key, context and (labelled) reference answers."""
        if rows.pairs is None:
            raise TformerError(f"task=qa reads a question and its context; the {rows.where.split} split has no "
                               "context column", hint="set data.text_pair_column (data=squad: context)")
        encodings = _windows(windowing(tokenizer, self.cfg.doc_stride), rows)
        flat: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        side: list[dict[str, Any]] = []
        for i, (encoding, context) in enumerate(zip(encodings, rows.pairs)):
            row = rows.where.row(i)
            answers = parse_answers(rows.labels[i], context, rows.where, i) if labelled else []
            first = answers[0] if answers else None
            for window in (encoding, *encoding.overflowing):
                flat.append(np.asarray(window.ids, dtype=np.int32))
                targets.append(window_target(window, context, row, first))
            record: dict[str, Any] = {"row": row, "context": context}
            if labelled:
                record["answers"] = [text for text, _ in answers]
            side.append(record)
        lengths = np.fromiter((len(x) for x in flat), dtype=np.int64, count=len(flat))
        ids = np.concatenate(flat) if flat else np.zeros(0, np.int32)
        return Encoded(ids, lengths, targets, side)

    def loss_context(self, targets: Any) -> LossContext:
        """Positions of a window are the classes; no class counts."""
        return LossContext(num_outputs=self.window)

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """(B, T, 2) start and end logits."""
        return model(batch.input_ids, batch.mask)

    def loss_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(2B, T) start and end logits, positions outside the context (but [CLS]) at the most negative float,
        and their (2B,) target positions: rows alternate a window's start and its end."""
        B, T, _ = outputs.shape
        allowed = context_mask(targets, T)  # (B, T), a new tensor: safe to change
        allowed[:, 0] = True  # [CLS]: the target of a window without the answer
        logits = outputs.float().masked_fill(~allowed[..., None], torch.finfo(torch.float32).min)  # (B, T, 2)
        return logits.transpose(1, 2).reshape(2 * B, T), targets[:, :2].reshape(2 * B).long()

    def new_metrics(self, side: Sequence[Any] | None = None) -> QAMetrics:
        """Exact match and F1 of the split whose side records (contexts and answers) are `side`."""
        return QAMetrics({int(r["row"]): r for r in side or ()})

    def observe(self, metrics: QAMetrics, model: nn.Module, batch: Batch, outputs: Tensor) -> None:
        """Each window's best span, for its example's answer."""
        scores, starts, ends = self.window_spans(outputs, batch.targets)
        metrics.update(batch.targets[:, 2].tolist(), scores, starts, ends)

    def window_spans(self, outputs: Tensor, targets: Tensor) -> tuple[list[float], list[int], list[int]]:
        """Each window's best span: its score (-inf: none) and its character range in the context."""
        T = outputs.shape[1]
        context = context_mask(targets, T)
        score, start, end = best_spans(outputs[..., 0].float(), outputs[..., 1].float(), context,
                                       self.cfg.n_best, self.cfg.max_answer_length)
        offsets = targets[:, HEAD:].reshape(len(targets), -1, 2)  # (B, T, 2) first + 1, end + 1
        first = offsets[:, :, 0].gather(1, start[:, None]).squeeze(1) - 1  # (B,)
        last = offsets[:, :, 1].gather(1, end[:, None]).squeeze(1) - 1
        return score.tolist(), first.tolist(), last.tolist()

    def predict(self, model: nn.Module, batch: Batch, top_k: int) -> list[dict[str, Any]]:
        """Per window, its example and best span (merge_predictions keeps each example's best)."""
        scores, starts, ends = self.window_spans(self.forward(model, batch), batch.targets)
        rows = batch.targets[:, 2].tolist()
        return [{"row": r, "score": s, "start": a, "end": b} for r, s, a, b in zip(rows, scores, starts, ends)]

    def merge_predictions(self, records: list[dict[str, Any]], encoded: Encoded) -> list[dict[str, Any]]:
        """One record per question: the answer text, its character range [start, end) in the context and its
        score (start + end logit), from the best span over the question's windows (no span: an empty answer)."""
        best: dict[int, dict[str, Any]] = {}
        for record in records:
            if record["score"] > float("-inf") and (record["row"] not in best
                                                     or record["score"] > best[record["row"]]["score"]):
                best[record["row"]] = record
        out = []
        for example in encoded.side or ():
            found = best.get(example["row"])
            if found is None:
                out.append({"answer": "", "start": None, "end": None, "score": None})
            else:
                text = example["context"][found["start"]:found["end"]]
                out.append({"answer": text, "start": found["start"], "end": found["end"], "score": found["score"]})
        return out

    def readout(self) -> Readout:
        """Exported outputs: every token's start and end logits (the span search runs outside the graph)."""
        return Readout(("start_logits", "end_logits"), lambda out: (out[..., 0], out[..., 1]),
                       {"window": self.window, "doc_stride": self.cfg.doc_stride})

    def final_decoding(self) -> None:
        """Nothing to switch: every evaluation answers every example."""

    def describe(self) -> str:
        """Windows and the answer search, for `tformer plan`."""
        return (f"extractive question answering: start / end logits per token; windows of {self.window} tokens "
                f"sharing {self.cfg.doc_stride} context tokens; answers up to {self.cfg.max_answer_length} tokens, "
                f"best of {self.cfg.n_best} starts x {self.cfg.n_best} ends per window (examples counted are "
                "windows)")

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to rebuild this task."""
        return {"window": self.window}


def window_length(tokenizer: Tokenizer) -> int:
    """The tokenizer's truncation length: the length of a window."""
    truncation = tokenizer.truncation
    if not truncation or not truncation.get("max_length"):
        raise TformerError("task=qa needs a window length", hint="set data.tokenizer.max_length (e.g. 384)")
    return int(truncation["max_length"])


def windowing(tokenizer: Tokenizer, stride: int) -> Tokenizer:
    """A copy of the tokenizer that cuts the second text (the context) into windows sharing `stride` tokens."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_truncation(max_length=window_length(tokenizer), stride=stride, strategy="only_second")
    tok.no_padding()
    return tok


def _windows(tok: Tokenizer, rows: Rows) -> list[Encoding]:
    """Every row's encoding (its first window, the others in .overflowing); a question that leaves no room for
    its context is an error naming its row."""
    pairs = list(zip(rows.texts, rows.pairs or ()))
    try:
        return tok.encode_batch(pairs)
    except Exception as err:  # tokenizers raises a plain Exception when a window cannot be cut
        for i, pair in enumerate(pairs):
            try:
                tok.encode(*pair)
            except Exception:
                raise TformerError(
                    f"the question at {rows.where.at(i)} leaves no room for its context in a window of "
                    f"{window_length(tok)} tokens sharing {tok.truncation['stride']} ({err})",
                    hint="raise data.tokenizer.max_length or lower task.doc_stride") from err
        raise


def window_target(window: Encoding, text: str, row: int, answer: tuple[str, int] | None) -> np.ndarray:
    """[start token, end token, row, (first + 1, end + 1) per token] of one window of the context `text`: the
    answer's first and last tokens when the window holds it whole, else (0, 0), the [CLS] position."""
    context = np.flatnonzero(np.asarray([s == 1 for s in window.sequence_ids]))  # (C,) positions
    out = np.zeros(HEAD + 2 * len(window.ids), dtype=np.int32)
    out[2] = row
    offsets = np.asarray(window.offsets, dtype=np.int32).reshape(-1, 2)  # (T, 2)
    spaced = [int(j) for j, a in zip(context, offsets[context, 0].tolist()) if text[a:a + 1].isspace()]
    for j in spaced:  # a word-start piece of a BPE vocabulary covers the space before it: not part of the span
        while offsets[j, 0] < offsets[j, 1] - 1 and text[offsets[j, 0]].isspace():
            offsets[j, 0] += 1
    out[HEAD:].reshape(-1, 2)[context] = offsets[context] + 1
    if answer is not None and len(context):
        out[:2] = span_tokens(offsets.tolist(), int(context[0]), int(context[-1]), answer)
    return out


def span_tokens(offsets: list[list[int]], c0: int, c1: int, answer: tuple[str, int]) -> tuple[int, int]:
    """The first and last tokens of the answer among the context tokens c0..c1, or (0, 0) when the window does not
    hold it whole (run_qa.py's rule)."""
    text, start = answer
    end = start + len(text)
    if not (offsets[c0][0] <= start and offsets[c1][1] >= end):
        return 0, 0
    first = c0
    while first <= c1 and offsets[first][0] <= start:
        first += 1
    last = c1
    while last >= c0 and offsets[last][1] >= end:
        last -= 1
    return first - 1, last + 1


def context_mask(targets: Tensor, T: int) -> Tensor:
    """(B, T) bool: the tokens of each window that belong to the context (from the offsets in its target)."""
    return targets[:, HEAD::2][:, :T] > 0


def best_spans(start: Tensor, end: Tensor, context: Tensor, n_best: int,
               max_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each window's best span among its n_best best context starts and ends: start <= end, at most max_length
    tokens; (B,) score (start + end logit; -inf when no span fits), start token and end token."""
    k = min(n_best, start.shape[1])
    low = torch.tensor(float("-inf"), device=start.device)
    top_start, first = start.masked_fill(~context, low).topk(k, dim=1)  # (B, k): outside the context never
    top_end, last = end.masked_fill(~context, low).topk(k, dim=1)
    length = last[:, None, :] - first[:, :, None] + 1  # (B, k, k)
    score = top_start[:, :, None] + top_end[:, None, :]
    score = score.masked_fill((length < 1) | (length > max_length), low)  # -inf stays -inf where masked
    best = score.flatten(1).argmax(1)  # (B,)
    value = score.flatten(1).gather(1, best[:, None]).squeeze(1)
    return value, first.gather(1, (best // k)[:, None]).squeeze(1), last.gather(1, (best % k)[:, None]).squeeze(1)


def parse_answers(value: Any, context: str, where: Where, i: int) -> list[tuple[str, int]]:
    """A row's reference answers as (text, character start), each checked to be that text of the context.
    Takes {"text": [...], "answer_start": [...]}, a list of {"text", "answer_start"} objects, or either as a
    JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _bad_answers(value, where, i, "not JSON") from None
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        texts = [texts] if isinstance(texts, str) else texts
        starts = [starts] if isinstance(starts, int) else starts
        pairs = list(zip(texts, starts)) if isinstance(texts, list) and isinstance(starts, list) \
            and len(texts) == len(starts) else None
    elif isinstance(value, list) and all(isinstance(a, dict) for a in value):
        pairs = [(a.get("text"), a.get("answer_start")) for a in value]
    else:
        pairs = None
    if is_missing(value) or pairs is None:
        raise _bad_answers(value, where, i, "not a set of answers")
    if not pairs:
        raise _bad_answers(value, where, i, "no answer (unanswerable questions, as in SQuAD 2.0, are not supported)")
    answers = []
    for text, start in pairs:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise _bad_answers(value, where, i, "an answer needs a text and an integer answer_start")
        if context[start:start + len(text)] != text:
            raise _bad_answers(value, where, i, f"answer {text!r} is not at character {start} of the context "
                                                f"(found {context[start:start + len(text)]!r})")
        answers.append((text, start))
    return answers


def _bad_answers(value: Any, where: Where, i: int, why: str) -> TformerError:
    """The error for a row whose answers cannot be used."""
    shown = repr(value) if len(repr(value)) < 120 else repr(value)[:117] + "..."
    return TformerError(f"the answers at {where.at(i)} are unusable: {why}: {shown}",
                        hint='answers look like {"text": ["Denver Broncos"], "answer_start": [177]}: each text '
                             "exactly as it appears in the context, at that character; fix or drop that row")
