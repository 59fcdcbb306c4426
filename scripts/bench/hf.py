"""The Hugging Face contenders: BertForSequenceClassification of our size, in a plain loop and in Trainer.

Every contender gets the same token ids (our tokenizer's), so only the training machinery differs. The BERT
config matches our model: vocabulary, d_model, layers, heads, FFN width, GELU, hidden and head dropout,
and attention dropout (ours is 0.0; BERT's default 0.1 would force the slower non-fused attention path). Every
contender's optimizer is fused AdamW with tformer's weight-decay groups (Trainer: optim="adamw_torch_fused").
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from transformer_cli.data.batching import Batch
from transformer_cli.data.tokenize import CLS, PAD, SEP, UNK

from .contenders import Count, EpochShape, LoopContender, Step, adamw_like_ours, decayed_names, model_shape
from .flops import step_flops
from .workload import Settings, Workload


def available() -> str | None:
    """None when transformers (with accelerate, which Trainer needs) imports, else why not."""
    try:
        import accelerate  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        return f"{err.name or err} is not installed (pip install -e '.[bench]')"
    return None


def bert(work: Workload) -> nn.Module:
    """A randomly initialised BertForSequenceClassification of our model's size, in SDPA attention."""
    from transformers import BertConfig, BertForSequenceClassification

    m = work.cfg.model
    config = BertConfig(vocab_size=work.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                        num_attention_heads=m.n_heads, intermediate_size=m.d_ff, hidden_act="gelu",
                        hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attn_dropout,
                        classifier_dropout=work.cfg.task.head_dropout, max_position_embeddings=m.max_positions,
                        num_labels=work.task.num_outputs, pad_token_id=0)
    config._attn_implementation = "sdpa"  # PyTorch's fused attention, as ours uses
    return BertForSequenceClassification(config).train()


def bart(work: Workload) -> nn.Module:
    """A randomly initialised BartForConditionalGeneration of our encoder-decoder's size (BART's own defaults
    elsewhere: post-norm, learned positions, no dropout inside the feed-forward block)."""
    from transformers import BartConfig, BartForConditionalGeneration

    m, task = work.cfg.model, work.task
    config = BartConfig(vocab_size=max(work.vocab_size, task.vocab_size), d_model=m.d_model,
                        encoder_layers=m.n_layers, decoder_layers=m.decoder_layers or m.n_layers,
                        encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
                        encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff, activation_function="gelu",
                        dropout=m.dropout, attention_dropout=m.attn_dropout, max_position_embeddings=m.max_positions,
                        pad_token_id=0, bos_token_id=task.bos, eos_token_id=task.eos,
                        decoder_start_token_id=task.bos, forced_eos_token_id=None, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return BartForConditionalGeneration(config).train()


def seq2seq_labels(targets: torch.Tensor) -> torch.Tensor:
    """(B, L) [BOS] target [EOS] rows -> (B, L-1) next-token labels, padding as -100 (HF's ignore index)."""
    return targets[:, 1:].masked_fill(targets[:, 1:] == 0, -100)


def hf_loop(work: Workload, settings: Settings, bucket: bool, pad_to: int | None) -> LoopContender:
    """BERT (or BART for seq2seq) in the plain PyTorch loop of HF's no_trainer examples, with our clipping and
    our optimizer (fused AdamW, tformer's weight-decay groups)."""
    from transformers import get_linear_schedule_with_warmup

    cfg = work.cfg
    model = bart(work) if work.is_seq2seq else bert(work)
    optimizer = adamw_like_ours(model, cfg.optim)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10_000)

    def step(batch: Batch) -> None:
        if work.is_seq2seq:
            out = model(input_ids=batch.input_ids, attention_mask=batch.mask.long(),
                        decoder_input_ids=batch.targets[:, :-1], labels=seq2seq_labels(batch.targets))
        else:
            out = model(input_ids=batch.input_ids, attention_mask=batch.mask.long(), labels=batch.targets)
        out.loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return LoopContender(work, settings, step, bucket, pad_to, optimizer)


def _fast_tokenizer(work: Workload) -> Any:
    """Our tokenizer wrapped for transformers' collators (padding needs the pad token)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=work.tokenizer, pad_token=PAD, unk_token=UNK, cls_token=CLS,
                                   sep_token=SEP, model_input_names=["input_ids", "attention_mask"])


class _Timer:
    """A TrainerCallback that stamps the end of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.ends: list[float] = []
        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                outer.ends.append(time.perf_counter())

        self.callback = Callback()


def _trainer_class() -> type:
    """transformers.Trainer, its AdamW decaying the parameters tformer's would (Trainer's own rule decays the
    embeddings); optimizer, kernel (optim="adamw_torch_fused") and schedule stay Trainer's own."""
    from transformers import Trainer

    class SameDecayTrainer(Trainer):
        def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
            """The parameters tformer's AdamW decays."""
            return sorted(decayed_names(model))

    return SameDecayTrainer


