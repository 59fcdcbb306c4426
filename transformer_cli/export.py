"""`tformer export`: a checkpoint's model as ONNX or a torch.export program, checked against PyTorch.

The exported graph takes what the tokenizer gives (`input_ids` and `attention_mask`, both (batch, sequence)
int64, any batch size and length up to model.max_positions) and returns the task's read-out: logits and
probabilities for classification, the prediction on the original target scale for regression. Beside it go
the tokenizer (set to pad, so a batch encodes in one call), the checkpoint's task.json (label names or
target scaling) and config.yaml, and export.json describing inputs, outputs and labels.

Before anything is kept, the exported model runs on real texts of the checkpoint's data (three batches of
different sizes and lengths, with padding) and must match the PyTorch model within atol + rtol * |output|;
otherwise the command fails and removes the exported file.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from transformer_cli.data.tokenize import PAD, PAD_ID, encode
from transformer_cli.errors import TformerError, choose
from transformer_cli.files import write_json
from transformer_cli.pretrained.export import (
    PROBLEM_TYPES,
    family_of,
    read_back,
    write_hf,
)
from transformer_cli.restore import Restored, restore
from transformer_cli.tasks.protocol import Readout
from transformer_cli.version import __version__

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
Runner = Callable[[Tensor, Tensor], list[np.ndarray]]  # (ids, mask) -> outputs, in OUTPUTS order


# ----------------------------------------------------------------------------- what the graph computes


class ExportedModel(nn.Module):
    """The model and its task's read-out: (B, T) ids and (B, T) 0/1 int mask in, named outputs out."""

    def __init__(self, model: nn.Module, readout: Readout) -> None:
        super().__init__()
        self.model = model
        self.readout = readout

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """(B, T) int64 ids and (B, T) int64 mask (1 = real token) -> the read-out tensors."""
        return self.readout.compute(self.model(input_ids, attention_mask.bool()))


def readout_of(restored: Restored) -> Readout:
    """The task's export read-out, or a clear refusal (e.g. seq2seq generates through a decoding loop)."""
    readout = restored.task.readout()
    if readout is None:
        raise TformerError(f"tformer export does not support task '{restored.config.task.name}': its predictions "
                           "are not a fixed read-out of one forward pass (seq2seq decodes token by token, mlm "
                           "fills in the [MASK]s of each text)",
                           hint="use tformer predict for this task; an mlm run's encoder starts other tasks "
                                "through model.init_from")
    return readout


# ----------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Format:
    """One export format: its main file, how to write it and how to run what was written."""

    file: str
    save: Callable[[ExportedModel, tuple[Tensor, Tensor], Path, DictConfig, Restored], dict[str, Any]]
    load: Callable[[Path, Restored], Runner]
    needs: tuple[str, ...]  # modules it imports, all from the `export` extra
    graph: bool = True  # a graph file beside which the padding tokenizer, task.json and config.yaml go
    check: Callable[[Restored], Any] = lambda restored: None  # refuses a model the format cannot hold


def longest(restored: Restored) -> int:
    """The longest input the model takes: its position table, less where its positions start."""
    model = restored.config.model
    return int(model.max_positions) - int(model.position_offset)


def _dynamic_shapes(max_positions: int) -> dict[str, dict[int, Any]]:
    """Batch and sequence length free (the sequence up to the position table), shared by both inputs."""
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max_positions)
    return {name: {0: batch, 1: sequence} for name in INPUTS}


