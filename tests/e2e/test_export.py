"""`tformer export` end to end: ONNX and torch.export round trips of trained checkpoints match PyTorch for every
task kind; mismatches fail and leave nothing behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from transformer_cli import export as export_mod
from transformer_cli.config import ExportConfig
from transformer_cli.errors import TformerError
from transformer_cli.restore import restore

CASES = {
    "classify": ["task=classify", "data=local"],
    "classify_bce": ["task=classify", "loss=bce", "data=local"],
    "regress": ["task=regress", "data=local"],
    "multilabel": ["task=multilabel"],
}


def write_data(path: Path, case: str, sentence: Callable[[int], str]) -> None:
    """120 rows of local training data for one task kind (texts from `sentence`)."""
    rows = []
    for i in range(120):
        label: object = {"classify": ["a", "b", "c"][i % 3], "classify_bce": ["no", "yes"][i % 2],
                         "regress": float(i % 9) - 4.0,
                         "multilabel": [t for j, t in enumerate("xyz") if (i >> j) & 1]}[case]
        rows.append(json.dumps({"text": sentence(i), "label": label}))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, sentence: Callable,
                compose_train: Callable) -> dict[str, Path]:
    """One tiny trained run directory per task kind (and the one-logit binary classifier)."""
    from transformer_cli.run import train

    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for case, overrides in CASES.items():
        data = root / f"{case}.jsonl"
        write_data(data, case, sentence)
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

    def broken(path: Path, restored: object) -> export_mod.Runner:
        run = fmt.load(path, restored)
        return lambda ids, mask: [o * 1.01 + 0.01 for o in run(ids, mask)]

    monkeypatch.setitem(export_mod.FORMATS, "torch_export", dataclasses.replace(fmt, load=broken))
    out = tmp_path / "exported"
    cfg = OmegaConf.structured(ExportConfig(ckpt=str(checkpoints["classify"]), format="torch_export", out=str(out)))
    with pytest.raises(TformerError, match="does not match the PyTorch model"):
        export_mod.export(cfg, tmp_path)
    assert not (out / "model.pt2").exists() and not (out / "export.json").exists()
