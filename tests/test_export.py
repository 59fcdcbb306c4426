"""`tformer export`: ONNX and torch.export round trips match PyTorch for every task kind; mismatches fail."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_train
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
from transformer_cli.restore import restore
from transformer_cli.tasks import TASKS, build_task
from transformer_cli.tasks.classify import ClassifyConfig, ClassifyTask

WORDS = "good bad fine awful great dull bright slow quick warm cold sharp".split()


def sentence(i: int) -> str:
    """A deterministic text whose length varies with i (3 to 17 words)."""
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 15))


def tiny_classifier(num_labels: int = 3) -> tuple[ExportedModel, object]:
    """An untrained tiny classifier wrapped for export, and a tokenizer for it."""
    tok = train_tokenizer([sentence(i) for i in range(60)], TokenizerConfig(vocab_size=200, min_frequency=1))
    labels = [f"l{i}" for i in range(num_labels)]
    task = ClassifyTask(OmegaConf.structured(ClassifyConfig()), "index", {"labels": labels})
    model = task.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), tok.get_vocab_size())
    return ExportedModel(model, task.readout()).eval(), tok


def test_export_covers_the_single_output_task_kinds_and_refuses_others(tmp_path: Path) -> None:
    """classify, regress and multilabel have a read-out; seq2seq (a decoding loop) has none and is refused by name."""
    readouts = {name: task_of(name).readout() for name in TASKS}
    assert {name for name, r in readouts.items() if r is not None} == {"classify", "regress", "multilabel"}
    assert readouts["classify"].names == ("logits", "probabilities") == readouts["multilabel"].names
    assert readouts["regress"].names == ("prediction",)
    restored = SimpleNamespace(task=task_of("seq2seq"), config=OmegaConf.create({"task": {"name": "seq2seq"}}))
    with pytest.raises(TformerError, match="does not support task 'seq2seq'"):
        readout_of(restored)


def task_of(name: str) -> Any:
    """A task of the table, built from its schema's defaults and a small made-up training column."""
    spec = TASKS[name]
    values = {"classify": ["a", "b"], "regress": [1.0, 3.0], "multilabel": ["a,b", "b"], "seq2seq": ["x y", "y z"]}
    cfg = OmegaConf.structured(spec.schema)
    return build_task(cfg, spec.natural_loss, spec.fit_state(values[name], cfg, None, "made up"))


def test_check_batches_vary_batch_size_and_length_with_padding() -> None:
    """Three check batches: different batch sizes and lengths, padding inside the first."""
    _, tok = tiny_classifier()
    texts = [sentence(i) for i in range(20)]
    batches = check_batches(tok, padding_tokenizer(tok), texts, None, samples=6)
    shapes = [tuple(ids.shape) for ids, _ in batches]
    assert [s[0] for s in shapes] == [6, 3, 1]
    assert len({s[1] for s in shapes[:2]}) == 2
    ids, mask = batches[0]
    assert mask.dtype == ids.dtype == torch.int64 and (mask == 0).any() and (ids[mask == 0] == 0).all()


def test_verify_passes_equal_outputs_and_fails_loudly_on_a_mismatch() -> None:
    """Equal outputs pass with their max difference; a shifted output or a wrong shape is a TformerError."""
    module, tok = tiny_classifier()
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


# ----------------------------------------------------------------------------- round trips on real checkpoints

CASES = {
    "classify": ["task=classify", "data=local"],
    "classify_bce": ["task=classify", "loss=bce", "data=local"],
    "regress": ["task=regress", "data=local"],
    "multilabel": ["task=multilabel"],
}


