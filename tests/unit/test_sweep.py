"""Sweeps: config fingerprints, sweep directory names, finished jobs, presets and the end-of-sweep listing (real
`-m` runs: tests/e2e/test_sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from transformer_cli import sweep
from transformer_cli.config import conf_dir
from transformer_cli.validate import register_schemas


def compose_with_hydra(overrides: list[str]) -> OmegaConf:
    """The train config with its hydra node, as a sweep sees it."""
    register_schemas()
    sweep.register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


# ----------------------------------------------------------------------------- fast: fingerprints and names


def test_fingerprint_ignores_key_order_and_how_a_run_executes(compose_train: Callable) -> None:
    """Same resolved config -> same fingerprint, whatever the key order, progress bars, threads or resume."""
    cfg = compose_train(["model=tiny"])
    fp = sweep.fingerprint(cfg)

    def changed(**values: object) -> str:
        copy = cfg.copy()
        for key, value in values.items():
            OmegaConf.update(copy, key.replace("__", "."), value)
        return sweep.fingerprint(copy)

    assert changed(trainer__progress=False, trainer__threads=1, resume="auto") == fp
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert sweep.fingerprint(dict(reversed(list(plain.items())))) == fp  # type: ignore[union-attr]
    assert changed(optim__lr=0.001) == fp  # the default, spelled out
    assert changed(optim__lr=3e-4) != fp
    assert changed(seed=1) != fp
    assert changed(model__d_model=128) != fp  # schedule.d_model follows it through an interpolation


def test_fingerprint_leaves_out_the_hydra_node() -> None:
    """The hydra node (dates, job numbers, directories) never changes a job's identity."""
    a = compose_with_hydra(["model=tiny"])
    b = compose_with_hydra(["model=tiny", "hydra.sweep.dir=/elsewhere", "hydra.job.num=7"])
    assert sweep.fingerprint(a) == sweep.fingerprint(b)
    assert sweep.fingerprint(a) == sweep.fingerprint(OmegaConf.masked_copy(a, [k for k in a if k != "hydra"]))


def test_default_sweep_dir_is_named_by_fixed_overrides_and_swept_keys() -> None:
    """Reordering or adding values, or changing launcher, keeps the directory; a fixed value changes it."""
    base = sweep.with_default_sweep_dir(["-m", "loss=ce,focal", "seed=0,1", "experiment=quick"])
    assert "hydra.sweep.dir='outputs/multirun/experiment=quick,by-loss+seed'" in base
    exclude = next(a for a in base if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
    assert "'experiment'" in exclude and "'launcher'" in exclude and "'loss'" not in exclude
    again = sweep.with_default_sweep_dir(["-m", "seed=2,1,0", "launcher=joblib", "experiment=quick", "loss=focal,ce"])
    assert [a for a in again if a.startswith("hydra.")] == [a for a in base if a.startswith("hydra.")]
    other = sweep.with_default_sweep_dir(["-m", "loss=ce,focal", "seed=0,1", "experiment=sentiment"])
    assert other[-2] != base[-2]


def test_default_sweep_dir_only_for_multirun_without_a_given_dir() -> None:
    """A single run, or a sweep whose directory is given, is left alone; odd characters become safe."""
    assert sweep.with_default_sweep_dir(["loss=ce"]) == ["loss=ce"]
    given = ["-m", "loss=ce,focal", "hydra.sweep.dir=/tmp/x"]
    assert sweep.with_default_sweep_dir(given) == given
    args = sweep.with_default_sweep_dir(["--multirun", "data.train=my data/train.csv", "seed=range(3)"])
    assert args[-2] == "hydra.sweep.dir='outputs/multirun/data.train=my_data_train.csv,by-seed'"
    assert sweep.with_default_sweep_dir(["-m"])[-2] == "hydra.sweep.dir='outputs/multirun/default'"


def test_excluded_override_keys_match_the_yaml() -> None:
    """conf/train.yaml leaves the same keys out of job directory names as sweep.py leaves out of identities."""
    cfg = compose_with_hydra([])
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == list(sweep.IGNORED_OVERRIDES)
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${tformer.job_dir:${hydra.job.override_dirname}}"
    assert cfg.hydra.callbacks.tformer_sweep._target_ == "transformer_cli.sweep.SweepCallback"


def test_job_dir_names_are_one_safe_path_component() -> None:
    """Paths in values do not nest directories; very long override lists fit a file name."""
    assert sweep.job_dir_name("data.train=data/x.csv,seed=0") == "data.train=data_x.csv,seed=0"
    long = ",".join(f"key{i}=0.000646642271741455{i}" for i in range(20))
    name = sweep.job_dir_name(long)
    assert len(name.encode()) <= 200 and name != sweep.job_dir_name(long + "1")
    assert sweep.job_dir_name("loss=ce,seed=0") == "loss=ce,seed=0"


def test_finished_means_summary_without_failure(tmp_path: Path, compose_train: Callable) -> None:
    """find_finished matches by fingerprint, needs summary.json and refuses a run with failed.json."""
    cfg = compose_train(["model=tiny"])
    fp = sweep.fingerprint(cfg)
    run = tmp_path / "some_job_name"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"fingerprint": fp}))
    assert sweep.find_finished(tmp_path, fp) is None  # no summary yet
    (run / "summary.json").write_text("{}")
    assert sweep.find_finished(tmp_path, fp) == run
    assert sweep.find_finished(tmp_path, "0" * 64) is None
    (run / "failed.json").write_text("{}")
    assert sweep.find_finished(tmp_path, fp) is None
    (run / "failed.json").unlink()
    (run / "job.json").unlink()  # no job.json: the fingerprint comes from the resolved config.yaml
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert sweep.find_finished(tmp_path, fp) == run


