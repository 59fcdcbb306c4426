"""Hugging Face model directories: tformer's encoder reproduces bert, roberta and distilbert exactly, and a
directory that is broken or unsafe is refused before anything is built from it, naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from transformer_cli.config import ModelConfig
from transformer_cli.errors import TformerError
from transformer_cli.model import Encoder
from transformer_cli.pretrained.directory import open_pretrained
from transformer_cli.pretrained.settings import (
    load_pretrained_weights,
    truncating,
)

FAMILIES = ("bert", "roberta", "distilbert")
PAIRS = [("the film was good", "very fun"), ("bad", "the plot was slow and the music dull"), ("great movie", "not")]


def encoder_from(folder: Path) -> tuple[Encoder, object]:
    """tformer's encoder with the directory's weights (dropout off), and the directory's tokenizer."""
    pretrained = open_pretrained(folder)
    tokenizer = truncating(pretrained.tokenizer, 60)
    encoder = Encoder(tokenizer.get_vocab_size(), ModelConfig(**{**pretrained.settings, "dropout": 0.0}))
    holder = torch.nn.Module()
    holder.encoder = encoder
    load_pretrained_weights(holder, pretrained)
    return encoder.eval(), tokenizer


def padded(tokenizer: object, pairs: list[tuple[str, str]], pad: int) -> tuple[torch.Tensor, ...]:
    """(ids padded with 0 as tformer's batches are, the same ids padded with the model's pad id, mask, types)."""
    encoded = tokenizer.encode_batch(pairs)
    T = max(len(e.ids) for e in encoded)
    ids = torch.zeros(len(pairs), T, dtype=torch.long)
    mask = torch.zeros(len(pairs), T, dtype=torch.bool)
    types = torch.zeros(len(pairs), T, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)], types[i, : len(e.ids)] = torch.tensor(e.ids), torch.tensor(e.type_ids)
        mask[i, : len(e.ids)] = True
    return ids, ids.masked_fill(~mask, pad), mask, types


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("classifier", [False, True], ids=["base", "task-model"])
def test_hidden_states_match_transformers(family: str, classifier: bool, tiny_hf: Callable[..., Path]) -> None:
    """The same last hidden states as transformers' own forward, within 1e-5 in fp32, on padded sentence pairs
    (token types from the pair template); a task model's file (bert./roberta./distilbert. prefix) loads too."""
    import transformers

    folder = tiny_hf(family, classifier=classifier)
    encoder, tokenizer = encoder_from(folder)
    pad = json.loads((folder / "config.json").read_text())["pad_token_id"]
    ids, hf_ids, mask, types = padded(tokenizer, PAIRS, pad)
    assert mask.sum(1).tolist() != [mask.shape[1]] * len(PAIRS)  # the batch has padding
    reference = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    extra = {"token_type_ids": types} if family == "bert" else {}
    if family == "bert":
        assert types.max() == 1  # a real pair: the second text is segment 1
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = reference(input_ids=hf_ids, attention_mask=mask.long(), **extra).last_hidden_state
    assert (ours - theirs).abs()[mask].max() < 1e-5  # real tokens; padding rows are nobody's output


def test_a_wrong_token_type_would_be_seen(tiny_hf: Callable[..., Path]) -> None:
    """The parity check above can fail: BERT with every token typed 0 differs from the pair's types."""
    import transformers

    folder = tiny_hf("bert")
    encoder, tokenizer = encoder_from(folder)
    ids, hf_ids, mask, types = padded(tokenizer, PAIRS, 0)
    reference = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(input_ids=hf_ids, attention_mask=mask.long(), token_type_ids=0 * types).last_hidden_state
        assert (encoder(ids, mask) - theirs).abs()[mask].max() > 1e-3


def test_settings_read_from_config(tiny_hf: Callable[..., Path]) -> None:
    """BERT: post-norm, learned positions, embedding LayerNorm, no sqrt(d) scaling, eps 1e-12, 2 token types;
    RoBERTa: positions from padding_idx + 1, one token type; DistilBERT: no token types."""
    bert = open_pretrained(tiny_hf("bert")).settings
    assert (bert["norm"], bert["positional"], bert["embed_norm"], bert["embed_scale"]) == ("post", "learned", True, False)
    assert bert["norm_eps"] == 1e-12 and bert["type_vocab_size"] == 2 and bert["sep_id"] is not None
    roberta = open_pretrained(tiny_hf("roberta")).settings
    assert roberta["position_offset"] == 2 and roberta["type_vocab_size"] == 1 and roberta["pad_id"] == 1
    assert open_pretrained(tiny_hf("distilbert")).settings["type_vocab_size"] == 0


# ----------------------------------------------------------------------------- refusals


def refuses(folder: Path, *needles: str) -> str:
    """open_pretrained fails with a message holding every needle; returns the message."""
    with pytest.raises(TformerError) as err:
        open_pretrained(folder)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_pickled_weights_are_refused_with_a_conversion_hint(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    message = refuses(folder, str(folder / "pytorch_model.bin"), "safetensors")
    assert "save_file" in message  # how to convert it


def test_unknown_model_type_lists_the_supported_ones(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    refuses(folder, "config.json", "'gpt2'", "bert, roberta, distilbert")


def test_missing_tokenizer_is_refused(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("roberta")
    (folder / "tokenizer.json").unlink()
    refuses(folder, str(folder / "tokenizer.json"), "missing")


def test_truncated_weights_are_refused(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("distilbert")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    refuses(folder, str(folder / "model.safetensors"))


def test_a_config_key_tformer_does_not_know_is_refused(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rotary_dim": 8}))
    refuses(folder, "config.json", "rotary_dim")


def test_an_unsupported_variant_is_refused(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    refuses(folder, "position_embedding_type", "relative_key")


def test_a_tensor_of_the_wrong_shape_is_named(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("bert")
    weights = load_file(str(folder / "model.safetensors"))
    name = "encoder.layer.1.intermediate.dense.weight"
    weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
    save_file(weights, str(folder / "model.safetensors"))
    refuses(folder, name, "config.json")


def test_a_missing_tensor_is_named(tiny_hf: Callable[..., Path]) -> None:
    folder = tiny_hf("roberta")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.0.attention.self.key.bias"]
    save_file(weights, str(folder / "model.safetensors"))
    refuses(folder, "encoder.layer.0.attention.self.key.bias")


def test_nothing_in_the_directory_runs(tiny_hf: Callable[..., Path], tmp_path: Path) -> None:
    """Custom code (auto_map with its modules) and a pickle that would run code when read are refused, and
    neither runs: the marker files they would write never appear."""
    folder = tiny_hf("bert")
    marker = tmp_path / "ran.txt"
    code = f"open({str(marker)!r}, 'w').write('imported')\n"
    for module in ("__init__.py", "modeling_evil.py", "configuration_evil.py", "tokenization_evil.py"):
        (folder / module).write_text(code)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    refuses(folder, "auto_map", "never runs code")
    assert not marker.exists()

    (folder / "config.json").write_text(json.dumps(config))  # a clean config, but pickled weights
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(evil_pickle(marker))
    refuses(folder, "pytorch_model.bin")
    assert not marker.exists()


def evil_pickle(marker: Path) -> bytes:
    """A pickle that writes `marker` when it is unpickled."""
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (exec, (f"open({str(marker)!r}, 'w').write('unpickled')",))

    return pickle.dumps(Evil())
