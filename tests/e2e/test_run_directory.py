"""A run directory under stress: two trainings at once, a full disk, debris of an interrupted write, a resume
into a new directory, and a run whose every evaluation is non-finite under nan_policy=skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from transformer_cli import run as run_module
from transformer_cli.checkpoint import load_checkpoint
from transformer_cli.errors import TformerError
from transformer_cli.run import train
from transformer_cli.runlock import LOCK_FILE, RunLock


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, sentence: Callable) -> Path:
    """64 generated rows of text and a 0/1 label."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    path.write_text("text,label\n" + "".join(f"{sentence(i)},{i % 2}\n" for i in range(64)))
    return path


@pytest.fixture(scope="module")
def small(data: Path) -> list[str]:
    """A tiny classifier on the rows: 2 steps per epoch, a checkpoint at each evaluation."""
    return ["model=tiny", "data=local", f"data.train={data}", "data.tokenizer.vocab_size=80",
            "data.tokenizer.min_frequency=1", "trainer=debug", "trainer.max_epochs=2", "trainer.max_steps=4",
            "trainer.eval_every=2",
            "trainer.threads=1"]


def cli(repo: Path, args: list[str], cwd: Path) -> subprocess.Popen:
    """Start `python -m transformer_cli ...` as a user would."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "transformer_cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ----------------------------------------------------------------------------- one training per run directory


def test_a_second_training_on_a_busy_run_directory_stops(tmp_path: Path, small: list[str], repo: Path) -> None:
    """Two real trainings on one directory: the second exits 2 naming the first's PID; the first is untouched."""
    run_dir = tmp_path / "run"
    args = ["train", *small, "trainer.max_steps=100000", "trainer.max_epochs=100000", "trainer.eval_every=0", f"hydra.run.dir={run_dir}"]
    first = cli(repo, args, tmp_path)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "last").is_dir():  # training (and its signal handling) has begun
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        assert (run_dir / LOCK_FILE).read_text().strip() == str(first.pid)
        second = cli(repo, args, tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"is in use by another tformer training (process {first.pid})" in err and "Traceback" not in err
    finally:
        first.send_signal(signal.SIGTERM)  # the first saves at the next step boundary and exits 75
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 75, first_err
    assert load_checkpoint(run_dir / "checkpoints" / "last").meta["step"] > 0


def test_a_lock_held_in_another_process_is_named(tmp_path: Path, small: list[str], compose_train: Callable) -> None:
    """The lock is the operating system's: held by this process, an in-process training is refused at once."""
    with RunLock(tmp_path):
        with pytest.raises(TformerError, match=f"process {os.getpid()}"):
            subprocess_free_train(compose_train(small), tmp_path)


def subprocess_free_train(cfg, run_dir: Path) -> None:
    """train() in a thread of its own process: flock locks belong to open files, so a second open conflicts."""
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            train(cfg, run_dir)
        except BaseException as err:  # handed to the test
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, small: list[str],
                                                      compose_train: Callable) -> None:
    """A lock file left by a killed run (no process holds it) does not block the next run."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK_FILE).write_text("999999\n")
    train(compose_train(small), tmp_path)
    assert (tmp_path / "summary.json").is_file()
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_debris_of_an_interrupted_write_is_removed_at_the_next_start(tmp_path: Path, small: list[str],
                                                                     compose_train: Callable) -> None:
    """Temporary, moved-aside and trash directories and half-made links under checkpoints/ go at the next start."""
    root = tmp_path / "checkpoints"
    debris = [".step-0000002.tmp-ab12cd", ".step-0000004.old-4242", ".trash-step-0000001-4242"]
    for name in debris:
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"\0" * 1000)
    os.symlink("step-0000002", root / ".best.tmp-4242")
    train(compose_train(small), tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["best", "last", "step-0000002", "step-0000004"]


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 384 KB tmpfs: room for Hydra's files and the log, not for a checkpoint (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (unit/test_checkpoint.py injects ENOSPC instead)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_saving_exits_2_naming_the_path(tmp_path: Path, small: list[str], small_disk: Path,
                                                          repo: Path) -> None:
    """A real full file system: exit 2, the checkpoint path and "free space", no traceback, no temporary debris."""
    run_dir = small_disk / "run"
    done = cli(repo, ["train", *small, f"hydra.run.dir={run_dir}"], tmp_path)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 2, err
    assert f"could not write checkpoint {run_dir}/checkpoints/step-" in err and "free space" in err
    assert "Traceback" not in err
    assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path, small: list[str], small_disk: Path,
                                                    compose_train: Callable) -> None:
    """Disk full at the second checkpoint: the error names the path; the first checkpoint still loads."""
    ballast = small_disk / "ballast"
    original = run_module.save_checkpoint
    calls = {"n": 0}

    def fill_after_first(path: Path, *args, **kwargs) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:  # the disk fills up between the two saves
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            os.close(fd)
        return original(path, *args, **kwargs)

    run_dir = tmp_path / "run"
    checkpoints = small_disk / "checkpoints"
    run_dir.mkdir()
    checkpoints.mkdir()
    (run_dir / "checkpoints").symlink_to(checkpoints)  # the run on a normal disk, its checkpoints on the small one
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "save_checkpoint", fill_after_first)
        with pytest.raises(TformerError, match="free space"):
            train(compose_train([*small, "model.d_model=16", "model.d_ff=32"]), run_dir)
    assert load_checkpoint(checkpoints / "last").meta["step"] == 2
    assert not [p for p in checkpoints.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- resuming into a new directory


def test_resume_into_a_new_run_directory_completes(tmp_path: Path, small: list[str],
                                                   compose_train: Callable) -> None:
    """resume=<run dir> with another run directory: the checkpoint resumed from and the source's best are brought
    in, the run ends with a summary whose best is the source's, and the source is left as it was."""
    source = tmp_path / "source"
    train(compose_train(small), source)
    before = sorted(p.name for p in (source / "checkpoints").iterdir())
    source_summary = json.loads((source / "summary.json").read_text())
    again = tmp_path / "again"
    train(compose_train([*small, f"resume={source}"]), again)  # nothing left to train: no new evaluation
    summary = json.loads((again / "summary.json").read_text())
    assert summary["best_step"] == source_summary["best_step"]
    assert summary["best_value"] == source_summary["best_value"]
    best = (again / "checkpoints" / "best").resolve()
    assert best.parent == (again / "checkpoints").resolve()
    assert best.name == f"step-{source_summary['best_step']:07d}"
    assert sorted(p.name for p in (source / "checkpoints").iterdir()) == before


