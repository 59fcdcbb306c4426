"""A fine-tuned BERT-family classifier or regressor written back in Hugging Face's format.

The directory holds config.json (with architectures, id2label / label2id and problem_type),
model.safetensors under the names of their *ForSequenceClassification class, and the tokenizer files, so
that `AutoModelForSequenceClassification.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load
it and compute what `tformer predict` computes. A regressor's target scaling is folded into its last
layer, so its output is on the targets' own scale. A model with no such equivalent is refused, saying why.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from transformer_cli.errors import TformerError
from transformer_cli.files import write_json
from transformer_cli.pretrained import FAMILIES, Family
from transformer_cli.pretrained.directory import (
    CONFIG,
    TOKENIZER,
    WEIGHTS,
    encoder_names,
)
from transformer_cli.restore import Restored

PROBLEM_TYPES = {"classify": "single_label_classification", "regress": "regression",
                 "multilabel": "multi_label_classification"}


def family_of(restored: Restored) -> Family:
    """The checkpoint's model family, or a refusal that says why it has no Hugging Face equivalent."""
    cfg = restored.config
    task, model = cfg.task.name, cfg.model
    if model.family not in FAMILIES:
        raise TformerError("format=hf needs a model fine-tuned from a pretrained encoder (model=pretrained, hub or "
                           "minilm); this one was trained from scratch by tformer, whose layout (pre-norm layers, "
                           "scaled embeddings) no transformers class reproduces",
                           hint="export it with format=onnx or format=torch_export")
    if task not in PROBLEM_TYPES:
        raise TformerError(f"format=hf writes sequence classifiers and regressors; task '{task}' is neither",
                           hint="use format=onnx for classify, regress and multilabel models")
    if cfg.task.pooling != "cls":
        raise TformerError(f"format=hf: {FAMILIES[model.family].classifier} reads the first token, but this model "
                           f"pools the {cfg.task.pooling} of all tokens (task.pooling={cfg.task.pooling})",
                           hint="train with task.pooling=cls to export to Hugging Face, or use format=onnx")
    if restored.task.loss_kind == "binary":
        raise TformerError("format=hf: this classifier has one logit (a binary loss); Hugging Face's classifiers "
                           "give one logit per class", hint="train with loss=ce, or use format=onnx")
    return FAMILIES[model.family]


def write_hf(restored: Restored, out: Path) -> dict[str, Any]:
    """Write the checkpoint's model as a Hugging Face directory in `out`; returns its config.json."""
    family = family_of(restored)
    out.mkdir(parents=True, exist_ok=True)
    weights = hf_state_dict(restored, family)
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
    config = hf_config(restored, family)
    write_json(out / CONFIG, config)
    write_tokenizer(restored, family, out)
    return config


def hf_state_dict(restored: Restored, family: Family) -> dict[str, torch.Tensor]:
    """The model's tensors under their names in the family's sequence-classification class."""
    model, settings = restored.model, restored.config.model
    ours = {k: v.detach().float().cpu() for k, v in model.encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, theirs in encoder_names(family, dict(settings)).items():
        parts = ours[name].split(ours[name].shape[0] // len(theirs)) if len(theirs) > 1 else (ours[name],)
        for their_name, part in zip(theirs, parts):
            out[family.prefix + their_name] = part.contiguous()
    head = {k: v.detach().float().cpu() for k, v in model.head.state_dict().items()}
    if restored.config.task.name == "regress":  # predictions on the targets' scale: y = (W x + b) * std + mean
        std, mean = restored.task.std, restored.task.mean
        head["proj.weight"], head["proj.bias"] = head["proj.weight"] * std, head["proj.bias"] * std + mean
    for layer, theirs in family.head_names.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = head[f"{layer}.{kind}"].contiguous()
    return out


def hf_config(restored: Restored, family: Family) -> dict[str, Any]:
    """config.json: the architecture, the labels and the problem type."""
    cfg = restored.config
    labels = list(restored.task.state().get("labels", [])) or ["value"]
    return {
        "architectures": [family.classifier], "model_type": cfg.model.family,
        **family.hf_config(cfg.model, cfg.task.head_dropout),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": PROBLEM_TYPES[cfg.task.name],
    }


def write_tokenizer(restored: Restored, family: Family, out: Path) -> None:
    """tokenizer.json as trained with, and the small files that tell transformers its special tokens."""
    tokenizer = restored.tokenizer
    tokenizer.save(str(out / TOKENIZER))
    specials = {role: token for role, token in family.special_tokens.items()
                if tokenizer.token_to_id(token) is not None}
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if restored.config.model.type_vocab_size > 1 \
        else ["input_ids", "attention_mask"]
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",  # follows tokenizer.json exactly (no rebuilt normaliser)
        "model_max_length": int(restored.config.data.tokenizer.max_length), "model_input_names": inputs,
        **specials,
    })
    write_json(out / "special_tokens_map.json", specials)


def read_back(restored: Restored, folder: Path) -> torch.nn.Module:
    """A copy of the checkpoint's model holding the tensors written to `folder` (names mapped back)."""
    from safetensors.torch import load_file

    family = family_of(restored)
    written = load_file(str(folder / WEIGHTS))
    model = copy.deepcopy(restored.model)
    encoder = {}
    for name, theirs in encoder_names(family, dict(restored.config.model)).items():
        encoder[name] = torch.cat([written[family.prefix + t] for t in theirs])
    model.encoder.load_state_dict(encoder)
    head = {f"{layer}.{kind}": written[f"{theirs}.{kind}"] for layer, theirs in family.head_names.items()
            for kind in ("weight", "bias")}
    model.head.load_state_dict(head)
    return model
