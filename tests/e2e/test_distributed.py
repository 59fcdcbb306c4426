"""Training on several processes (torchrun, DDP over gloo on CPU): same curve as one process, one run dir,
preemption and resume with the same or another process count, and single-process eval of the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

# Dropout off: then one and two processes compute the same updates up to float summation order. Regression
# (VADER), whose metrics are continuous. 801 training examples at batch 16: 51 batches, the last of one
# example (rank 1 runs a placeholder); 2 micro-batches per step: 26 steps per epoch, the last of one batch.
DIST = ["task=regress", "model=tiny", "model.dropout=0.0", "task.head_dropout=0.0", "data.max_train_examples=801",
        "data.max_eval_examples=200", "data.tokenizer.vocab_size=600", "trainer.device=cpu", "trainer.max_epochs=2",
        "trainer.batch_size=16", "trainer.grad_accum=2", "optim.lr=3e-3", "trainer.progress=false",
        "trainer.log_every=1", "trainer.threads=1", "trainer.save_every=1", "trainer.keep_last=3",
        "trainer.eval_every=10"]  # evaluations every 10 steps, mid-epoch too (rank 0 alone), and at the end
STEPS = 52


# ---------------------------------------------------------------- real runs (torchrun, 2 processes)


@pytest.fixture(scope="module")
def torchrun(repo: Path) -> Callable[..., subprocess.Popen]:
    """torchrun(args, cwd, nproc=2): start `tformer train --nproc N ...` (torchrun on this node) in the background."""
    def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.Popen:
        (cwd / "tmp").mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "TMPDIR": str(cwd / "tmp")}
        return subprocess.Popen([sys.executable, "-m", "transformer_cli", "train", "--nproc", str(nproc), *args],
                                cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    return torchrun


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a run; fail with its output unless it exited 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out + err)[-4000:]
    return out + err


def records(run_dir: Path, event: str) -> list[dict]:
    """metrics.jsonl records of one kind."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's last checkpoint."""
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Block until `path` exists (failing early if the run ends first)."""
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, torchrun: Callable) -> Path:
    """One uninterrupted 2-process run of DIST, its run directory chosen by Hydra (cwd/outputs/...)."""
    cwd = tmp_path_factory.mktemp("two")
    finish(torchrun(DIST, cwd))
    runs = [p for p in (cwd / "outputs").glob("*/*/*") if p.is_dir()]  # outputs/train/<date>/<time>_...
    assert len(runs) == 1, runs  # one run directory, not one per rank
    return runs[0]


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory, run_cli: Callable) -> Path:
    """The same config in one process."""
    cwd = tmp_path_factory.mktemp("one")
    done = run_cli(["train", *DIST, f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "run"


@pytest.mark.slow
def test_two_processes_train_like_one(two: Path, one: Path) -> None:
    """Same global batch and seed: the same loss at every step (to float tolerance) and the same final metrics."""
    a, b = records(two, "train"), records(one, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    summary2, summary1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert summary2["best_step"] == summary1["best_step"]
    for split in ("validation", "test"):
        m2, m1 = summary2["final"][split], summary1["final"][split]
        assert m2.keys() == m1.keys() and m1["pearson"] > 0.1  # it learned something
        for key in m1:
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), (split, key)
    for name, w in weights(one).items():  # Adam amplifies rounding on near-zero gradients: about 1e-4 after 52 steps
        torch.testing.assert_close(weights(two)[name], w, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_two_processes_apply_the_same_gradient_as_one(tmp_path: Path, run_cli: Callable, torchrun: Callable) -> None:
    """Plain SGD (no Adam normalisation to hide a wrong gradient scale), gradient clipping off, a ragged last
    window with a placeholder rank: after a whole epoch the weights equal one process's to float rounding."""
    sgd = [*DIST, "optim=sgd", "optim.lr=0.05", "trainer.grad_clip=0", "trainer.max_epochs=1", "trainer.save_every=0"]
    done = run_cli(["train", *sgd, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    finish(torchrun([*sgd, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path))
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for name, w in b.items():
        torch.testing.assert_close(a[name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_only_rank_0_writes_one_set_of_outputs(two: Path) -> None:
    """One metrics file with each record once, one checkpoint per saved step, the usual outputs, no rank dirs."""
    steps = [r["step"] for r in records(two, "train")]
    assert steps == list(range(1, STEPS + 1))  # each step once, not once per rank
    assert len(records(two, "final")) == 2  # validation and test, once
    entries = {p.name for p in (two / "checkpoints").iterdir()}
    step_dirs = {n for n in entries if n.startswith("step-")}
    assert entries - step_dirs == {"best", "last"} and len(step_dirs) in (3, 4)  # keep_last=3, plus the best
    assert all((two / "checkpoints" / n / "manifest.json").is_file() for n in step_dirs)
    assert (two / "checkpoints" / "last").resolve().name == f"step-{STEPS:07d}"
    assert {"summary.json", "curves.png", "README.md", "config.yaml", "train.log", ".hydra"} <= \
        {p.name for p in two.iterdir()}
    assert "2 processes" in (two / "train.log").read_text()
    scratch = two.parents[3] / "tmp"
    assert scratch.is_dir() and not list(scratch.glob("tformer-rank*"))  # rank 1's throwaway Hydra dir is gone


@pytest.mark.slow
def test_two_process_checkpoint_evaluates_in_one_process(two: Path, tmp_path: Path, run_cli: Callable) -> None:
    """`tformer eval` of the 2-process run, in one plain process, reproduces its final test metrics exactly."""
    done = run_cli(["eval", f"ckpt={two}", "split=test", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert metrics == json.loads((two / "summary.json").read_text())["final"]["test"]


@pytest.mark.slow
@pytest.mark.parametrize("resume_nproc", [2, 1], ids=["resume-2-processes", "resume-1-process"])
def test_sigterm_then_resume(two: Path, tmp_path: Path, resume_nproc: int, run_cli: Callable,
                             torchrun: Callable) -> None:
    """SIGTERM to torchrun mid-training: both ranks stop at the same step boundary after one checkpoint; resuming
    (2 processes, or 1) continues from it to the same end as the uninterrupted 2-process run."""
    run_dir = tmp_path / "run"
    proc = torchrun([*DIST, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for(run_dir / "checkpoints" / "step-0000004", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "SIGTERM" in out + err, (out + err)[-4000:]
    stopped = records(run_dir, "preempted")
    assert len(stopped) == 1  # rank 0 alone records it
    step = stopped[0]["step"]
    assert 4 <= step < STEPS
    last = json.loads((run_dir / "checkpoints" / "last" / "meta.json").read_text())
    assert last["step"] == step
    resumed = [*DIST, f"hydra.run.dir={run_dir}", "resume=auto"]
    if resume_nproc == 2:
        finish(torchrun(resumed, tmp_path))
    else:
        done = run_cli(["train", *resumed], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in records(run_dir, "train")] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records(run_dir, "train")],
                               [r["loss"] for r in records(two, "train")], rtol=1e-5)
    for name, w in weights(two).items():
        if resume_nproc == 2:  # the same reductions in the same order: bit for bit
            assert torch.equal(weights(run_dir)[name], w), name
        else:  # one process sums in another order; Adam amplifies it on near-zero gradients
            torch.testing.assert_close(weights(run_dir)[name], w, rtol=1e-3, atol=1e-3)


def test_sweeps_and_other_commands_refuse_torchrun(tmp_path: Path, repo: Path) -> None:
    """Under torchrun's environment, `train -m` and `eval` stop with a message instead of misbehaving."""
    env = {**os.environ, "PYTHONPATH": str(repo), "WORLD_SIZE": "2", "RANK": "0"}
    for args in (["train", "-m", "seed=0,1"], ["train", "hydra.mode=MULTIRUN", "seed=0,1"], ["eval", "ckpt=nowhere"]):
        done = subprocess.run([sys.executable, "-m", "transformer_cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 2 and "torchrun" in done.stderr and "Traceback" not in done.stderr


def test_nproc_checks_the_config_before_starting_processes(tmp_path: Path, run_cli: Callable) -> None:
    """A misspelled key or a sweep with --nproc: one message, exit 2, and torchrun never starts."""
    typo = run_cli(["train", "--nproc", "2", "trainer.bath_size=8"], tmp_path)
    assert typo.returncode == 2 and "batch_size" in typo.stderr and "torchrun" not in typo.stderr.lower()
    sweep = run_cli(["train", "--nproc", "2", "-m", "seed=0,1"], tmp_path)
    assert sweep.returncode == 2 and sweep.stderr.count("error:") == 1 and "torchrun" in sweep.stderr
    assert not (tmp_path / "outputs").exists()


def test_nproc_needs_a_number(tmp_path: Path, run_cli: Callable) -> None:
    """`--nproc two` is a user error with a hint."""
    done = run_cli(["train", "--nproc", "two"], tmp_path)
    assert done.returncode == 2 and "--nproc" in done.stderr and "Traceback" not in done.stderr
