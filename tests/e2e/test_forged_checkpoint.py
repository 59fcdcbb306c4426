"""Forged checkpoints: a file crafted to exhaust memory or time, to leak another file, or to crash the loader
with a traceback is refused with "corrupt or not a tformer checkpoint", in bounded memory and time.

The manifest detects damage, not forgery (a forger recomputes it), so every test here rewrites the manifest
as a forger would. The memory and time bounds are enforced on a subprocess (RLIMIT_AS, a timeout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from transformer_cli.checkpoint import FILES, TRAINER_FILES, _describe, load_checkpoint
from transformer_cli.errors import TformerError
from transformer_cli.restore import restore
from transformer_cli.run import train

MEMORY_BOUND = 500 << 20  # bytes a refusal may add to the process's address space


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, compose_train: Callable, sentence: Callable) -> Path:
    """A real run's checkpoint with its training state: a tiny classifier on 64 generated rows, 4 steps."""
    root = tmp_path_factory.mktemp("forged")
    rows = "".join(f"{sentence(i)},{i % 2}\n" for i in range(64))
    (root / "train.csv").write_text("text,label\n" + rows)
    cfg = compose_train(["model=tiny", "data=local", f"data.train={root / 'train.csv'}", "data.tokenizer.vocab_size=80",
                         "data.tokenizer.min_frequency=1", "trainer=debug", "trainer.max_steps=4",
                         "trainer.eval_every=4", "trainer.threads=1"])
    train(cfg, root / "run")
    return (root / "run" / "checkpoints" / "last").resolve()


@pytest.fixture
def forge(trained: Path, tmp_path: Path) -> Callable[..., Path]:
    """forge(name=text or bytes, ...): a copy of the checkpoint with files replaced and the manifest recomputed."""
    def forge(**files: str | bytes) -> Path:
        target = tmp_path / "forged"
        shutil.copytree(trained, target)
        for name, data in files.items():
            path = target / name.replace("__", ".")
            path.unlink()
            path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return sign(target)

    return forge


def sign(path: Path) -> Path:
    """Recompute manifest.json over whatever the files now are (what a forger does)."""
    names = [*FILES, *(n for n in TRAINER_FILES if (path / n).exists())]
    (path / "manifest.json").write_text(json.dumps({n: _describe(path / n) for n in names}))
    return path


def refusal(path: Path, trainer_state: bool = False) -> str:
    """The message restore() refuses `path` with."""
    with pytest.raises(TformerError) as err:
        restore(path, trainer_state=trainer_state)
    return str(err.value)


def bounded_restore(path: Path, repo: Path, timeout: float = 60) -> str:
    """restore(path) in a subprocess limited to its current address space + MEMORY_BOUND and `timeout`
    seconds; returns what it printed: "refused: <message>", or how it failed."""
    script = textwrap.dedent(f"""
        import resource, sys
        from transformer_cli.errors import TformerError
        from transformer_cli.restore import restore
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + {MEMORY_BOUND}, size + {MEMORY_BOUND}))
        try:
            restore(sys.argv[1])
            print("loaded")
        except TformerError as err:
            print("refused:", err)
        except BaseException as err:
            print("failed:", type(err).__name__, str(err)[:300])
    """)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    return (done.stdout + done.stderr).strip()


# ----------------------------------------------------------------------------- memory and time bombs


def test_the_genuine_checkpoint_loads_within_the_bound(trained: Path, repo: Path) -> None:
    """The bound itself is fair: the real checkpoint restores under it."""
    assert bounded_restore(trained, repo) == "loaded"


def test_a_config_claiming_a_huge_model_is_refused_before_allocation(trained: Path, forge: Callable,
                                                                     repo: Path) -> None:
    """d_model 16384 would allocate gigabytes; it is refused from the shapes alone, under 500 MB."""
    config = (trained / "config.yaml").read_text().replace("d_model: 64", "d_model: 16384", 1)
    assert "d_model: 16384" in config
    out = bounded_restore(forge(config__yaml=config), repo)
    assert out.startswith("refused:") and "corrupt or not a tformer checkpoint" in out, out
    assert "does not match model.safetensors" in out


def test_a_config_needing_huge_buffers_is_refused(trained: Path, forge: Callable, repo: Path) -> None:
    """Tensors rebuilt from config rather than stored (position tables) are counted too."""
    config = (trained / "config.yaml").read_text()
    assert "max_positions: 512" in config
    out = bounded_restore(forge(config__yaml=config.replace("max_positions: 512", "max_positions: 100000000", 1)),
                          repo)
    assert out.startswith("refused:") and "corrupt or not a tformer checkpoint" in out, out


