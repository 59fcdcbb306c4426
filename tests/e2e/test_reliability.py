"""Reliability end to end: exact resume, atomic checkpoints under SIGKILL, preemption, NaN policies, determinism,
and bad input named without a traceback (a full disk, non-finite weights and retention: unit/test_checkpoint.py;
the skip limit and the anomaly hooks: unit/test_loop.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from transformer_cli.checkpoint import CheckpointDir, load_checkpoint
from transformer_cli.errors import Preempted, TformerError
from transformer_cli.loop import Fitter, NonFiniteError
from transformer_cli.run import train

# 200 examples, batch 16, 2 micro-batches per step: 13 batches -> 7 steps per epoch, 14 steps in all.
SMALL = ["model=tiny", "data.max_train_examples=200", "data.max_eval_examples=64", "data.tokenizer.vocab_size=400",
         "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.grad_accum=2", "trainer.progress=false",
         "trainer.log_every=2", "trainer.save_every=1", "trainer.keep_last=3",
         "trainer.threads=1"]  # the same thread count in-process and in subprocesses: same float reductions


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's last checkpoint."""
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical tensors, name by name."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def events(run_dir: Path) -> list[tuple]:
    """(event, step, loss) of every metrics.jsonl record, without timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["event"], r["step"], r.get("loss")) for r in rows if r["event"] != "preempted"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, compose_train: Callable) -> Path:
    """One uninterrupted run of the SMALL config."""
    run_dir = tmp_path_factory.mktemp("reference")
    train(compose_train(SMALL), run_dir)
    return run_dir


def stop_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the loop receive SIGTERM right after optimizer step `step` (the real signal path)."""
    original = Fitter._step

    def step_then_signal(self: Fitter, micro: list) -> None:
        original(self, micro)
        if self.state.step == step:
            self.stop_signal = signal.SIGTERM

    monkeypatch.setattr(Fitter, "_step", step_then_signal)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [3, 7, 10], ids=["mid-epoch", "epoch-boundary", "second-epoch"])
def test_resume_is_bit_identical(tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch, stop: int,
                                 compose_train: Callable) -> None:
    """Stopped after step `stop` and resumed with resume=auto, the run ends with identical weights and metrics."""
    with monkeypatch.context() as m:
        stop_at(m, stop)
        with pytest.raises(Preempted) as info:
            train(compose_train(SMALL), tmp_path)
    assert info.value.step == stop and (tmp_path / "checkpoints" / f"step-{stop:07d}").is_dir()
    train(compose_train([*SMALL, "resume=auto"]), tmp_path)
    assert_same_weights(final_weights(tmp_path), final_weights(reference))
    assert events(tmp_path) == events(reference)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"] == json.loads((reference / "summary.json").read_text())["final"]


@pytest.mark.slow
def test_crash_inside_an_accumulation_window_resumes_exactly(tmp_path: Path, reference: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              compose_train: Callable) -> None:
    """A crash between the two micro-batches of step 6 resumes from step 5 and replays the window exactly."""
    from transformer_cli import loop

    calls = {"n": 0}
    original = loop.compute_loss

    def crash_mid_window(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 2:  # second micro-batch of the 6th window (evaluation uses no_grad batches too)
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "compute_loss", crash_mid_window)
        m.setattr(loop.Fitter, "_evaluate", lambda self, val: None)  # keep the call count to training only
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose_train(SMALL), tmp_path)
    assert CheckpointDir(tmp_path / "checkpoints", 3).newest_complete().name == "step-0000005"
    train(compose_train([*SMALL, "resume=auto"]), tmp_path)
    assert_same_weights(final_weights(tmp_path), final_weights(reference))


