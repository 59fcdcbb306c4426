"""The entry point's answers to the commonest first mistakes: a clear message, exit 2, the usage line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from transformer_cli import cli


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_missing_ckpt_is_named_with_the_usage_line(command: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`tformer eval` without ckpt=: exit 2, "ckpt= is required" and the command's usage line, no traceback."""
    with pytest.raises(SystemExit) as stop:
        cli.main([command, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "error: ckpt= is required" in err and f"usage: tformer {command} ckpt=" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_missing_value_read_inside_a_job_is_named(capsys: pytest.CaptureFixture) -> None:
    """Any other `???` a job reads gets its key and exit 2 rather than OmegaConf's traceback."""
    cfg = OmegaConf.create({"data": {"train": "???"}})
    with pytest.raises(SystemExit) as stop:
        cli._guard(lambda: cfg.data.train)
    assert stop.value.code == 2
    assert "error: data.train= is required" in capsys.readouterr().err


def test_showing_the_config_needs_no_ckpt(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tformer eval --cfg job` still prints the config, with ckpt: ??? in it."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test: Hydra's runtime is left unset
    cli.main(["eval", "--cfg", "job"])
    assert "ckpt: ???" in capsys.readouterr().out
