"""The Hugging Face side of the fine-tuning benchmark: a plain PyTorch loop over transformers' own
AutoModelForSequenceClassification, as a user would write it, with tformer's settings.

`python -m scripts.bench.hf_finetune MODEL_DIR TRAIN VALIDATION TEST [--regress] [--seed N] ...` reads the CSV
splits (text, label), fine-tunes (AdamW with the same decay policy as tformer: none on biases, LayerNorm
weights and embeddings; linear schedule with warmup; gradient clipping 1.0; batches of examples in a seeded
random order, padded to the longest in the batch), evaluates validation and test, and prints one JSON line
with the metrics and the wall time of every phase. Only for benchmarks: transformers is not a dependency of
tformer.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from typing import Any

import torch


def read_split(path: str, column: str, regress: bool, limit: int) -> tuple[list[str], list[Any]]:
    """Texts and labels of a CSV split (its `text` column and the label column), the first `limit` if > 0."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: limit or None]
    return [r["text"] for r in rows], [float(r[column]) if regress else r[column] for r in rows]


def decayed_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters tformer's policy decays: matrices; not biases, LayerNorm weights or embeddings."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name, _ in module.named_parameters(recurse=False)
            if not (name == "bias" or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)))}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """tformer's policy: decay matrices; not biases, LayerNorm weights or embeddings."""
    decay, skip = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = name == "bias" or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding))
            (skip if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def evaluate(model: Any, tokenizer: Any, texts: list[str], labels: list[Any], max_length: int,
             label_ids: dict[str, int], scale: tuple[float, float] | None) -> dict[str, float]:
    """Accuracy, or for a regressor (scale: the targets' mean and std) RMSE and Pearson on the targets' scale;
    batches of 128 examples sorted by length, as tformer evaluates."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    preds: list[Any] = [None] * len(texts)
    with torch.no_grad():
        for start in range(0, len(order), 128):
            idx = order[start : start + 128]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            logits = model(**enc).logits
            values = (logits[:, 0] * scale[1] + scale[0]).tolist() if scale else logits.argmax(-1).tolist()
            for i, v in zip(idx, values):
                preds[i] = v
    model.train()
    if scale is None:
        return {"accuracy": sum(label_ids[y] == p for y, p in zip(labels, preds)) / len(labels)}
    y, p = torch.tensor(labels, dtype=torch.float64), torch.tensor(preds, dtype=torch.float64)
    return {"rmse": float((y - p).square().mean().sqrt()), "pearson": float(torch.corrcoef(torch.stack([y, p]))[0, 1])}


def main() -> None:
    """Fine-tune, evaluate, print the JSON line."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.hf_finetune", description=__doc__)
    for name in ("model_dir", "train", "validation", "test"):
        p.add_argument(name)
    p.add_argument("--regress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1, help="hidden, attention and classifier dropout")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-examples", type=int, default=0, help="the first N of each split (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (0: the epochs)")
    args = p.parse_args()
    start = time.time()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_x, train_y = read_split(args.train, args.label_column, args.regress, args.max_examples)
    splits = {name: read_split(path, args.label_column, args.regress, args.max_examples)
              for name, path in (("validation", args.validation), ("test", args.test))}
    names = sorted(set(train_y)) if not args.regress else []
    label_ids = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=1 if args.regress else len(names),
        problem_type="regression" if args.regress else "single_label_classification",
        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout, classifier_dropout=args.dropout)
    if args.regress:  # the same target standardisation as tformer's regress task
        mean, std = float(torch.tensor(train_y).mean()), float(torch.tensor(train_y).std())
        targets = [(y - mean) / std for y in train_y]
    else:
        targets = [label_ids[y] for y in train_y]
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, fused=True)
    steps = math.ceil(len(train_x) / args.batch_size) * args.epochs
    steps = min(steps, args.max_steps) if args.max_steps else steps
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * steps), steps)
    setup = time.time() - start

    model.train()
    rng = random.Random(args.seed)
    train_start = time.time()
    examples = 0
    for _ in range(args.epochs):
        order = list(range(len(train_x)))
        rng.shuffle(order)
        for b in range(0, len(order), args.batch_size):
            if scheduler.last_epoch >= steps:  # --max-steps reached
                break
            idx = order[b : b + args.batch_size]
            enc = tokenizer([train_x[i] for i in idx], padding=True, truncation=True, max_length=args.max_length,
                            return_tensors="pt")
            y = torch.tensor([targets[i] for i in idx], dtype=torch.float32 if args.regress else torch.long)
            loss = model(**enc, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples += len(idx)
    train_seconds = time.time() - train_start

    eval_start = time.time()
    scale = (mean, std) if args.regress else None
    metrics = {name: evaluate(model, tokenizer, x, y, args.max_length, label_ids, scale)
               for name, (x, y) in splits.items()}
    print(json.dumps({"metrics": metrics, "steps": steps, "train_examples": examples, "setup_seconds": setup, "train_seconds": train_seconds,
                      "eval_seconds": time.time() - eval_start, "wall_seconds": time.time() - start}))


if __name__ == "__main__":
    main()
