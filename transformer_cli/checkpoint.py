"""Self-describing checkpoints in safe formats: safetensors weights, YAML config, JSON for the rest.

A checkpoint is a directory:
    model.safetensors   weights (no pickle)
    config.yaml         the resolved training config (rebuilds model, data and loss)
    tokenizer.json      the trained vocabulary
    task.json           what the task learned from the data (label names, target scaling)
    meta.json           format tag and version, step, metrics, versions of tformer and torch
    trainer_state.*     (optional) optimizer, scheduler, scaler, RNG and loop state for an exact resume:
                        tensors in .safetensors, the rest in .json
    manifest.json       sha256 and size of every file above; written last, so its presence means complete
It is written to a temporary sibling directory, fsynced, then renamed into place.

A run keeps its checkpoints as checkpoints/step-NNNNNNN/ directories; `best` and `last` are symlinks to
them, each replaced atomically (CheckpointDir). Killing the process at any moment leaves every pointer
on a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from transformer_cli.version import __version__
from transformer_cli.data.tokenize import load_tokenizer, save_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.files import dumps, fsync, fsync_dir, read_json, sha256_file, umask

FORMAT = "tformer-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "config.yaml", "tokenizer.json", "task.json", "meta.json")
TRAINER_FILES = ("trainer_state.safetensors", "trainer_state.json")
TENSOR_TAG = "__tensor__"  # marks where a tensor of trainer_state.safetensors belongs in trainer_state.json


@dataclass
class Checkpoint:
    """Everything read back from a checkpoint directory."""

    path: Path
    weights: dict[str, torch.Tensor]
    config: DictConfig
    tokenizer: Tokenizer
    task_state: dict[str, Any]
    meta: dict[str, Any]
    trainer_state: dict[str, Any] | None = None  # only when loaded with trainer_state=True and present


def save_checkpoint(path: Path, model: nn.Module, config: DictConfig, tokenizer: Tokenizer,
                    task_state: dict[str, Any], meta: dict[str, Any],
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint at `path`, replacing any previous one only once the new one is whole."""
    weights = {k: v.detach().cpu().contiguous() for k, v in unique_state(model).items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TformerError(f"refusing to save a checkpoint with non-finite weights: {', '.join(bad[:5])}",
                           hint="the run diverged; lower optim.lr or enable trainer.nan_policy")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a checkpoint is as readable as any output
    try:
        _write_files(tmp, weights, config, tokenizer, task_state, meta, trainer_state)
        _swap_in(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TformerError(f"could not write checkpoint {path}: {err.strerror or err}",
                           hint="free disk space or fix permissions; the previous checkpoint is untouched") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_files(tmp: Path, weights: dict[str, torch.Tensor], config: DictConfig, tokenizer: Tokenizer,
                 task_state: dict[str, Any], meta: dict[str, Any], trainer_state: dict[str, Any] | None) -> None:
    """Write every file of a checkpoint into `tmp`, the manifest last, and flush them to disk."""
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
    save_tokenizer(tokenizer, tmp / "tokenizer.json")
    _write_json(tmp / "task.json", task_state)
    _write_json(tmp / "meta.json", {"format": FORMAT, "version": VERSION, "tformer": __version__,
                                    "torch": torch.__version__, **meta})
    names = list(FILES)
    if trainer_state is not None:
        tree, tensors = flatten_state(trainer_state)
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        _write_json(tmp / "trainer_state.json", tree)
        names += list(TRAINER_FILES)
    _write_json(tmp / "manifest.json", {name: _describe(tmp / name) for name in names})
    for name in (*names, "manifest.json"):
        os.chmod(tmp / name, 0o666 & ~umask())
        fsync(tmp / name)


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; an existing checkpoint is moved aside first and removed last."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its checkpoints/best)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise TformerError(f"checkpoint path {p} does not exist",
                           hint="pass ckpt=<run dir> or ckpt=<run dir>/checkpoints/best")
    if (p / "checkpoints" / "best").is_dir():
        return p / "checkpoints" / "best"
    if p.is_file():
        raise TformerError(f"{p} is a file; a tformer checkpoint is a directory",
                           hint="pass the directory that holds manifest.json and model.safetensors")
    return p


def load_checkpoint(path: str | Path, trainer_state: bool = False) -> Checkpoint:
    """Read and verify a checkpoint; nothing in it is executed (safetensors, YAML and JSON only)."""
    p = resolve_checkpoint(path)
    manifest = _read_json(p / "manifest.json", p, "manifest.json")
    _verify(p, manifest)
    meta = _read_json(p / "meta.json", p, "meta.json")
    if meta.get("format") != FORMAT:
        raise TformerError(f"{p} is not a tformer checkpoint ({p / 'meta.json'} has format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise TformerError(f"{p} has checkpoint format version {meta.get('version')} ({p / 'meta.json'}); "
                           f"this tformer reads {VERSION}")
    try:
        weights = load_file(str(p / "model.safetensors"))
    except (SafetensorError, OSError) as err:
        raise TformerError(f"cannot read weights {p / 'model.safetensors'}: {err}") from err
    try:
        config = OmegaConf.load(p / "config.yaml")
    except Exception as err:
        raise TformerError(f"cannot read {p / 'config.yaml'}: {err}") from err
    if not isinstance(config, DictConfig):
        raise TformerError(f"{p / 'config.yaml'} does not hold a mapping")
    state = _load_trainer_state(p, manifest) if trainer_state else None
    own = OmegaConf.select(config, "data.tokenizer.kind", default=None) != "pretrained"  # else the model's own
    return Checkpoint(path=p, weights=weights, config=config, tokenizer=load_tokenizer(p / "tokenizer.json", own),
                      task_state=_read_json(p / "task.json", p, "task.json"), meta=meta, trainer_state=state)


def _load_trainer_state(p: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The optimizer/scheduler/RNG/loop state saved for resuming."""
    if not all(name in manifest for name in TRAINER_FILES):
        raise TformerError(f"checkpoint {p} holds weights only, no training state to resume from",
                           hint="resume from checkpoints/last or a checkpoints/step-* directory of the run")
    try:
        tensors = load_file(str(p / "trainer_state.safetensors"))
    except (SafetensorError, OSError) as err:
        raise TformerError(f"cannot read {p / 'trainer_state.safetensors'}: {err}") from err
    return unflatten_state(_read_json(p / "trainer_state.json", p, "trainer_state.json"), tensors)


def flatten_state(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tensors, plain values) into a JSON tree and named tensors."""
    if isinstance(tree, torch.Tensor):
        key = prefix.rstrip(".") or "root"
        return {TENSOR_TAG: key}, {key: tree.detach().cpu().contiguous()}
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out[str(k)], more = flatten_state(v, f"{prefix}{k}.")
            tensors.update(more)
        return out, tensors
    if isinstance(tree, (list, tuple)):
        items = []
        for i, v in enumerate(tree):
            item, more = flatten_state(v, f"{prefix}{i}.")
            items.append(item)
            tensors.update(more)
        return items, tensors
    return tree, tensors


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of flatten_state (tuples come back as lists)."""
    if isinstance(tree, dict):
        if set(tree) == {TENSOR_TAG}:
            return tensors[tree[TENSOR_TAG]]
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy weights into `model`, naming every missing, unexpected or mis-shaped tensor on failure."""
    expected = unique_state(model)
    problems = [f"missing tensor {k} {tuple(v.shape)}" for k, v in expected.items() if k not in weights]
    problems += [f"unexpected tensor {k} {tuple(v.shape)}" for k, v in weights.items() if k not in expected]
    problems += [f"{k}: checkpoint has {tuple(weights[k].shape)}, model needs {tuple(v.shape)}"
                 for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise TformerError(f"the weights in {source} do not fit the model built from its config:\n  {shown}",
                           hint="the checkpoint was made by a different model shape or edited by hand")
    missing, _ = model.load_state_dict(weights, strict=False)
    if set(missing) - set(model.state_dict()).difference(expected):  # only tied aliases may be absent
        raise TformerError(f"the weights in {source} lack {sorted(set(missing) - set(expected))[:5]}")


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliases: a tied weight (e.g. output projection = embeddings) appears once."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def _verify(p: Path, manifest: dict[str, Any]) -> None:
    """Check every required and listed file exists with the recorded size and sha256."""
    extra = [n for n in manifest if n in TRAINER_FILES]
    for name in (*FILES, *extra):
        entry = manifest.get(name)
        f = p / name
        if entry is None:
            raise TformerError(f"{p}/manifest.json does not list {name}; not a tformer checkpoint")
        if not isinstance(entry, dict) or not {"size", "sha256"} <= entry.keys():
            raise TformerError(f"{p}/manifest.json has a malformed entry for {name}: {entry!r}; "
                               "the checkpoint is corrupt")
        if not f.is_file():
            raise TformerError(f"checkpoint {p} is incomplete: {name} is missing")
        actual = _describe(f)
        if actual != entry:
            raise TformerError(
                f"checkpoint file {f} is corrupt: sha256 {actual['sha256'][:12]}... size {actual['size']} "
                f"does not match the manifest ({str(entry.get('sha256'))[:12]}... size {entry.get('size')})",
                hint="the file was truncated or modified; use another checkpoint (e.g. checkpoints/last)",
            )


def _describe(f: Path) -> dict[str, Any]:
    """A file's size and sha256."""
    return {"size": f.stat().st_size, "sha256": sha256_file(f)}


def _read_json(f: Path, ckpt: Path, name: str) -> dict[str, Any]:
    """Read a JSON object from a checkpoint, with a clear error when absent or malformed."""
    if not f.is_file():
        raise TformerError(f"{ckpt} is not a tformer checkpoint: {name} is missing",
                           hint="pass a directory written by tformer train (e.g. <run dir>/checkpoints/best)")
    try:
        data = read_json(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TformerError(f"{f} is not valid JSON ({err}); the checkpoint is corrupt") from err
    if not isinstance(data, dict):
        raise TformerError(f"{f} does not hold a JSON object; the checkpoint is corrupt")
    return data


def _write_json(f: Path, data: dict[str, Any]) -> None:
    """Write pretty, strict JSON (the whole directory is renamed into place, so no atomic write is needed)."""
    f.write_text(dumps(data, sort_keys=True), encoding="utf-8")


class CheckpointDir:
    """A run's checkpoints/: complete step-NNNNNNN directories, `best` and `last` symlinks, retention."""

    def __init__(self, root: Path, keep_last: int) -> None:
        self.root = root
        self.keep_last = max(1, keep_last)

    def step_dir(self, step: int) -> Path:
        """Where the checkpoint of optimizer step `step` lives."""
        return self.root / f"step-{step:07d}"

    def save(self, step: int, write: Callable[[Path], Path], best: bool) -> Path:
        """Write step's checkpoint with `write` (once per step), repoint `last` (and `best`), prune old ones."""
        target = self.step_dir(step)
        if not (target / "manifest.json").is_file():
            write(target)
        self._point("last", target)
        if best:
            self._point("best", target)
        self.prune()
        return target

    def _point(self, name: str, target: Path) -> None:
        """Atomically make `name` a relative symlink to `target` (rename over the old link)."""
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def steps(self) -> list[Path]:
        """Step directories, oldest first."""
        return sorted(p for p in self.root.glob("step-*") if p.is_dir())

    def prune(self) -> None:
        """Delete step directories beyond the newest keep_last, never the targets of `best` or `last`."""
        pinned = {(self.root / n).resolve() for n in ("best", "last") if (self.root / n).is_symlink()}
        for old in self.steps()[: -self.keep_last]:
            if old.resolve() in pinned:
                continue
            trash = self.root / f".trash-{old.name}-{os.getpid()}"
            old.rename(trash)  # atomic: a half-deleted directory never looks like a checkpoint
            shutil.rmtree(trash, ignore_errors=True)

    def newest_complete(self) -> Path | None:
        """The newest step directory whose manifest and hashes verify and that can resume training."""
        for candidate in reversed(self.steps()):
            manifest_file = candidate / "manifest.json"
            if not manifest_file.is_file():
                continue
            try:
                manifest = _read_json(manifest_file, candidate, "manifest.json")
                _verify(candidate, manifest)
            except TformerError:
                continue
            if all(name in manifest for name in TRAINER_FILES):
                return candidate
        return None
