"""The Hugging Face `Trainer` side of the whole-command benchmarks, in the style of transformers' run_glue.py.

`python -m scripts.bench.hf_trainer_glue TRAIN VALIDATION TEST [options]` reads the CSV splits (text, label)
with `datasets`, tokenizes them with `Dataset.map`, trains BertForSequenceClassification with `Trainer`
(fused AdamW, tformer's weight-decay groups, warmup then cosine or linear decay, gradient clipping, dynamic
padding with group_by_length, an evaluation and a checkpoint every epoch, the best checkpoint by validation
accuracy loaded at the end), evaluates validation and test, and prints one JSON line: per-epoch validation
accuracy with its time, the final metrics and the time of every phase.

Two models:
  * from scratch (the default): a BertConfig of the given sizes and a BPE tokenizer learned on the training
    texts with `tokenizers`, the recipe of tformer's default (NFKC + lowercase, word starts marked, punctuation
    split off, [CLS] text [SEP], the same vocabulary size and minimum frequency); learning it is timed;
  * --model-dir DIR: a pretrained model directory and its own tokenizer (the MiniLM fine-tuning comparison).
Only for benchmarks: transformers is not a dependency of tformer, and this script imports nothing of tformer.
"""

from __future__ import annotations

import time

START = time.time()  # before the heavy imports: elapsed times count them

import argparse
import csv
import dataclasses
import json
import math
from typing import Any