def test_a_yaml_alias_bomb_is_refused_at_once(forge: Callable, repo: Path) -> None:
    """A 2 KB config whose aliases expand to billions of nodes: refused from the token stream."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    bomb = "\n".join(levels) + "\nmodel: *a11\n"
    assert len(bomb) < 2500
    out = bounded_restore(forge(config__yaml=bomb), repo, timeout=30)
    assert out.startswith("refused:") and "anchors or aliases" in out, out


@pytest.mark.parametrize("name", ["task.json", "meta.json", "trainer_state.json", "config.yaml"])
def test_an_oversized_text_file_is_refused_unread(trained: Path, forge: Callable, name: str) -> None:
    """Each YAML/JSON file has a size cap far above a real one."""
    padded = '{"pad": "' + "x" * (40 << 20) + '"}'
    message = refusal(forge(**{name.replace(".", "__"): padded}), trainer_state=True)
    assert "corrupt or not a tformer checkpoint" in message and "bytes, over the" in message


# ----------------------------------------------------------------------------- forged content


@pytest.mark.parametrize("change, named", [
    (lambda m: m.update(step="12"), "step"),
    (lambda m: m.pop("step"), "step: missing"),
    (lambda m: m.update(metrics=[1, 2]), "metrics"),
    (lambda m: m.update(monitor=3), "monitor"),
    (lambda m: m.update(surprise=1), "surprise: unexpected key"),
], ids=["step-as-text", "no-step", "metrics-list", "monitor-number", "unknown-key"])
def test_forged_meta_json(trained: Path, forge: Callable, change: Callable, named: str) -> None:
    """meta.json of the wrong shape: refused naming the key, not a KeyError or TypeError later."""
    meta = json.loads((trained / "meta.json").read_text())
    change(meta)
    message = refusal(forge(meta__json=json.dumps(meta)))
    assert "corrupt or not a tformer checkpoint" in message and named in message


@pytest.mark.parametrize("change, named", [
    (lambda t: t.update(labels=5), "labels"),
    (lambda t: t.pop("labels"), "labels: missing"),
    (lambda t: t.update(labels=[0, 1]), "labels[0]"),
    (lambda t: t.update(loss_context={"num_outputs": "two"}), "loss_context.num_outputs"),
    (lambda t: t.update(loss_kind=None), "loss_kind"),
], ids=["labels-number", "no-labels", "labels-ints", "context-text", "loss-kind-null"])
def test_forged_task_json(trained: Path, forge: Callable, change: Callable, named: str) -> None:
    """task.json is checked against the task's STATE and the loss context's keys."""
    task = json.loads((trained / "task.json").read_text())
    change(task)
    message = refusal(forge(task__json=json.dumps(task)))
    assert "corrupt or not a tformer checkpoint" in message and named in message


@pytest.mark.parametrize("change, named", [
    (lambda s: s["fit"].update(step="4"), "fit.step"),
    (lambda s: s["fit"].pop("best_step"), "best_step: missing"),
    (lambda s: s.pop("optimizer"), "optimizer: missing"),
    (lambda s: s.update(scheduler=[1]), "scheduler"),
    (lambda s: s["meter"].update(total={"__tensor__": "no.such.tensor"}), "lacks"),
], ids=["step-text", "no-best-step", "no-optimizer", "scheduler-list", "dangling-tensor"])
def test_forged_trainer_state_json(trained: Path, forge: Callable, change: Callable, named: str) -> None:
    """trainer_state.json is checked when a resume reads it."""
    state = json.loads((trained / "trainer_state.json").read_text())
    change(state)
    message = refusal(forge(trainer_state__json=json.dumps(state)), trainer_state=True)
    assert "corrupt or not a tformer checkpoint" in message and named in message


def test_forged_trainer_state_through_the_cli(trained: Path, forge: Callable, tmp_path: Path, run_cli: Callable,
                                              repo: Path) -> None:
    """A resume from a checkpoint with a forged training state: exit 2, the message, no traceback."""
    state = json.loads((trained / "trainer_state.json").read_text())
    state["fit"]["epoch"] = [0]
    ckpt = forge(trainer_state__json=json.dumps(state))
    config = (trained / "config.yaml").read_text()
    done = run_cli(["train", f"--config-dir={tmp_path}", f"resume={ckpt}", f"hydra.run.dir={tmp_path / 'again'}",
                    *_overrides_of(config)], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "corrupt or not a tformer checkpoint" in done.stderr and "fit.epoch" in done.stderr
    assert "Traceback" not in done.stderr


def _overrides_of(config: str) -> list[str]:
    """The overrides that made the fixture's run (read back from its stored config)."""
    import yaml

    data = yaml.safe_load(config)["data"]
    return ["model=tiny", "data=local", f"data.train={data['train']}", "data.tokenizer.vocab_size=80",
            "data.tokenizer.min_frequency=1", "trainer=debug", "trainer.max_steps=6", "trainer.eval_every=4",
            "trainer.threads=1"]


# ----------------------------------------------------------------------------- links and special files


def test_a_symlink_to_another_file_is_not_followed(trained: Path, tmp_path: Path) -> None:
    """task.json linked to a private file: refused as a link; the file's content never reaches the message."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-PASSWORD-123")
    target = tmp_path / "linked"
    shutil.copytree(trained, target)
    (target / "task.json").unlink()
    (target / "task.json").symlink_to(secret)
    message = refusal(sign(target))
    assert "task.json is a symbolic link" in message and "SECRET" not in message


def test_a_symlinked_manifest_is_not_followed(trained: Path, tmp_path: Path) -> None:
    """manifest.json itself linked elsewhere: refused before it is read."""
    target = tmp_path / "linked"
    shutil.copytree(trained, target)
    moved = tmp_path / "manifest-elsewhere.json"
    (target / "manifest.json").rename(moved)
    (target / "manifest.json").symlink_to(moved)
    assert "manifest.json is a symbolic link" in refusal(target)


def test_a_fifo_is_refused_without_blocking(trained: Path, tmp_path: Path) -> None:
    """A named pipe in place of meta.json would block a reader forever; it is refused as not a regular file."""
    target = tmp_path / "fifo"
    shutil.copytree(trained, target)
    (target / "meta.json").unlink()
    os.mkfifo(target / "meta.json")
    with pytest.raises(TformerError, match="meta.json is not a regular file"):
        load_checkpoint(target)
