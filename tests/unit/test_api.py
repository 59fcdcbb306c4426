"""The Python API without training: a cheap `import transformer_cli`, and the mistakes `train` and `load` refuse
before any work (tests/e2e/test_api.py trains, loads and predicts for every task)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import transformer_cli
from transformer_cli.errors import TformerError


def test_importing_the_package_is_cheap(repo: Path) -> None:
    """`import transformer_cli` loads neither the API nor torch, Hydra or mlflow (`transformer_cli.load` does)."""
    code = ("import sys, transformer_cli\n"
            "print(sorted(m for m in ('torch', 'hydra', 'mlflow', 'transformer_cli.api') if m in sys.modules))\n"
            "print(transformer_cli.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", transformer_cli.__version__]


def test_the_api_names() -> None:
    assert {"load", "train", "Predictor"} <= set(dir(transformer_cli)) and "load" in transformer_cli.__all__
    from transformer_cli.api import load, train

    assert transformer_cli.load is load and transformer_cli.train is train
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        transformer_cli.nothing  # noqa: B018


@pytest.mark.parametrize(("overrides", "message"), [
    ("task=regress", "takes a list of overrides"),
    (["-m", "seed=0,1"], "not '-m'"),
    (["--cfg", "job"], "not '--cfg'"),
    (["hydra.mode=MULTIRUN", "seed=0,1"], "not a sweep"),
    (["--nproc", "2"], "not '--nproc'"),
])
def test_train_refuses_what_only_the_command_does(overrides: object, message: str) -> None:
    with pytest.raises(TformerError, match=message):
        transformer_cli.train(overrides)  # type: ignore[arg-type]


def test_train_reports_a_config_mistake_as_the_command_does() -> None:
    """The overrides are checked by the command's own precheck: the same message and hint, as an exception."""
    with pytest.raises(TformerError, match="Key 'modle' not in 'TrainConfig'") as err:
        transformer_cli.train(["modle=tiny"])
    assert err.value.hint == "did you mean model?"
    with pytest.raises(TformerError, match="_target_"):
        transformer_cli.train(["+model._target_=os.system"])


@pytest.mark.slow
def test_train_raises_what_the_command_would_print(tmp_path: Path) -> None:
    """A mistake found inside the job (no training file for data=local) comes back as the TformerError itself,
    and the caller's sys.argv and root logger are as they were."""
    import logging

    argv, handlers = list(sys.argv), list(logging.getLogger().handlers)
    with pytest.raises(TformerError, match="data.source=local needs a training file"):
        transformer_cli.train(["data=local", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"])
    assert sys.argv == argv and logging.getLogger().handlers == handlers
    assert (tmp_path / "run" / "train.log").is_file()  # the run directory Hydra made, with its log


def test_train_refuses_to_run_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TformerError, match="not under torchrun"):
        transformer_cli.train(["model=tiny"])


def test_load_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TformerError, match="does not exist"):
        transformer_cli.load(tmp_path / "nothing")
    with pytest.raises(TformerError, match="manifest.json is missing"):
        transformer_cli.load(tmp_path)