def _save_onnx(module: ExportedModel, example: tuple[Tensor, Tensor], path: Path, cfg: DictConfig,
               restored: Restored) -> dict[str, Any]:
    """ONNX through torch's dynamo-based exporter (torch.export underneath), checked by onnx's checker."""
    import onnx

    with _quiet_exporter():
        torch.onnx.export(module, example, str(path), input_names=list(INPUTS),
                          output_names=list(module.readout.names), dynamic_shapes=_dynamic_shapes(longest(restored)),
                          opset_version=cfg.opset, dynamo=True, external_data=False, verbose=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    import onnxruntime

    return {"opset": opset, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _onnx_runner(path: Path, restored: Restored) -> Runner:
    """Run an ONNX file with onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})


def _save_torch_export(module: ExportedModel, example: tuple[Tensor, Tensor], path: Path, cfg: DictConfig,
                       restored: Restored) -> dict[str, Any]:
    """A torch.export program (.pt2): load with torch.export.load(path).module()."""
    with _quiet_exporter():
        program = torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(longest(restored)))
    torch.export.save(program, str(path))
    return {}


def _torch_export_runner(path: Path, restored: Restored) -> Runner:
    """Run a saved torch.export program."""
    module = torch.export.load(str(path)).module()

    def run(ids: Tensor, mask: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(ids, mask)]

    return run


def _save_hf(module: ExportedModel, example: tuple[Tensor, Tensor], path: Path, cfg: DictConfig,
             restored: Restored) -> dict[str, Any]:
    """A Hugging Face directory (config.json, model.safetensors, tokenizer files) in the export folder."""
    import importlib.util

    write_hf(restored, path.parent)
    if importlib.util.find_spec("transformers") is None:
        return {"checked_with": " (the written tensors read back into tformer's model; install transformers to "
                                "check with its own classes)"}
    import transformers

    return {"transformers": transformers.__version__,
            "checked_with": f" (run by transformers {transformers.__version__})"}


def _hf_runner(path: Path, restored: Restored) -> Runner:
    """Run the written directory with transformers' AutoModelForSequenceClassification when it is installed;
    without it, read the written tensors back into tformer's model (a check of the file, not of transformers)."""
    import importlib.util

    logits = _transformers_logits if importlib.util.find_spec("transformers") else _read_back_logits
    run = logits(path.parent, restored)
    problem = PROBLEM_TYPES[restored.config.task.name]

    def outputs(ids: Tensor, mask: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            out = run(ids, mask).float()  # (B, K)
        if problem == "regression":
            return [out[:, 0].numpy()]
        probs = torch.softmax(out, -1) if problem == "single_label_classification" else torch.sigmoid(out)
        return [out.numpy(), probs.numpy()]

    return outputs


def _transformers_logits(folder: Path, restored: Restored) -> Callable[[Tensor, Tensor], Tensor]:
    """Logits from transformers' own classifier loaded from the folder; any weight it lacks or ignores fails."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise TformerError(f"transformers loads {folder} with {problems}; the export is incomplete")
    model.eval()
    types = restored.model.encoder.embed.token_types  # what the tokenizer's pair template gives
    uses_types = restored.config.model.type_vocab_size > 1
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask,
                                   **({"token_type_ids": types(ids, mask.bool())} if uses_types else {})).logits


def _read_back_logits(folder: Path, restored: Restored) -> Callable[[Tensor, Tensor], Tensor]:
    """Outputs of tformer's model with the written tensors read back into it (the inverse name mapping)."""
    model = read_back(restored, folder).eval()
    return lambda ids, mask: model(ids, mask.bool()).reshape(len(ids), -1)


FORMATS: dict[str, Format] = {
    "onnx": Format("model.onnx", _save_onnx, _onnx_runner, ("onnx", "onnxruntime", "onnxscript")),
    "torch_export": Format("model.pt2", _save_torch_export, _torch_export_runner, ()),
    "hf": Format("model.safetensors", _save_hf, _hf_runner, (), graph=False, check=family_of),
}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notes, skipped torchvision ops, graph passes) meanwhile."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------- the command


def export(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Export a checkpoint's model, check it against PyTorch on real texts, write it with its tokenizer."""
    fmt = choose(FORMATS, cfg.format, "export format")
    _check_installed(fmt, cfg.format)
    if cfg.atol < 0 or cfg.rtol < 0 or cfg.samples < 2:
        raise TformerError("export needs atol >= 0, rtol >= 0 and samples >= 2",
                           hint=f"got atol={cfg.atol}, rtol={cfg.rtol}, samples={cfg.samples}")
    restored = restore(cfg.ckpt)
    ckpt, train_cfg = restored.checkpoint, restored.config
    fmt.check(restored)
    readout = readout_of(restored)
    module = ExportedModel(restored.model, readout).eval()

    tokenizer = padding_tokenizer(ckpt.tokenizer, int(train_cfg.model.pad_id))
    texts, pairs, source = sample_texts(cfg, train_cfg)
    batches = check_batches(ckpt.tokenizer, tokenizer, texts, pairs, cfg.samples)
    out = Path(cfg.out).expanduser() if cfg.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / fmt.file
    log.info("exporting %s (%s) to %s", ckpt.path, cfg.format, path)
    try:
        extra = fmt.save(module, batches[0], path, cfg, restored)
        diffs = verify(module, fmt.load(path, restored), batches, readout.names, cfg.atol, cfg.rtol, cfg.format)
    except BaseException:
        path.unlink(missing_ok=True)  # a file that failed its check must not look like a usable export
        (out / "export.json").unlink(missing_ok=True)  # nor may an earlier export's description stay beside it
        raise
    if fmt.graph:  # beside a graph: what a user needs to feed it (a Hugging Face folder has its own files)
        tokenizer.save(str(out / "tokenizer.json"))
        for name in ("task.json", "config.yaml"):
            shutil.copyfile(ckpt.path / name, out / name)
    with torch.no_grad():
        reference = module(*batches[-1])
    card = describe(cfg, restored, readout, reference, batches, diffs, source, extra)
    write_json(out / "export.json", card)
    worst = max(diffs.values())
    print(f"exported {train_cfg.task.name} model to {path} ({cfg.format}); outputs: "
          + ", ".join(f"{o['name']} ({', '.join(map(str, o['shape']))})" for o in card["outputs"])
          + f"\nchecked against PyTorch on {len(batches)} batches of real texts{extra.get('checked_with', '')}: "
          f"max abs diff {worst:.2e} (allowed {cfg.atol:g} + {cfg.rtol:g} x |output|)")
    return card


def _check_installed(fmt: Format, name: str) -> None:
    """Fail early, with the install command, when a format's packages are missing."""
    import importlib.util

    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise TformerError(f"format={name} needs {', '.join(missing)} (not installed)",
                           hint="pip install 'tformer[export]'")


def padding_tokenizer(tokenizer: Any, pad_id: int = PAD_ID) -> Any:
    """A copy of the checkpoint's tokenizer that pads a batch to its longest text with its padding token
    (tformer's [PAD] is id 0; a pretrained tokenizer has its own)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.enable_padding(pad_id=pad_id, pad_token=copy.id_to_token(pad_id) or PAD)
    return copy


def sample_texts(cfg: DictConfig, train_cfg: DictConfig) -> tuple[list[str], list[str] | None, str]:
    """Texts to check the export on: `file=`, else the checkpoint's validation split."""
    from transformer_cli.data.loading import load_splits, read_eval_file

    try:
        if cfg.file:
            raw = read_eval_file(Path(cfg.file), train_cfg.data, labels=False)  # texts are all the check needs
            return raw.texts, raw.pairs, str(cfg.file)
        raw = load_splits(train_cfg.data, labels=False)["validation"]
    except TformerError as err:
        raise TformerError(f"export checks the model on real texts, but the checkpoint's data cannot be read: "
                           f"{err.message}", hint="pass file=<a file with the training columns>") from err
    return raw.texts, raw.pairs, f"validation split of {raw.where.source}"


def check_batches(plain: Any, padding: Any, texts: Sequence[str], pairs: Sequence[str] | None,
                  samples: int) -> list[tuple[Tensor, Tensor]]:
    """Three batches of different size and length: the longest texts with a short one (padding inside),
    the shortest texts, and one text alone. Each is (ids, mask), both (B, T) int64."""
    if len(texts) < 2:
        raise TformerError(f"export needs at least 2 sample texts, found {len(texts)}")
    lengths = np.array([len(x) for x in encode(plain, texts, pairs)])
    order = np.argsort(lengths, kind="stable")
    k = min(samples, len(texts))
    longest = [int(i) for i in order[::-1][: k - 1]] + [int(order[0])]
    shortest = [int(i) for i in order[: max(2, k // 2)]]
    middle = [int(order[len(order) // 2])]
    batches = [_encode(padding, texts, pairs, rows) for rows in (longest, shortest, middle)]
    if batches[0][0].shape[1] == batches[1][0].shape[1]:  # every text has the same length: vary it by hand
        ids, mask = batches[1]
        half = max(2, ids.shape[1] // 2)
        batches[1] = (ids[:, :half].contiguous(), mask[:, :half].contiguous())
    return batches


def _encode(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
            rows: list[int]) -> tuple[Tensor, Tensor]:
    """The chosen rows through the padding tokenizer, as a user of the export would call it."""
    inputs = [texts[i] if pairs is None else (texts[i], pairs[i]) for i in rows]
    encoded = tokenizer.encode_batch(inputs)
    ids = torch.tensor([e.ids for e in encoded], dtype=torch.int64)  # (B, T)
    mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.int64)  # (B, T)
    return ids, mask


def verify(module: ExportedModel, run: Runner, batches: list[tuple[Tensor, Tensor]], names: Sequence[str],
           atol: float, rtol: float, fmt: str) -> dict[str, float]:
    """The largest |exported - PyTorch| per output over every batch; a mismatch is an error naming it."""
    worst = dict.fromkeys(names, 0.0)
    for ids, mask in batches:
        with torch.no_grad():
            expected = [t.numpy() for t in module(ids, mask)]
        got = run(ids, mask)
        if len(got) != len(names):
            raise _mismatch(fmt, f"it returns {len(got)} outputs, not {len(names)} ({', '.join(names)})", ids)
        for name, want, have in zip(names, expected, got):
            have = np.asarray(have)
            if have.shape != want.shape:
                raise _mismatch(fmt, f"output '{name}' has shape {have.shape}, PyTorch gives {want.shape}", ids)
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            worst[name] = max(worst[name], float(diff.max(initial=0.0)))
            if not np.all(diff <= atol + rtol * np.abs(want)) or not np.isfinite(have).all():
                raise _mismatch(fmt, f"output '{name}' differs from PyTorch by up to {worst[name]:.3g} "
                                     f"(allowed {atol:g} + {rtol:g} x |output|)", ids)
    return worst


def _mismatch(fmt: str, what: str, ids: Tensor) -> TformerError:
    """The error for an export that does not compute what the PyTorch model computes."""
    return TformerError(f"the {fmt} export does not match the PyTorch model: {what}, on a batch of shape "
                        f"{tuple(ids.shape)}; the exported file was removed",
                        hint="try the other format (format=onnx or format=torch_export), or loosen atol/rtol "
                        "if the difference is rounding; please report it with the checkpoint's config.yaml")


def describe(cfg: DictConfig, restored: Restored, readout: Readout, reference: tuple[Tensor, ...],
             batches: list[tuple[Tensor, Tensor]], diffs: dict[str, float], source: str,
             extra: dict[str, Any]) -> dict[str, Any]:
    """export.json: what goes in, what comes out, what the labels are, and how the check went."""
    ckpt, train_cfg = restored.checkpoint, restored.config
    outputs = [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": ["batch", *t.shape[1:]]}
               for n, t in zip(readout.names, reference)]
    card: dict[str, Any] = {
        "format": cfg.format, "model": FORMATS[cfg.format].file, "task": train_cfg.task.name,
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                   {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"],
                    "meaning": "1 for real tokens, 0 for padding"}],
        "outputs": outputs,
        "tokenizer": {"file": "tokenizer.json", "pads": True, "pad_id": int(train_cfg.model.pad_id),
                      "max_length": int(train_cfg.data.tokenizer.max_length),
                      "pairs": train_cfg.data.text_pair_column is not None},
        "max_positions": int(train_cfg.model.max_positions),
        "checkpoint": {"path": str(ckpt.path), "step": ckpt.meta.get("step"), "metrics": ckpt.meta.get("metrics")},
        "check": {"texts": source, "batch_shapes": [list(ids.shape) for ids, _ in batches],
                  "max_abs_diff": diffs, "atol": cfg.atol, "rtol": cfg.rtol},
        "versions": {"tformer": __version__, "torch": torch.__version__, **extra},
        **readout.card,  # what the outputs mean: label names, threshold, target scale
    }
    return card