def test_resume_from_a_lone_checkpoint_into_a_new_directory(tmp_path: Path, small: list[str],
                                                            compose_train: Callable) -> None:
    """A checkpoint copied on its own (its run's best not beside it) still resumes to a complete run."""
    import shutil

    source = tmp_path / "source"
    train(compose_train(small), source)
    lone = tmp_path / "lone"
    shutil.copytree((source / "checkpoints" / "last").resolve(), lone)
    again = tmp_path / "again"
    train(compose_train([*small, "trainer.max_epochs=3", "trainer.max_steps=6", f"resume={lone}"]), again)
    summary = json.loads((again / "summary.json").read_text())
    assert summary["steps"] == 6 and (again / "checkpoints" / "best").resolve().is_dir()


# ----------------------------------------------------------------------------- nan_policy=skip


def test_non_finite_evaluations_are_never_promoted(tmp_path: Path, small: list[str], compose_train: Callable,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits that overflow at evaluation: the loss is NaN while accuracy still looks finite. No such model may
    become `best`; with no finite evaluation at all the run fails (exit 2), its checkpoints kept."""
    original = run_module.start_session

    def poisoned(*args, **kwargs):
        session = original(*args, **kwargs)
        last = [m for m in session.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.register_forward_hook(lambda module, inputs, out: out if module.training else out * float("inf"))
        return session

    monkeypatch.setattr(run_module, "start_session", poisoned)
    with pytest.raises(TformerError, match="no validation evaluation of this run gave a finite loss"):
        train(compose_train([*small, "trainer.nan_policy=skip"]), tmp_path)
    assert not (tmp_path / "checkpoints" / "best").exists()
    assert load_checkpoint(tmp_path / "checkpoints" / "last").meta["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and all(r["loss"] is None or r["loss"] != r["loss"] for r in evals)  # NaN (or null) loss
    assert all(r["accuracy"] is not None for r in evals)  # what fooled the old rule
