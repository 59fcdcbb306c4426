"""Resuming a run: which checkpoint it continues from, whether the config allows it, and its metrics file."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transformer_cli.checkpoint import CheckpointDir
from transformer_cli.distributed import Dist
from transformer_cli.errors import TformerError
from transformer_cli.files import write_text_atomic
from transformer_cli.loop import FitState
from transformer_cli.pretrained.settings import adopt
from transformer_cli.restore import Restored, restore
from transformer_cli.validate import to_plain

log = logging.getLogger("tformer")

# Settings that may differ between a run and its resumption: how long to go on, where, how to show it.
RESUMABLE_CHANGES = ("resume", "trainer.max_steps", "trainer.max_epochs", "trainer.progress", "trainer.device",
                     "trainer.log_every", "trainer.save_every", "trainer.keep_last", "trainer.threads",
                     "trainer.early_stopping_patience", "trainer.nan_policy", "trainer.max_consecutive_skips",
                     "trainer.detect_anomaly", "trainer.compile", "data.archive", "data.cache_dir")


def find_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: none, this run dir's newest complete one (auto), or a given path."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = CheckpointDir(run_dir / "checkpoints", cfg.trainer.keep_last).newest_complete()
        if found is None:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh", run_dir / "checkpoints")
        return found
    path = Path(str(cfg.resume)).expanduser()
    return path / "checkpoints" / "last" if (path / "checkpoints" / "last").is_dir() else path


def resume_from(cfg: DictConfig, run_dir: Path, dist: Dist) -> tuple[DictConfig, Restored | None]:
    """The checkpoint this run continues, rebuilt with its training state (None for a fresh start), and the
    config completed with the checkpoint's pretrained-model settings (no model directory is needed).

    Rank 0 chooses it; with several processes every rank restores the one rank 0 chose."""
    path = find_resume(cfg, run_dir) if dist.is_main else None
    if dist.enabled:
        path = dist.broadcast(path)
    if path is None:
        return cfg, None
    restored = restore(path, trainer_state=True)
    if cfg.model.source is not None or cfg.model.init_from:
        cfg = adopt(cfg, restored.config)
    check_resume_config(cfg, restored.config, restored.path)
    return cfg, restored


def check_resume_config(cfg: DictConfig, saved: DictConfig, source: Path) -> None:
    """Refuse to resume with a config that would change what is being trained."""
    now, then = _flat(to_plain(cfg)), _flat(to_plain(saved))
    diffs = [k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)
             and not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {then.get(k)!r}, now {now.get(k)!r}" for k in diffs[:8])
        raise TformerError(f"cannot resume from {source}: the config differs ({shown})",
                           hint="resume with the same overrides as the original run (see its .hydra/overrides.yaml)")


def carry_over(restored: Restored, ckpts: CheckpointDir, state: FitState, monitor: str) -> None:
    """Resuming into another run directory: bring in the checkpoint resumed from (as `last`) and the source
    run's best one (as `best`), so this run is complete on its own and ends like the source would have.

    When the source's best checkpoint is not beside the one resumed from (a checkpoint copied on its own),
    the resumed checkpoint becomes `best`, with the monitored value it recorded."""
    source = restored.path.resolve()
    if source.parent == ckpts.root.resolve():
        return
    last = ckpts.adopt(source, state.step)
    ckpts.point("last", last)
    if state.best_step is None:
        return
    best_source = source.parent / ckpts.step_dir(state.best_step).name
    if (best_source / "manifest.json").is_file():
        ckpts.point("best", ckpts.adopt(best_source, state.best_step))
        return
    value = (restored.checkpoint.meta.get("metrics") or {}).get(monitor)
    log.warning("the best checkpoint of the run resumed from (step %d) is not in %s; this run's best starts from "
                "the checkpoint resumed from (step %d)", state.best_step, source.parent, state.step)
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    state.best_value, state.best_step = (float(value), state.step) if finite else (None, None)
    if finite:
        ckpts.point("best", last)


def continue_metrics(ckpt_path: Path, target: Path, step: int) -> None:
    """Make `target` hold the source run's metrics up to the checkpoint's step, so the file continues."""
    source = ckpt_path.resolve().parent.parent / "metrics.jsonl"
    if not source.is_file():
        return
    kept = [line for line in source.read_text().splitlines()
            if line.strip() and _step_of(line) is not None and _step_of(line) <= step]  # type: ignore[operator]
    write_text_atomic(target, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line (None for a torn last line)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}
