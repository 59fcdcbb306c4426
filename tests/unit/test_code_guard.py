"""No config, Hydra's own node included, can make tformer import or call code; the shipped plugins still work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli import cli
from transformer_cli.catalog import UserConfigDirs, use_config_dirs
from transformer_cli.code_guard import check_command_line
from transformer_cli.sweep import register_resolvers
from transformer_cli.validate import register_schemas

MODULE = "tformer_marker_module"  # a module whose import writes a marker file next to it


@pytest.fixture
def attacker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable marker module on sys.path and a user config directory of hostile files; returns tmp_path."""
    (tmp_path / f"{MODULE}.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nattr = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(UserConfigDirs, "dirs", [])  # restored after the test: later tests see no user directory
    files = {
        "experiment/callback.yaml": "hydra:\n  callbacks:\n    x:\n      _target_: builtins.open\n"
                                    f"      _args_: [{tmp_path / 'opened'}, w]\n",
        "experiment/handler.yaml": f"hydra:\n  job_logging:\n    handlers:\n      x:\n        class: {MODULE}.attr\n",
        "experiment/decoded.yaml": "hydra:\n  job_logging:\n    handlers:\n"
                                   f"      x: \"${{oc.decode:'{{class: {MODULE}.attr}}'}}\"\n",
        "experiment/borrow.yaml": f"hydra:\n  callbacks:\n    tformer_sweep:\n      _target_: {MODULE}.attr\n",
        "experiment/plain.yaml": "trainer:\n  max_epochs: 2\n",
        "hydra/job_logging/mine.yaml": f"version: 1\nformatters:\n  x:\n    (): {MODULE}.attr\n",
    }
    for name, text in files.items():
        path = tmp_path / "conf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(("# @package _global_\n" if name.startswith("experiment") else "") + text)
    yield tmp_path
    sys.modules.pop(MODULE, None)


@pytest.mark.parametrize("args", [
    ["experiment=callback"],
    ["experiment=handler"],
    ["experiment=decoded"],
    ["hydra/job_logging=mine"],
    [f"+hydra.job_logging.handlers.x.class={MODULE}.attr"],
    [f"hydra.job_logging.handlers.console.stream=ext://{MODULE}.attr"],
    ["experiment=borrow"],  # the shipped callback's key, another value
    ["-m", "hparams_search=classify", f"hydra.sweeper.custom_search_space={MODULE}.attr"],
    ["-m", "seed=0,1", f"+hydra.job_logging.handlers.x.class=logging.Handler,{MODULE}.attr"],
    ["-m", "hparams_search=classify", "+hydra.sweeper.params.experiment='choice(plain,handler)'"],
    [f"hydra.searchpath=[pkg://{MODULE}]"],
    ["--experimental-rerun", "config.pickle"],
    ["--config-path", f"pkg://{MODULE}"],
])
def test_code_named_in_a_config_is_refused_before_hydra_acts(args: list[str], attacker: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A code key, `ext://` value or package search path anywhere (hydra.* included): exit 2, nothing imported."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--config-dir", str(attacker / "conf"), *args, f"hydra.run.dir={attacker / 'run'}",
                  f"hydra.sweep.dir={attacker / 'sweep'}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "error:" in err and ("never imports or calls code" in err or "can run code" in err), err
    assert "Traceback" not in err
    assert not (attacker / "opened").exists() and not (attacker / "imported").exists()
    assert MODULE not in sys.modules


@pytest.mark.parametrize("args", [
    [],
    ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"],
    ["hydra/job_logging=stdout", "experiment=plain"],
    ["-m", "launcher=joblib", "loss=ce,focal", "seed=0,1"],
    ["-m", "hparams_search=classify", "launcher=joblib", "hydra/sweeper/sampler=random"],
    ["-m", "task=regress", "hparams_search=regress", "hydra.sweeper.n_trials=3"],
    ["-m", "experiment=plain,quick", "hydra/job_logging=default,disabled"],
])
def test_shipped_plugins_and_logging_presets_pass(args: list[str], attacker: Path) -> None:
    """What tformer and Hydra install themselves (sweep callback, logging presets, launchers, sweepers) passes."""
    register_schemas()
    register_resolvers()
    check_command_line("train", use_config_dirs(["--config-dir", str(attacker / "conf"), *args]))


def test_cli_refuses_a_hydra_callback_from_a_user_config_dir(attacker: Path, run_cli: Callable) -> None:
    """The real CLI: a user file's Hydra callback is refused with exit 2 before it runs (no file opened)."""
    proc = run_cli(["train", "--config-dir", str(attacker / "conf"), "experiment=callback",
                    f"hydra.run.dir={attacker / 'run'}"], cwd=attacker, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "hydra.callbacks.x._target_" in proc.stderr and "Traceback" not in proc.stderr
    assert not (attacker / "opened").exists()
