"""`tformer export`: which tasks export, the check batches, the output comparison and its failures, and user errors
found before any work (round trips on trained checkpoints: tests/e2e/test_export.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli import export as export_mod
from transformer_cli.config import ExportConfig, ModelConfig, TokenizerConfig
from transformer_cli.data.tokenize import train_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.export import (
    ExportedModel,
    check_batches,
    padding_tokenizer,
    readout_of,
    verify,
)
from transformer_cli.tasks import TASKS, build_task
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask


def tiny_classifier(sentence: Callable[[int], str], num_labels: int = 3) -> tuple[ExportedModel, object]:
    """An untrained tiny classifier wrapped for export, and a tokenizer for it (trained on `sentence` texts)."""
    tok = train_tokenizer([sentence(i) for i in range(60)], TokenizerConfig(vocab_size=200, min_frequency=1))
    labels = [f"l{i}" for i in range(num_labels)]
    task = ClassifyTask(OmegaConf.structured(ClassifyConfig()), "index", {"labels": labels})
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tok.get_vocab_size())
    return ExportedModel(model, task.readout()).eval(), tok


def test_export_covers_the_single_output_task_kinds_and_refuses_others(tmp_path: Path) -> None:
    """classify, regress, multilabel and qa have a read-out; seq2seq (a decoding loop) has none and is refused by
    name."""
    readouts = {name: task_of(name).readout() for name in TASKS}
    assert {name for name, r in readouts.items() if r is not None} == {"classify", "regress", "multilabel", "qa"}
    assert readouts["classify"].names == ("logits", "probabilities") == readouts["multilabel"].names
    assert readouts["regress"].names == ("prediction",)
    assert readouts["qa"].names == ("start_logits", "end_logits")
    restored = SimpleNamespace(task=task_of("seq2seq"), config=OmegaConf.create({"task": {"name": "seq2seq"}}))
    with pytest.raises(TformerError, match="does not support task 'seq2seq'"):
        readout_of(restored)


def task_of(name: str) -> Any:
    """A task of the table, built from its schema's defaults and a small made-up training column."""
    spec = TASKS[name]
    values = {"classify": ["a", "b"], "regress": [1.0, 3.0], "multilabel": ["a,b", "b"], "seq2seq": ["x y", "y z"],
              "mlm": [None, None], "qa": []}
    cfg = OmegaConf.structured(spec.schema)
    tokenizer = train_tokenizer(["x y z"] * 10, TokenizerConfig(vocab_size=40, min_frequency=1), spec.specials)
    return build_task(cfg, spec.natural_loss, spec.fit_state(values[name], cfg, None, "made up", tokenizer))


def test_check_batches_vary_batch_size_and_length_with_padding(sentence: Callable) -> None:
    """Three check batches: different batch sizes and lengths, padding inside the first."""
    _, tok = tiny_classifier(sentence)
    texts = [sentence(i) for i in range(20)]
    batches = check_batches(tok, padding_tokenizer(tok), texts, None, samples=6)
    shapes = [tuple(ids.shape) for ids, _ in batches]
    assert [s[0] for s in shapes] == [6, 3, 1]
    assert len({s[1] for s in shapes[:2]}) == 2
    ids, mask = batches[0]
    assert mask.dtype == ids.dtype == torch.int64 and (mask == 0).any() and (ids[mask == 0] == 0).all()


def test_verify_passes_equal_outputs_and_fails_loudly_on_a_mismatch(sentence: Callable) -> None:
    """Equal outputs pass with their max difference; a shifted output or a wrong shape is a TformerError."""
    module, tok = tiny_classifier(sentence)
    batches = check_batches(tok, padding_tokenizer(tok), [sentence(i) for i in range(10)], None, samples=4)

    def exact(ids: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(ids, mask)]

    assert max(verify(module, exact, batches, ("logits", "probabilities"), 1e-4, 1e-4, "onnx").values()) == 0.0
    shifted = lambda ids, mask: [o + 1e-3 for o in exact(ids, mask)]  # noqa: E731
    with pytest.raises(TformerError, match="does not match the PyTorch model: output 'logits' differs"):
        verify(module, shifted, batches, ("logits", "probabilities"), 1e-4, 1e-4, "onnx")
    squeezed = lambda ids, mask: [o[:, :1] for o in exact(ids, mask)]  # noqa: E731
    with pytest.raises(TformerError, match="has shape"):
        verify(module, squeezed, batches, ("logits", "probabilities"), 1e-4, 1e-4, "onnx")


def test_unknown_format_and_bad_tolerances_are_user_errors(tmp_path: Path) -> None:
    """Checked before any checkpoint is read."""
    with pytest.raises(TformerError, match="unknown export format 'tflite'"):
        export_mod.export(OmegaConf.structured(ExportConfig(ckpt="x", format="tflite")), tmp_path)
    with pytest.raises(TformerError, match="atol >= 0"):
        export_mod.export(OmegaConf.structured(ExportConfig(ckpt="x", format="torch_export", atol=-1)), tmp_path)


def test_missing_export_packages_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime, format=onnx fails before any work, naming the package and the extra."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(TformerError, match="needs onnxruntime") as err:
        export_mod.export(OmegaConf.structured(ExportConfig(ckpt="x", format="onnx")), tmp_path)
    assert "tformer[export]" in (err.value.hint or "")