class TrainerContender:
    """transformers.Trainer on a dataset and collator; step times are the gaps between consecutive step
    ends, so data loading, collation and callbacks are counted. `count` says what a collated batch covers."""

    def __init__(self, work: Workload, settings: Settings, model: nn.Module, data: Any, collator: Any,
                 count: Callable[[dict[str, Any]], Count], grouped: bool) -> None:
        from transformers import TrainingArguments
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.counts: list[Count] = []  # one per collated batch, in order

        def recording(features: list[dict[str, Any]]) -> dict[str, Any]:
            out = collator(features)
            self.counts.append(count(out))
            return out

        self.timer = _Timer()
        self.tmp = tempfile.TemporaryDirectory(prefix="tformer-bench-")
        cfg = work.cfg
        args = TrainingArguments(output_dir=self.tmp.name, per_device_train_batch_size=settings.batch_size,
                                 optim="adamw_torch_fused", learning_rate=cfg.optim.lr,
                                 adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1],
                                 adam_epsilon=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                                 max_grad_norm=cfg.trainer.grad_clip, max_steps=1, logging_strategy="no",
                                 save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
                                 dataloader_pin_memory=False, disable_tqdm=True, seed=settings.seed,
                                 **_grouping(grouped))
        n, bs = len(work.split), settings.batch_size
        self.megabatch = max(1, min(n // (bs * 4), 50)) if grouped else 1  # transformers' default mega_batch_mult
        threads = torch.get_num_threads()
        self.trainer = _trainer_class()(model=model, args=args, train_dataset=data, data_collator=recording,
                               callbacks=[self.timer.callback])
        torch.set_num_threads(threads)  # in case accelerate picked its own count

    def block(self, k: int) -> list[Step]:
        """trainer.train() for k + 1 steps; the k gaps between step ends are the timed steps.

        Length-grouped order runs from the longest batch to the shortest within each mega-batch of up to 50
        batches (and every train() call draws the same order), so a grouped block times a whole mega-batch:
        a fair sample of lengths, where its first steps alone would be the longest batches."""
        self.timer.ends.clear()
        self.counts.clear()
        k = max(k, self.megabatch - 1)
        self.trainer.args.max_steps = k + 1
        self.trainer.train()
        gaps = np.diff(self.timer.ends)
        return [Step(float(s), *self.counts[i + 1]) for i, s in enumerate(gaps)]

    def epoch(self) -> EpochShape:
        """Collate one full epoch through Trainer's own dataloader (its sampler and collator)."""
        self.counts.clear()
        n = sum(1 for _ in self.trainer.get_train_dataloader())
        real, padded = sum(c[0] for c in self.counts), sum(c[1] for c in self.counts)
        self.counts.clear()
        return EpochShape(n, real, padded)

    def stress(self, n: int) -> None:
        """n steps; with group_by_length the first batch is the longest of the epoch."""
        self.block(max(1, n - 1))


def trainer_classify(work: Workload, settings: Settings, grouped: bool) -> TrainerContender:
    """Trainer with the classification example's defaults, or with its best settings.

    example: every text padded to max_length at tokenization, default_data_collator, random order.
    grouped: dynamic padding (DataCollatorWithPadding) and length-grouped sampling (group_by_length)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, default_data_collator

    ids, labels = [x.tolist() for x in work.split.ids], work.split.targets.tolist()
    if grouped:
        data = Dataset.from_dict({"input_ids": ids, "labels": labels})
        collator = DataCollatorWithPadding(_fast_tokenizer(work))
    else:
        T = work.max_length
        data = Dataset.from_dict({"input_ids": [x + [0] * (T - len(x)) for x in ids],
                                  "attention_mask": [[1] * len(x) + [0] * (T - len(x)) for x in ids],
                                  "labels": labels})
        collator = default_data_collator
    shape = model_shape(work)

    def count(out: dict[str, Any]) -> Count:
        rows, width = out["attention_mask"].sum(1).numpy(), out["input_ids"].shape[1]
        return (int(rows.sum()), len(rows) * width, step_flops(shape, rows),
                step_flops(shape, np.full(len(rows), width)))

    return TrainerContender(work, settings, bert(work), data, collator, count, grouped)


def trainer_seq2seq(work: Workload, settings: Settings) -> TrainerContender:
    """Trainer on BART with DataCollatorForSeq2Seq (dynamic padding, decoder inputs shifted from the labels)
    and group_by_length: the best settings of HF's translation and summarization examples."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    model = bart(work)
    data = Dataset.from_dict({"input_ids": [x.tolist() for x in work.split.ids],
                              "labels": [t[1:].tolist() for t in work.split.targets]})  # without BOS
    collator = DataCollatorForSeq2Seq(_fast_tokenizer(work), model=model, label_pad_token_id=-100)

    def count(out: dict[str, Any]) -> Count:
        real = int(out["attention_mask"].sum() + (out["labels"] != -100).sum())
        return real, out["input_ids"].numel() + out["labels"].numel(), 0.0, 0.0

    return TrainerContender(work, settings, model, data, collator, count, grouped=True)


def _grouping(grouped: bool) -> dict[str, Any]:
    """Length grouping in either TrainingArguments spelling (group_by_length before transformers 5)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if grouped else "random"}
    return {"group_by_length": grouped}


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Batches of transformers' LengthGroupedSampler (megabatches of 50 batches sorted by length)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = LengthGroupedSampler(batch_size, lengths=lengths.tolist(), generator=torch.Generator().manual_seed(seed))
    order = np.fromiter(iter(sampler), dtype=np.int64, count=len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
