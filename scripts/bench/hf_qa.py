"""The Hugging Face side of the question-answering benchmark: transformers' AutoModelForQuestionAnswering in
a plain PyTorch loop, with the preprocessing and postprocessing of transformers' run_qa.py example.

`python -m scripts.bench.hf_qa MODEL_DIR TRAIN VALIDATION TEST [--seed N] ...` reads JSON Lines splits (id,
question, context, answers {"text": [...], "answer_start": [...]}), cuts each context into windows of
--max-length tokens sharing --doc-stride tokens (run_qa's `stride`; a window without the answer targets
[CLS]), fine-tunes (AdamW, fused, no decay on biases, LayerNorm weights or embeddings; linear schedule with
warmup; gradient clipping 1.0; batches of windows in a seeded random order, padded to the longest), picks
each example's best span across its windows as run_qa's postprocess_qa_predictions does (n-best starts x
ends, start <= end, both in the context, at most --max-answer-length tokens, score start + end logit), and
prints one JSON line with SQuAD v1.1 exact match and F1 (the official script's normalisation) per split and
the wall time of every phase. Only for benchmarks: transformers is not a dependency of tformer.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import time
from typing import Any

import numpy as np
import torch

from scripts.bench.hf_finetune import param_groups
from transformer_cli.metrics.qa import best_over_references


def read_jsonl(path: str, limit: int) -> list[dict[str, Any]]:
    """The examples of a JSON Lines split, the first `limit` if > 0."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[: limit or None]


def train_features(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, stride: int) -> dict[str, list]:
    """run_qa's prepare_train_features: windows with start/end token targets ([CLS] when the answer is outside)."""
    enc = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding=False)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        cls = enc["input_ids"][i].index(tokenizer.cls_token_id)
        seq = enc.sequence_ids(i)
        answers = rows[enc["overflow_to_sample_mapping"][i]]["answers"]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls)
            ends.append(cls)
            continue
        s = first
        while s <= last and offsets[s][0] <= start_char:
            s += 1
        e = last
        while e >= first and offsets[e][1] >= end_char:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "start": starts, "end": ends}


def eval_features(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, stride: int) -> dict[str, list]:
    """run_qa's prepare_validation_features: windows, each with its example and offsets (None outside the context)."""
    enc = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding=False)
    offsets = [[o if s == 1 else None for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
               for i in range(len(enc["input_ids"]))]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "example": enc["overflow_to_sample_mapping"],
            "offsets": offsets}


def pad(rows: list[list[int]]) -> torch.Tensor:
    """Lists of ids -> (B, T) int64, right-padded with 0."""
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def batch_of(features: dict[str, list], idx: list[int]) -> dict[str, torch.Tensor]:
    """The model inputs of some windows, padded to the longest."""
    return {k: pad([features[k][i] for i in idx]) for k in ("input_ids", "attention_mask", "token_type_ids")}


def predict_spans(model: Any, features: dict[str, list], rows: list[dict[str, Any]], n_best: int,
                  max_answer: int, batch_size: int = 64) -> list[str]:
    """Each example's answer text: run_qa's postprocess_qa_predictions over all its windows."""
    model.eval()
    n = len(features["input_ids"])
    starts: list[np.ndarray] = [np.empty(0)] * n
    ends: list[np.ndarray] = [np.empty(0)] * n
    order = sorted(range(n), key=lambda i: len(features["input_ids"][i]))
    with torch.no_grad():
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            out = model(**batch_of(features, idx))
            for row, i in enumerate(idx):
                length = len(features["input_ids"][i])
                starts[i] = out.start_logits[row, :length].numpy()
                ends[i] = out.end_logits[row, :length].numpy()
    model.train()
    windows = collections.defaultdict(list)
    for i, example in enumerate(features["example"]):
        windows[example].append(i)
    answers = []
    for e, row in enumerate(rows):
        best, best_score = "", -math.inf
        for i in windows[e]:
            offsets = features["offsets"][i]
            for s in np.argsort(starts[i])[-1 : -n_best - 1 : -1].tolist():
                for t in np.argsort(ends[i])[-1 : -n_best - 1 : -1].tolist():
                    if offsets[s] is None or offsets[t] is None or t < s or t - s + 1 > max_answer:
                        continue
                    score = float(starts[i][s] + ends[i][t])
                    if score > best_score:
                        best, best_score = row["context"][offsets[s][0] : offsets[t][1]], score
        answers.append(best)
    return answers


def squad_scores(predictions: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the maximum over the example's references (the official SQuAD v1.1
    definitions, as tformer scores its own side)."""
    scores = [best_over_references(p, r["answers"]["text"]) for p, r in zip(predictions, rows)]
    return {"exact_match": 100 * sum(em for em, _ in scores) / len(rows),
            "f1": 100 * sum(f for _, f in scores) / len(rows)}


def main() -> None:
    """Fine-tune, evaluate, print the JSON line."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.hf_qa", description=__doc__)
    for name in ("model_dir", "train", "validation", "test"):
        p.add_argument(name)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--doc-stride", type=int, default=64)
    p.add_argument("--max-answer-length", type=int, default=30)
    p.add_argument("--n-best", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout")
    p.add_argument("--max-examples", type=int, default=0, help="the first N of each split (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (0: the epochs)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_linear_schedule_with_warmup

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_rows = read_jsonl(args.train, args.max_examples)
    splits = {name: read_jsonl(path, args.max_examples)
              for name, path in (("validation", args.validation), ("test", args.test))}
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(
        args.model_dir, hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    features = train_features(tokenizer, train_rows, args.max_length, args.doc_stride)
    windows = len(features["input_ids"])
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, fused=True)
    steps = math.ceil(windows / args.batch_size) * args.epochs
    steps = min(steps, args.max_steps) if args.max_steps else steps
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * steps), steps)
    setup = time.time() - start

    model.train()
    rng = random.Random(args.seed)
    train_start = time.time()
    for _ in range(args.epochs):
        order = list(range(windows))
        rng.shuffle(order)
        for b in range(0, len(order), args.batch_size):
            if scheduler.last_epoch >= steps:  # --max-steps reached
                break
            idx = order[b : b + args.batch_size]
            out = model(**batch_of(features, idx), start_positions=torch.tensor([features["start"][i] for i in idx]),
                        end_positions=torch.tensor([features["end"][i] for i in idx]))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    train_seconds = time.time() - train_start

    eval_start = time.time()
    metrics = {}
    for name, rows in splits.items():
        feats = eval_features(tokenizer, rows, args.max_length, args.doc_stride)
        metrics[name] = squad_scores(predict_spans(model, feats, rows, args.n_best, args.max_answer_length), rows)
    print(json.dumps({"metrics": metrics, "steps": steps, "train_windows": windows, "setup_seconds": setup,
                      "train_seconds": train_seconds, "eval_seconds": time.time() - eval_start,
                      "wall_seconds": time.time() - start}))


if __name__ == "__main__":
    main()
