"""Pretrained encoders in Hugging Face's format, loaded into tformer's own encoder.

The family table names every model_type tformer reproduces: how its config.json becomes tformer model
settings, how its tensors are named, which prefix its task models put before them, and which of its
tensors initialise the pooling head. Nothing in a model directory is executed: config.json is read as
JSON, the weights as safetensors, the tokenizer as tokenizers' JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from transformer_cli.pretrained import bert, distilbert
from transformer_cli.pretrained.common import ConfigReader


@dataclass(frozen=True)
class Family:
    """One model_type: its config keys, its settings, its tensor names and its classifier head's layout."""

    known_keys: tuple[str, ...]  # config.json keys it reads or knows to change nothing
    architecture: Callable[[ConfigReader], dict[str, Any]]  # config.json -> tformer model settings
    weight_names: Callable[[int], dict[str, tuple[str, ...]]]  # n_layers -> encoder tensor -> theirs
    prefix: str  # the base model's name inside their task models, e.g. "bert." in BertForSequenceClassification
    pooler: dict[str, str]  # head tensor -> their tensor that initialises it (BERT's pooler), if present
    sep_token: str  # the separator whose position starts the second segment of a pair (token types)
    hf_config: Callable[[Any, float], dict[str, Any]]  # (model settings, head dropout) -> their config.json
    classifier: str  # their sequence-classification class
    head_names: dict[str, str]  # our head's layers -> theirs in that class (export)
    special_tokens: dict[str, str]  # their tokenizer's special tokens by role


WORDPIECE_SPECIALS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                      "mask_token": "[MASK]"}
ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}

FAMILIES: dict[str, Family] = {
    "bert": Family(bert.READ + bert.HARMLESS, partial(bert.architecture, roberta=False), bert.weight_names,
                   "bert.", bert.POOLER, "[SEP]", partial(bert.hf_config, roberta=False),
                   "BertForSequenceClassification", {"dense": "bert.pooler.dense", "proj": "classifier"},
                   WORDPIECE_SPECIALS),
    "roberta": Family(bert.READ + bert.HARMLESS, partial(bert.architecture, roberta=True), bert.weight_names,
                      "roberta.", {}, "</s>", partial(bert.hf_config, roberta=True),
                      "RobertaForSequenceClassification", {"dense": "classifier.dense", "proj": "classifier.out_proj"},
                      ROBERTA_SPECIALS),
    "distilbert": Family(distilbert.READ + distilbert.HARMLESS, distilbert.architecture, distilbert.weight_names,
                         "distilbert.", {}, "[SEP]", distilbert.hf_config, "DistilBertForSequenceClassification",
                         {"dense": "pre_classifier", "proj": "classifier"}, WORDPIECE_SPECIALS),
}