def wait_for(path: Path, timeout: float = 600) -> None:
    """Block until `path` exists."""
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def start_cli(repo: Path) -> Callable[[list[str], Path], subprocess.Popen]:
    """start_cli(args, cwd): start the CLI in the background."""
    def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "transformer_cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(repo)})

    return start_cli


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches(tmp_path: Path, reference: Path, start_cli: Callable,
                                                       run_cli: Callable) -> None:
    """SIGKILL a real training process three times at random moments (even mid-save); resume=auto each time.

    Every kill leaves a loadable checkpoint, and the finished run equals the uninterrupted one."""
    run_dir = tmp_path / "run"
    args = ["train", *SMALL, f"hydra.run.dir={run_dir}", "resume=auto"]
    rng = random.Random(0)
    for kill in range(3):
        proc = start_cli(args, tmp_path)
        wait_for(run_dir / "checkpoints" / "last")
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest = CheckpointDir(run_dir / "checkpoints", 3).newest_complete()
        assert newest is not None, f"kill {kill} left no complete checkpoint"
        load_checkpoint(run_dir / "checkpoints" / "last", trainer_state=True)  # the pointer is never torn
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_weights(final_weights(run_dir), final_weights(reference))


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_resumes(tmp_path: Path, reference: Path, start_cli: Callable,
                                            run_cli: Callable) -> None:
    """SIGTERM makes the run save at the next step boundary and exit 75; resuming finishes identically."""
    run_dir = tmp_path / "run"
    proc = start_cli(["train", *SMALL, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for(run_dir / "checkpoints" / "step-0000002")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-2000:]
    assert "SIGTERM" in err and "resume" in err
    stopped = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert stopped["event"] == "preempted"
    assert load_checkpoint(run_dir / "checkpoints" / "last").meta["step"] == stopped["step"]
    done = run_cli(["train", *SMALL, f"hydra.run.dir={run_dir}", f"resume={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(final_weights(run_dir), final_weights(reference))


@pytest.mark.slow
def test_resume_with_a_different_model_is_refused(tmp_path: Path, reference: Path, compose_train: Callable) -> None:
    """Resuming under a config that changes what is trained fails, naming the key."""
    with pytest.raises(TformerError, match="model.d_model"):
        train(compose_train([*SMALL, "model.d_model=32", f"resume={reference}"]), tmp_path)


def poison_loss(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """Make the training loss NaN on the given training-step calls (1-based)."""
    from transformer_cli import run as run_module

    original = run_module.build_loss
    count = {"n": 0}

    def build(cfg, ctx):
        loss = original(cfg, ctx)

        def poisoned(outputs, targets):
            value = loss(outputs, targets)
            if torch.is_grad_enabled():
                count["n"] += 1
                if count["n"] in bad_calls:
                    value.total = value.total * float("nan")
            return value
        return poisoned

    monkeypatch.setattr(run_module, "build_loss", build)


@pytest.mark.slow
def test_nan_with_error_policy_stops_naming_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     compose_train: Callable) -> None:
    """nan_policy=error (default) stops at the first non-finite step, naming it and its examples."""
    poison_loss(monkeypatch, {7})  # micro-batch 7 = first half of step 4
    with pytest.raises(NonFiniteError, match=r"step 4 \(epoch 0, batch of training examples"):
        train(compose_train(SMALL), tmp_path)
    for step_dir in CheckpointDir(tmp_path / "checkpoints", 3).steps():
        weights = load_file(str(step_dir / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.slow
def test_nan_with_skip_policy_leaves_weights_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       compose_train: Callable) -> None:
    """nan_policy=skip drops the bad update: weights after it equal those before; training goes on."""
    poison_loss(monkeypatch, {7})
    seen: list[dict[str, torch.Tensor]] = []
    original = Fitter._step

    def record(self: Fitter, micro: list) -> None:
        original(self, micro)
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Fitter, "_step", record)
    train(compose_train([*SMALL, "trainer.nan_policy=skip"]), tmp_path)
    # windows: 1, 2, 3 applied; window 4 skipped (weights equal to after window 3); window 5 applied.
    assert_same_weights(seen[2], seen[3])
    assert any(not torch.equal(seen[3][k], seen[4][k]) for k in seen[3])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 13  # one window gave no step
    skipped = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "skipped"]
    assert len(skipped) == 1 and len(skipped[0]["examples"]) == 32


@pytest.mark.slow
def test_deterministic_runs_are_identical(tmp_path: Path, compose_train: Callable) -> None:
    """trainer.deterministic=true: two runs with one seed write identical metrics and weights."""
    overrides = [*SMALL, "trainer.max_epochs=1", "trainer.deterministic=true", "seed=3"]
    train(compose_train(overrides), tmp_path / "a")
    train(compose_train(overrides), tmp_path / "b")
    assert events(tmp_path / "a") == events(tmp_path / "b")
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needles"), [
    (["train", "trainer.max_stepz=3"], ["max_stepz", "did you mean trainer.max_steps"]),
    (["train", "loss=focl"], ["loss/focl", "did you mean 'focal'"]),
    (["train", "+loss._target_=os.system"], ["_target_", "never imports"]),
    (["train", "+hydra.callbacks.x._target_=os.system"], ["_target_", "never imports"]),
    (["train", "data=local", "data.train=bad.csv"], ["bad.csv", "line 3", "not UTF-8"]),
    (["train", "data=local", "data.train=bad.jsonl"], ["bad.jsonl", "line 2", "invalid JSON"]),
    (["train", "data=local", "data.train=ok.csv", "data.test=oov.csv"], ["'neutral'", "row 2", "oov.csv"]),
])
def test_bad_input_is_named(tmp_path: Path, args: list[str], needles: list[str], run_cli: Callable) -> None:
    """Each bad input names the key, file, line or row, exits 2, and prints no traceback."""
    (tmp_path / "bad.csv").write_bytes(b"text,label\nfine,a\nw\xe9ird,b\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": }\n')
    (tmp_path / "ok.csv").write_text("text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    (tmp_path / "oov.csv").write_text("text,label\nfine,pos\nodd,neutral\n")
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    err = proc.stderr + proc.stdout
    assert proc.returncode == 2, err[-2000:]
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
    assert "Traceback" not in err