import torch
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from scripts.bench.hf_finetune import decayed_parameter_names

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]  # tformer's order: [PAD] is id 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are tformer's default run (`tformer train`)."""
    p = argparse.ArgumentParser(prog="python -m scripts.bench.hf_trainer_glue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("train", "validation", "test"):
        p.add_argument(name)
    p.add_argument("--model-dir", help="fine-tune this pretrained model (its own tokenizer); default: from scratch")
    p.add_argument("--output-dir", default="outputs/bench/hf_trainer", help="Trainer's checkpoints")
    p.add_argument("--label-column", default="label")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, [CLS] and [SEP] included")
    p.add_argument("--norm-eps", type=float, default=1e-5, help="LayerNorm epsilon")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden (embeddings, residual branches)")
    p.add_argument("--attn-dropout", type=float, default=0.0)
    p.add_argument("--head-dropout", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--schedule", choices=["cosine", "linear"], default="cosine")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="random order instead of Trainer's length-grouped batches")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=0, help="the first N training examples (0: all)")
    p.add_argument("--max-eval-examples", type=int, default=0, help="the first N of validation and test (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (0: the epochs)")
    return p.parse_args(argv)


def read_split(path: str, label_column: str, limit: int) -> dict[str, list[str]]:
    """A CSV split's texts and label names, the first `limit` rows if > 0."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: limit or None]
    return {"text": [r["text"] for r in rows], "label": [r[label_column] for r in rows]}


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int, max_length: int) -> Any:
    """A BPE vocabulary learned on `texts` the way tformer's default learns one, wrapped for transformers."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  show_progress=False)
    tok.train_from_iterator((texts[i : i + 1000] for i in range(0, len(texts), 1000)), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"])


def scratch_model(args: argparse.Namespace, vocab_size: int, num_labels: int) -> torch.nn.Module:
    """A randomly initialised BertForSequenceClassification of the given sizes, in SDPA attention."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=args.d_model, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.d_ff, hidden_act="gelu",
                        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.attn_dropout,
                        classifier_dropout=args.head_dropout, max_position_embeddings=args.max_positions,
                        layer_norm_eps=args.norm_eps, num_labels=num_labels, pad_token_id=0)
    config._attn_implementation = "sdpa"
    return BertForSequenceClassification(config)


def pretrained_model(args: argparse.Namespace, num_labels: int) -> tuple[Any, torch.nn.Module]:
    """A pretrained model directory's tokenizer and classifier (hidden, attention and classifier dropout set)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=num_labels, hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.attn_dropout, classifier_dropout=args.head_dropout)
    return tokenizer, model


def grouping(grouped: bool) -> dict[str, Any]:
    """Length grouping in either TrainingArguments spelling (group_by_length before transformers 5)."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if grouped else "random"}
    return {"group_by_length": grouped}


def total_steps(examples: int, args: argparse.Namespace) -> int:
    """Optimizer steps of the run: every epoch's batches, or --max-steps if fewer."""
    steps = math.ceil(examples / args.batch_size) * args.epochs
    return min(steps, args.max_steps) if args.max_steps else steps


def training_arguments(args: argparse.Namespace, steps: int) -> Any:
    """Trainer's settings: tformer's optimizer, schedule, clipping, batch sizes and evaluation cadence."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # tformer's precision=auto
    return TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        optim="adamw_torch_fused", learning_rate=args.lr, weight_decay=args.weight_decay, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=args.grad_clip, lr_scheduler_type=args.schedule,
        warmup_steps=round(args.warmup_ratio * steps), eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        logging_strategy="epoch", report_to="none", disable_tqdm=True, seed=args.seed, bf16=bf16,
        dataloader_num_workers=args.workers, dataloader_pin_memory=torch.cuda.is_available(),
        **grouping(args.group_by_length))


class EpochLog:
    """A TrainerCallback's record of every evaluation (epoch, validation accuracy, wall-clock time) and of when
    each checkpoint was written."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.saved: list[float] = []
        outer = self

        class Callback(TrainerCallback):
            def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float],
                            **kwargs: Any) -> None:
                now = time.time()
                outer.rows.append({"epoch": state.epoch, "accuracy": metrics["eval_accuracy"],
                                   "eval_seconds": metrics["eval_runtime"], "time": now, "elapsed_s": now - START})

            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                outer.saved.append(time.time())

        self.callback = Callback()


def accuracy(pred: Any) -> dict[str, float]:
    """Accuracy of Trainer's (logits, labels) predictions."""
    logits, labels = pred.predictions, pred.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def trainer_class() -> type:
    """transformers.Trainer whose AdamW decays the parameters tformer's would (Trainer's own rule also decays
    the embeddings); the optimizer, its kernel and the schedule stay Trainer's own."""
    class SameDecayTrainer(Trainer):
        def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
            """The parameters tformer's AdamW decays."""
            return sorted(decayed_parameter_names(model))

    return SameDecayTrainer


def main(argv: list[str] | None = None) -> None:
    """Learn the tokenizer (from scratch), tokenize, train with Trainer, evaluate, print the JSON line."""
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    disable_progress_bar()
    set_seed(args.seed)
    raw = {"train": read_split(args.train, args.label_column, args.max_examples),
           **{name: read_split(path, args.label_column, args.max_eval_examples)
              for name, path in (("validation", args.validation), ("test", args.test))}}
    names = sorted(set(raw["train"]["label"]))  # class indices in sorted label order, as tformer's
    label_ids = {name: i for i, name in enumerate(names)}
    if args.model_dir:
        tokenizer, model = pretrained_model(args, len(names))
        tokenizer_seconds = 0.0  # the model's own: nothing to learn
    else:
        tok_start = time.time()
        tokenizer = train_bpe(raw["train"]["text"], args.vocab_size, args.min_frequency, args.max_length)
        tokenizer_seconds = time.time() - tok_start
        model = scratch_model(args, len(tokenizer), len(names))

    def encode(batch: dict[str, list[str]]) -> dict[str, Any]:
        out = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        out["labels"] = [label_ids[y] for y in batch["label"]]
        return out

    data = {name: Dataset.from_dict(split).map(encode, batched=True, remove_columns=["text", "label"])
            for name, split in raw.items()}
    log = EpochLog()
    trainer = trainer_class()(model=model, args=training_arguments(args, total_steps(len(data["train"]), args)),
                              train_dataset=data["train"], eval_dataset=data["validation"],
                              data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                              callbacks=[log.callback])
    fit_start = time.time()
    result = trainer.train()
    train_seconds = time.time() - fit_start
    # The fit up to its last checkpoint, as tformer's fit ends: without train()'s loading of the best checkpoint.
    fit_seconds = (log.saved[-1] if log.saved else time.time()) - fit_start
    trainer.remove_callback(log.callback)  # the evaluations below are not epochs
    final = {name: {"accuracy": trainer.evaluate(data[name], metric_key_prefix=name)[f"{name}_accuracy"]}
             for name in ("validation", "test")}
    print(json.dumps({
        "epochs": log.rows, "metrics": final, "steps": result.global_step,
        "train_examples": round(trainer.state.epoch * len(data["train"])), "tokenizer_seconds": tokenizer_seconds,
        "vocab_size": len(tokenizer), "train_seconds": train_seconds, "fit_seconds": fit_seconds,
        "eval_seconds_in_fit": sum(r["eval_seconds"] for r in log.rows),
        "wall_seconds": time.time() - START, "start": START,
    }), flush=True)


if __name__ == "__main__":
    main()
