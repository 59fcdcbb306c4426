"""The Python API: `load` a checkpoint and `predict`, or `train` from overrides, without a shell.

    from transformer_cli import load, train

    summary = train(["task=regress", "trainer.max_epochs=2"])   # `tformer train task=regress ...`
    model = load(summary["checkpoints"]["best"])                  # or any run directory / checkpoint
    model.predict(["a text", "another text"])                     # one record per text, in order

Nothing here is a second implementation. `load` rebuilds the checkpoint through restore.py, the one
restore path of eval, predict and export, with the same checks (verified hashes, a validated config, no
`_target_`, safetensors only). `Predictor.predict` calls predict.py's `predict_texts`, the function behind
`tformer predict`, so the records are the ones the command writes (without their `id`: the list is in
input order). `train` runs the `tformer train` command line itself (cli.py: the same checks of the
overrides, Hydra composition, run directory, logs and outputs) and returns the run's summary.json.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from transformer_cli.config import PredictConfig
from transformer_cli.device import Precision, resolve_device, resolve_precision
from transformer_cli.errors import TformerError
from transformer_cli.files import read_json_object
from transformer_cli.predict import columns_of, predict_texts
from transformer_cli.restore import Restored, restore


class Predictor:
    """A checkpoint rebuilt for prediction on one device: `predict(texts)` gives `tformer predict`'s records."""

    def __init__(self, restored: Restored, precision: Precision) -> None:
        self.restored = restored
        self.precision = precision
        restored.model.to(precision.device).eval()

    @property
    def path(self) -> Path:
        """The checkpoint directory."""
        return self.restored.path

    @property
    def config(self) -> DictConfig:
        """The checkpoint's validated training config."""
        return self.restored.config

    @property
    def task(self) -> str:
        """The task's name: classify, regress, multilabel, seq2seq or mlm."""
        return str(self.restored.config.task.name)

    @property
    def device(self) -> str:
        """Where the model runs (cpu, cuda:0, ...)."""
        return str(self.precision.device)

    @property
    def reads_pairs(self) -> bool:
        """Whether each input is a pair of texts (then `predict` needs `pairs`)."""
        return columns_of(self.restored).pair is not None

    def predict(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None, *,
                top_k: int = PredictConfig.top_k, batch_size: int | None = None) -> Any:
        """One record per text, in order, as `tformer predict` writes them (without the id).

        A single string gives a single record. `pairs`: the second texts, one per text, for a checkpoint
        trained on sentence pairs. `top_k` and `batch_size` mean what they mean to `tformer predict`
        (batch_size defaults to the eval_batch_size the model was trained with)."""
        single = isinstance(texts, str)
        if single != isinstance(pairs, str) and pairs is not None:
            raise TformerError("texts and pairs must both be strings or both be lists")
        text_list = [texts] if isinstance(texts, str) else list(texts)
        pair_list = None if pairs is None else [pairs] if isinstance(pairs, str) else list(pairs)
        records = predict_texts(self.restored, self.precision, text_list, pair_list, top_k, batch_size)
        return records[0] if single else records

    def __repr__(self) -> str:
        return f"Predictor({self.task}, {str(self.path)!r}, device={self.device!r})"


def load(path: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
    """Rebuild a checkpoint (a checkpoint directory, or a run directory: its checkpoints/best) for prediction.

    The checkpoint goes through the same checks as `tformer predict ckpt=...`: a damaged, incomplete or
    hand-edited checkpoint (a config naming code to call, say) is a TformerError and nothing of it runs.
    `device`: auto (CUDA when available), cpu, cuda or cuda:N; `precision`: auto, fp32, bf16 or fp16."""
    chosen = resolve_precision(precision, resolve_device(device))
    return Predictor(restore(path), chosen)


# ----------------------------------------------------------------------------- train

# Hydra flags of the command line that do something other than train once: the command is for them.
ALLOWED_FLAGS = ("--config-dir", "-cd")


def train(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train as `tformer train <overrides>` does, in this process; returns the run's summary (summary.json)
    with one more key, `run_dir`.

    The overrides are the command line's: `["task=regress", "model=tiny", "--config-dir", "myconf"]`.
    A mistake raises TformerError with the message and hint the command prints. Sweeps (`-m`), `--nproc`
    and Hydra's printing flags (--cfg, --help, ...) are the command's: run `tformer train` for those."""
    from transformer_cli import cli
    from transformer_cli.catalog import use_config_dirs
    from transformer_cli.launch import torchrun_world

    args = _arguments(overrides)
    if torchrun_world() > 1:
        raise TformerError("transformer_cli.train runs one process, not under torchrun",
                           hint="for several processes, run `tformer train --nproc N ...`")
    outcome: dict[str, Any] = {}

    def job(cfg: DictConfig) -> None:
        """The Hydra task: `tformer train`'s, with any error kept for the caller instead of an exit status."""
        from transformer_cli.run import train as run_training

        outcome["run_dir"] = cli.job_dir()
        try:
            run_training(cfg, outcome["run_dir"])
        except MissingMandatoryValue as err:  # e.g. data=local without data.train: the command's message
            outcome["error"] = cli.missing_value(err)
        except Exception as err:  # noqa: BLE001 - raised again, unchanged, once Hydra has returned
            outcome["error"] = err

    argv, root = sys.argv, logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        rest = use_config_dirs(cli.prepare("train", args))
        cli.check_command("train", rest)  # as run_app: the composed config names no code, required values set
        cli.run_hydra("train", rest, job)
    except SystemExit as stop:  # Hydra reports a config it cannot compose itself, then exits
        raise TformerError(f"tformer train stopped with exit status {stop.code} (its message is above)") from None
    finally:
        sys.argv = argv
        _restore_logging(root, handlers, level)
    if "error" in outcome:
        raise outcome["error"]
    run_dir = Path(outcome["run_dir"])
    summary = read_json_object(run_dir / "summary.json")
    if summary is None:
        raise TformerError(f"the training in {run_dir} wrote no summary.json")
    return {**summary, "run_dir": str(run_dir)}


def _arguments(overrides: Sequence[str]) -> list[str]:
    """The overrides as a command line; a string, or a flag the command keeps to itself, is refused."""
    if isinstance(overrides, str):
        raise TformerError(f"train() takes a list of overrides, got the string {overrides!r}",
                           hint='e.g. train(["task=regress", "model=tiny"])')
    args = [str(a) for a in overrides]
    if any(a.lstrip("+").startswith("hydra.mode=") for a in args):
        raise TformerError("train() runs one training, not a sweep", hint="run `tformer train -m ...` for sweeps")
    expect_value = False
    for arg in args:
        if expect_value:
            expect_value = False
            continue
        if arg.startswith("-"):
            flag = arg.split("=")[0]
            if flag not in ALLOWED_FLAGS:
                raise TformerError(f"train() takes overrides and --config-dir, not '{arg}'",
                                   hint=f"run `tformer train {arg} ...` for that")
            expect_value = "=" not in arg
    return args


def _restore_logging(root: logging.Logger, handlers: list[logging.Handler], level: int) -> None:
    """Give the root logger back its handlers and level: Hydra pointed it at the run's train.log."""
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