def test_direction_follows_the_monitored_metric() -> None:
    """Optuna maximizes accuracy and minimizes rmse or loss, with no edit of the search preset."""
    assert sweep.direction(None, "classify") == "maximize"
    assert sweep.direction(None, "regress") == "minimize"
    assert sweep.direction("loss", "classify") == "minimize"
    assert sweep.direction("hamming_loss", "multilabel") == "minimize"
    with pytest.raises(ValueError, match="count"):
        sweep.direction("count", "classify")


def test_search_presets_compose_with_the_right_direction() -> None:
    """hparams_search presets pick the Optuna sweeper, a search space and the monitor's direction."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    for preset, task, direction in (("classify", "classify", "maximize"), ("regress", "regress", "minimize")):
        cfg = compose_with_hydra([f"task={task}", f"hparams_search={preset}"])
        assert "optuna" in cfg.hydra.sweeper._target_
        assert cfg.hydra.sweeper.direction == direction
        assert {"optim.lr", "model.dropout", "loss"} <= set(cfg.hydra.sweeper.params)
    cfg.trainer.monitor = "r2"  # the direction is resolved when the sweeper starts, from the monitor then set
    assert cfg.hydra.sweeper.direction == "maximize"


def test_launcher_presets_compose() -> None:
    """launcher=joblib runs one torch thread per job; slurm and ray name their plugins."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose_with_hydra(["launcher=joblib"])
    assert "joblib" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.n_jobs == 2
    assert cfg.trainer.threads == 1 and cfg.trainer.progress is False
    for preset, plugin in (("slurm", "hydra_submitit_launcher"), ("ray", "hydra_ray_launcher")):
        try:
            __import__(f"hydra_plugins.{plugin}")
        except ImportError:
            continue  # the `cluster` extra is not installed here
        cfg = compose_with_hydra([f"launcher={preset}"])
        assert plugin.split("_")[1] in cfg.hydra.launcher._target_
        assert cfg.trainer.progress is False


def test_outcome_lists_failed_jobs(tmp_path: Path) -> None:
    """The end-of-sweep listing counts jobs and names each failed one with its reason."""
    from io import StringIO

    from rich.console import Console

    entries = [{"num": 0, "status": "completed", "dir": str(tmp_path / "a=1"), "overrides": ["a=1"]},
               {"num": 1, "status": "skipped", "dir": str(tmp_path / "a=2"), "overrides": ["a=2"]},
               {"num": 2, "status": "failed", "dir": str(tmp_path / "a=3"), "overrides": ["a=3"],
                "error": "optim.lr must be positive, got -1.0"}]
    out = StringIO()
    sweep.print_outcome(tmp_path, entries, Console(file=out, width=200))
    text = out.getvalue()
    assert "3 jobs: 1 completed, 1 skipped (already finished), 1 failed" in text
    assert "a=3" in text and "optim.lr must be positive" in text
