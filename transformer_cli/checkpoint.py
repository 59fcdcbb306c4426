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

Reading one is safe against a forged checkpoint, not only a damaged one (the manifest detects damage, but a
forger can recompute it): only regular files are read (no symbolic links), every YAML/JSON file has a size
cap, YAML anchors and aliases are refused, meta.json and trainer_state.json are checked against typed
schemas, and the weights are only read through safetensors (memory bounded by the file's size). restore.py
compares the model the stored config describes with the stored tensors before it allocates that model.

A run keeps its checkpoints as checkpoints/step-NNNNNNN/ directories; `best` and `last` are symlinks to
them, each replaced atomically (CheckpointDir). Killing the process at any moment leaves every pointer
on a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from transformer_cli.version import __version__
from transformer_cli.data.tokenize import load_tokenizer, save_tokenizer
from transformer_cli.errors import TformerError
from transformer_cli.files import dumps, fsync, fsync_dir, sha256_file, umask
from transformer_cli.typecheck import mismatches

FORMAT = "tformer-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "config.yaml", "tokenizer.json", "task.json", "meta.json")
TRAINER_FILES = ("trainer_state.safetensors", "trainer_state.json")
TENSOR_TAG = "__tensor__"  # marks where a tensor of trainer_state.safetensors belongs in trainer_state.json
MB = 1 << 20
# The largest text file of each kind a checkpoint may hold: far above any real one, and small enough that
# parsing it stays within a few hundred MB (a 250k-piece tokenizer.json is about 20 MB).
SIZE_LIMITS = {"manifest.json": 1 * MB, "config.yaml": 1 * MB, "meta.json": 1 * MB, "task.json": 32 * MB,
               "trainer_state.json": 32 * MB, "tokenizer.json": 64 * MB}
# meta.json: the keys tformer writes, with their types (format, version and step are required).
META_SCHEMA: dict[str, Any] = {"format": str, "version": int, "step": int, "epoch": int, "monitor": str | None,
                               "metrics": dict[str, float | None] | None, "tformer": str, "torch": str}
META_REQUIRED = ("format", "version", "step")
# trainer_state.json once its tensors are put back (see Fitter.capture).
FIT_SCHEMA: dict[str, Any] = {"step": int, "epoch": int, "windows_done": int, "best_value": float | None,
                              "best_step": int | None, "evals_without_improvement": int,
                              "evaluated_at": int | None, "skipped_steps": int}
TRAINER_SCHEMA: dict[str, Any] = {"optimizer": dict[str, Any], "scheduler": dict[str, Any], "scaler": dict[str, Any],
                                  "rng": dict[str, Any], "rng_other_ranks": list[dict[str, Any]],  # torchrun
                                  "fit": FIT_SCHEMA, "meter": dict[str, Any]}
TRAINER_REQUIRED = ("optimizer", "scheduler", "scaler", "rng", "fit", "meter")


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
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise TformerError(f"could not write checkpoint {path}: {reason}",
                           hint=f"free space on the disk holding {path.parent} (or fix its permissions), then resume "
                                "with resume=auto; the previous checkpoint is untouched") from err
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


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to `source` at `target`, or a copy where links are impossible (another file system)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
        fsync(target)


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
    _check_schema(p, "meta.json", meta, META_SCHEMA, META_REQUIRED)
    config = _read_yaml(p, "config.yaml")
    task_state = _read_json(p / "task.json", p, "task.json")
    state = _load_trainer_state(p, manifest) if trainer_state else None
    try:
        weights = load_file(str(p / "model.safetensors"))
    except (SafetensorError, OSError) as err:
        raise TformerError(f"cannot read weights {p / 'model.safetensors'}: {err}") from err
    own = OmegaConf.select(config, "data.tokenizer.kind", default=None) != "pretrained"  # else the model's own
    _read_text(p, "tokenizer.json", check_only=True)
    return Checkpoint(path=p, weights=weights, config=config, tokenizer=load_tokenizer(p / "tokenizer.json", own),
                      task_state=task_state, meta=meta, trainer_state=state)


def corrupt(p: Path, what: str) -> TformerError:
    """The error for a checkpoint that a damaged or forged file makes unusable."""
    return TformerError(f"checkpoint {p} is corrupt or not a tformer checkpoint: {what}",
                        hint="use another checkpoint (e.g. the run's checkpoints/last), or one written by tformer train")


def _check_schema(p: Path, name: str, data: dict[str, Any], schema: dict[str, Any],
                  required: tuple[str, ...] = ()) -> None:
    """Refuse a JSON file whose keys or value types are not what tformer writes."""
    problems = [f"{key}: missing" for key in required if key not in data] + mismatches(data, schema)
    if problems:
        raise corrupt(p, f"{name} does not have the expected content ({'; '.join(problems[:5])})")


def _read_yaml(p: Path, name: str) -> DictConfig:
    """A checkpoint's YAML file as a config: plain mappings, lists and scalars only (no anchors or aliases)."""
    text = _read_text(p, name)
    try:
        for token in yaml.scan(text):  # the token stream: cheap, and it expands nothing
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise corrupt(p, f"{name} uses YAML anchors or aliases (&, *), which tformer never writes")
        config = OmegaConf.create(text)  # omegaconf's YAML loader (plain YAML, its number rules)
    except TformerError:
        raise
    except Exception as err:  # yaml.YAMLError, RecursionError for deep nesting, omegaconf's errors
        raise TformerError(f"cannot read {p / name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                           "the checkpoint is corrupt") from err
    if not isinstance(config, DictConfig):
        raise TformerError(f"{p / name} does not hold a mapping")
    return config


def _read_text(p: Path, name: str, check_only: bool = False) -> str:
    """A text file of a checkpoint, refused when it is larger than tformer would ever write (`check_only`: the
    size check alone, for a file another library reads)."""
    f = p / name
    limit = SIZE_LIMITS.get(name, 1 * MB)
    if f.stat().st_size > limit:
        raise corrupt(p, f"{name} is {f.stat().st_size:,} bytes, over the {limit:,} a tformer checkpoint allows")
    if check_only:
        return ""
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise corrupt(p, f"{name} is not UTF-8 text ({err})") from err


def _load_trainer_state(p: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The optimizer/scheduler/RNG/loop state saved for resuming."""
    if not all(name in manifest for name in TRAINER_FILES):
        raise TformerError(f"checkpoint {p} holds weights only, no training state to resume from",
                           hint="resume from checkpoints/last or a checkpoints/step-* directory of the run")
    tree = _read_json(p / "trainer_state.json", p, "trainer_state.json")
    try:
        tensors = load_file(str(p / "trainer_state.safetensors"))
    except (SafetensorError, OSError) as err:
        raise TformerError(f"cannot read {p / 'trainer_state.safetensors'}: {err}") from err
    try:
        state = unflatten_state(tree, tensors)
    except (KeyError, TypeError) as err:
        raise corrupt(p, f"trainer_state.json names a tensor that trainer_state.safetensors lacks ({err})") from err
    _check_schema(p, "trainer_state.json", state, TRAINER_SCHEMA, TRAINER_REQUIRED)
    _check_schema(p, "trainer_state.json", state["fit"], FIT_SCHEMA, tuple(FIT_SCHEMA))
    return state


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
            return tensors[str(tree[TENSOR_TAG])]
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy weights into `model`, naming every missing, unexpected or mis-shaped tensor on failure."""
    expected = unique_state(model)
    problems = weight_problems({k: tuple(v.shape) for k, v in expected.items()},
                               {k: tuple(v.shape) for k, v in weights.items()})
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise TformerError(f"the weights in {source} do not fit the model built from its config:\n  {shown}",
                           hint="the checkpoint was made by a different model shape or edited by hand")
    missing, _ = model.load_state_dict(weights, strict=False)
    if set(missing) - set(model.state_dict()).difference(expected):  # only tied aliases may be absent
        raise TformerError(f"the weights in {source} lack {sorted(set(missing) - set(expected))[:5]}")


def weight_problems(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> list[str]:
    """Every tensor missing from `found`, unexpected in it, or of another shape than `expected` says."""
    problems = [f"missing tensor {k} {v}" for k, v in expected.items() if k not in found]
    problems += [f"unexpected tensor {k} {v}" for k, v in found.items() if k not in expected]
    problems += [f"{k}: checkpoint has {found[k]}, model needs {v}"
                 for k, v in expected.items() if k in found and found[k] != v]
    return problems


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
        _regular(p, name)
        actual = _describe(f)
        if actual != entry:
            raise TformerError(
                f"checkpoint file {f} is corrupt: sha256 {actual['sha256'][:12]}... size {actual['size']} "
                f"does not match the manifest ({str(entry.get('sha256'))[:12]}... size {entry.get('size')})",
                hint="the file was truncated or modified; use another checkpoint (e.g. checkpoints/last)",
            )


def _regular(p: Path, name: str) -> None:
    """Refuse a checkpoint file that is missing, a symbolic link, or not a plain file (a FIFO, a device...)."""
    try:
        mode = os.lstat(p / name).st_mode
    except FileNotFoundError:
        raise TformerError(f"checkpoint {p} is incomplete: {name} is missing") from None
    if stat.S_ISLNK(mode):
        raise corrupt(p, f"{name} is a symbolic link; tformer writes plain files and never follows links in one")
    if not stat.S_ISREG(mode):
        raise corrupt(p, f"{name} is not a regular file")


def _describe(f: Path) -> dict[str, Any]:
    """A file's size and sha256."""
    return {"size": f.stat().st_size, "sha256": sha256_file(f)}


def _read_json(f: Path, ckpt: Path, name: str) -> dict[str, Any]:
    """Read a JSON object from a checkpoint, with a clear error when absent, too large or malformed."""
    if not os.path.lexists(f):
        raise TformerError(f"{ckpt} is not a tformer checkpoint: {name} is missing",
                           hint="pass a directory written by tformer train (e.g. <run dir>/checkpoints/best)")
    _regular(ckpt, name)
    try:
        data = json.loads(_read_text(ckpt, name))
    except (json.JSONDecodeError, RecursionError) as err:
        raise TformerError(f"{f} is not valid JSON ({str(err)[:200]}); the checkpoint is corrupt") from err
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
        self.point("last", target)
        if best:
            self.point("best", target)
        self.prune()
        return target

    def point(self, name: str, target: Path) -> None:
        """Atomically make `name` a relative symlink to `target` (rename over the old link)."""
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def adopt(self, source: Path, step: int) -> Path:
        """Bring a complete checkpoint of another run in as this run's step `step`: hard links where the file
        system allows (checkpoint files are never modified in place), copies otherwise."""
        target = self.step_dir(step)
        if (target / "manifest.json").is_file():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=self.root))
        try:
            for f in sorted(source.resolve().iterdir()):
                if f.is_file() and not f.is_symlink():
                    _link_or_copy(f, tmp / f.name)
            fsync_dir(tmp)
            _swap_in(tmp, target)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TformerError(f"could not bring checkpoint {source} into {self.root}: {err.strerror or err}",
                               hint=f"free space on the disk holding {self.root}, or resume in the original run "
                                    "directory") from err
        return target

    def remove_debris(self) -> list[str]:
        """Delete what an interrupted write or prune left behind (temporary, moved-aside and trash directories,
        half-made links); only call it while holding the run directory's lock."""
        if not self.root.is_dir():
            return []
        debris = [p for p in self.root.iterdir()
                  if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name or p.name.startswith(".trash-"))]
        for p in debris:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return sorted(p.name for p in debris)

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