def write_data(path: Path, case: str) -> None:
    """120 rows of local training data for one task kind."""
    rows = []
    for i in range(120):
        label: object = {"classify": ["a", "b", "c"][i % 3], "classify_bce": ["no", "yes"][i % 2],
                         "regress": float(i % 9) - 4.0,
                         "multilabel": [t for j, t in enumerate("xyz") if (i >> j) & 1]}[case]
        rows.append(json.dumps({"text": sentence(i), "label": label}))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run directory per task kind (and the one-logit binary classifier)."""
    from transformer_cli.run import train

    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for case, overrides in CASES.items():
        data = root / f"{case}.jsonl"
        write_data(data, case)
        run_dir = root / case
        run_dir.mkdir()
        train(compose_train([*overrides, f"data.train={data}", "model=tiny", "trainer=debug", "trainer.max_steps=4",
                             "trainer.eval_every=2", "data.tokenizer.vocab_size=200"]), run_dir)
        out[case] = run_dir
    return out


def run_exported(fmt: str, out: Path, ids: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """Run an exported model as a user would, outside tformer's own check."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    module = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        return [t.numpy() for t in module(ids, mask)]


# ONNX for each task kind; torch.export for both classifier heads (C logits, and one logit for bce).
ROUND_TRIPS = [(c, "onnx") for c in ("classify", "regress", "multilabel")] + [(c, "torch_export") for c in
                                                                             ("classify", "classify_bce")]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "fmt"), ROUND_TRIPS, ids=[f"{c}-{f}" for c, f in ROUND_TRIPS])
def test_export_round_trip_matches_pytorch(checkpoints: dict[str, Path], tmp_path: Path, case: str, fmt: str) -> None:
    """The export writes model, tokenizer, labels and export.json; on new texts it answers as PyTorch does."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / "exported"
    card = export_mod.export(OmegaConf.structured(ExportConfig(ckpt=str(checkpoints[case]), format=fmt, out=str(out))),
                             tmp_path)
    for name in (export_mod.FORMATS[fmt].file, "tokenizer.json", "task.json", "config.yaml", "export.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(card))
    assert max(card["check"]["max_abs_diff"].values()) <= 1e-4
    assert len({tuple(s) for s in card["check"]["batch_shapes"]}) == 3

    # An independent check, as a user of the export: its tokenizer pads, its model answers like PyTorch's.
    from tokenizers import Tokenizer

    texts = ["a brand new text", "warm bright quick " * 9, "cold"]
    encoded = Tokenizer.from_file(str(out / "tokenizer.json")).encode_batch(texts)
    ids = torch.tensor([e.ids for e in encoded])
    mask = torch.tensor([e.attention_mask for e in encoded])
    restored = restore(checkpoints[case])
    train_cfg, task, model = restored.config, restored.task, restored.model.eval()
    with torch.no_grad():
        raw = model(ids, mask.bool())
    got = run_exported(fmt, out, ids, mask)
    assert [o["name"] for o in card["outputs"]] == list(task.readout().names)
    if train_cfg.task.name == "regress":
        np.testing.assert_allclose(got[0], raw.numpy() * task.std + task.mean, atol=1e-4, rtol=1e-4)
        assert card["target_scale"]["mean"] == pytest.approx(task.mean)
    else:
        np.testing.assert_allclose(got[0], raw.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(got[1], task.probabilities(raw).numpy(), atol=1e-4, rtol=1e-4)
        assert card["labels"] == task.labels
        width = 2 if case == "classify_bce" else len(task.labels)
        assert got[1].shape == (3, width) and card["outputs"][1]["shape"] == ["batch", width]


@pytest.mark.slow
def test_mismatching_export_fails_and_is_removed(checkpoints: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """If the exported model computes something else, export fails with the difference and keeps no file."""
    fmt = export_mod.FORMATS["torch_export"]

    def broken(path: Path) -> export_mod.Runner:
        run = fmt.load(path)
        return lambda ids, mask: [o * 1.01 + 0.01 for o in run(ids, mask)]

    monkeypatch.setitem(export_mod.FORMATS, "torch_export", dataclasses.replace(fmt, load=broken))
    out = tmp_path / "exported"
    cfg = OmegaConf.structured(ExportConfig(ckpt=str(checkpoints["classify"]), format="torch_export", out=str(out)))
    with pytest.raises(TformerError, match="does not match the PyTorch model"):
        export_mod.export(cfg, tmp_path)
    assert not (out / "model.pt2").exists() and not (out / "export.json").exists()
