"""The Python API end to end: `transformer_cli.train` trains one tiny checkpoint per task (the command's own path,
in this process), `load(...).predict(...)` returns exactly what `tformer predict` writes for each task, a forged
checkpoint is refused as the command refuses it, and the README's example runs as written."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import OmegaConf

import transformer_cli
from transformer_cli.errors import TformerError
from transformer_cli.files import sha256_file
from transformer_cli.predict import predict

WORDS = "good bad fine awful great dull bright slow quick warm cold sharp".split()
TINY = ["model=tiny", "trainer=debug", "trainer.max_steps=4", "trainer.eval_every=4", "data.tokenizer.min_frequency=1"]
TASKS = ("classify", "regress", "multilabel", "seq2seq", "mlm")


def words(i: int, n: int = 4) -> list[str]:
    """A deterministic list of n words."""
    rng = random.Random(i)
    return [rng.choice(WORDS) for _ in range(n)]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def task_data(task: str, tmp: Path) -> list[str]:
    """Local training data for a task, as overrides (classify reads sentence pairs)."""
    if task == "classify":
        rows = [{"text": " ".join(words(i)), "text2": " ".join(words(i + 1000)), "label": ""} for i in range(120)]
        for r in rows:
            r["label"] = "same" if r["text"].split()[0] == r["text2"].split()[0] else "different"
        return [f"data.train={write_csv(tmp / 'pairs.csv', rows)}", "data.text_pair_column=text2"]
    if task == "regress":
        rows = [{"text": " ".join(words(i)), "label": str(len(set(words(i))) * 10 + i % 3)} for i in range(120)]
        return [f"data.train={write_csv(tmp / 'values.csv', rows)}"]
    if task == "multilabel":
        lines = [json.dumps({"text": " ".join(words(i)), "label": sorted(set(words(i)[:2]) & {"good", "bad", "cold"})})
                 for i in range(120)]
        (tmp / "topics.jsonl").write_text("\n".join(lines) + "\n")
        return [f"data.train={tmp / 'topics.jsonl'}"]
    if task == "seq2seq":
        rows = [{"text": " ".join(words(i)), "label": " ".join(reversed(words(i)))} for i in range(120)]
        return [f"data.train={write_csv(tmp / 'reverse.csv', rows)}", "task.target_vocab_size=60",
                "task.target_min_frequency=1"]
    (tmp / "corpus.txt").write_text("\n".join(" ".join(words(i, 6)) for i in range(150)) + "\n")
    return [f"data.train={tmp / 'corpus.txt'}"]


# The texts each checkpoint predicts, and their second texts for the pair classifier.
INPUTS: dict[str, tuple[list[str], list[str] | None]] = {
    "classify": (["good day", "cold bright night", "sharp"], ["good night", "warm day", "dull and slow"]),
    "regress": (["good bad fine", "quick quick quick", "awful dull", "a word it never saw"], None),
    "multilabel": (["good cold", "bad", "sharp quick warm"], None),
    "seq2seq": (["good bad fine", "slow quick", "warm cold sharp dull"], None),
    "mlm": (["good [MASK] fine", "[MASK] cold [MASK] sharp", "no mask here"], None),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run per task, trained by transformer_cli.train in this process; task -> run directory."""
    out = {}
    for task in TASKS:
        tmp = tmp_path_factory.mktemp(task)
        summary = transformer_cli.train([f"task={task}", "data=local", *task_data(task, tmp), *TINY,
                                         f"hydra.run.dir={tmp / 'run'}"])
        assert summary["task"] == task and summary["run_dir"] == str(tmp / "run")
        assert summary == {**json.loads((tmp / "run" / "summary.json").read_text()), "run_dir": str(tmp / "run")}
        assert (tmp / "run" / "train.log").is_file() and (tmp / "run" / ".hydra" / "overrides.yaml").is_file()
        out[task] = tmp / "run"
    return out


def command_records(run: Path, texts: list[str], pairs: list[str] | None, tmp: Path, compose_predict: Callable,
                    *extra: str) -> list[dict[str, Any]]:
    """What `tformer predict` writes for these texts (a JSON Lines input with ids 0, 1, ...), ids removed."""
    source = tmp / "input.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t, **({"text2": pairs[i]} if pairs else {})}) + "\n"
                              for i, t in enumerate(texts)))
    output = tmp / "predictions.jsonl"
    predict(compose_predict([f"ckpt={run}", f"input={source}", f"output={output}", *extra]))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r.pop("id") for r in records] == list(range(len(texts)))
    return records


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_load_predict_equals_the_command(task: str, runs: dict[str, Path], tmp_path: Path,
                                         compose_predict: Callable) -> None:
    texts, pairs = INPUTS[task]
    model = transformer_cli.load(runs[task], device="cpu")
    assert model.task == task and model.device == "cpu" and model.reads_pairs == (pairs is not None)
    assert model.path == runs[task] / "checkpoints" / "best"
    for top_k in (2, 0):
        got = model.predict(texts, pairs, top_k=top_k)
        assert got == command_records(runs[task], texts, pairs, tmp_path, compose_predict, f"top_k={top_k}",
                                      "device=cpu")
    assert model.predict(texts, pairs) == command_records(runs[task], texts, pairs, tmp_path, compose_predict)
    assert model.predict(texts, pairs, batch_size=2) == command_records(runs[task], texts, pairs, tmp_path,
                                                                       compose_predict, "batch_size=2")
    one = model.predict(texts[0], pairs[0] if pairs else None)  # a string in, a record out
    assert one == model.predict(texts[:1], pairs[:1] if pairs else None)[0]
    assert model.predict([], [] if pairs else None) == []
    json.dumps(got, allow_nan=False)  # plain JSON values, as the command writes them


@pytest.mark.slow
def test_the_command_line_prints_the_same_records(runs: dict[str, Path], tmp_path: Path,
                                                  run_cli: Callable) -> None:
    """`tformer predict` as a user runs it (a process of its own, stdin to stdout) agrees with the API."""
    texts, _ = INPUTS["seq2seq"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    proc = run_cli(["predict", f"ckpt={runs['seq2seq']}", f"input={tmp_path / 'in.txt'}",
                    f"hydra.run.dir={tmp_path / 'log'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r.pop("id") for r in printed] == [1, 2, 3]  # line numbers
    assert transformer_cli.load(runs["seq2seq"]).predict(texts) == printed


@pytest.mark.slow
def test_inputs_the_checkpoint_cannot_take(runs: dict[str, Path]) -> None:
    pair_model = transformer_cli.load(runs["classify"])
    with pytest.raises(TformerError, match="reads sentence pairs"):
        pair_model.predict(["only one text"])
    with pytest.raises(TformerError, match="reads sentence pairs"):
        pair_model.predict(["a", "b"], ["one"])
    model = transformer_cli.load(runs["regress"])
    with pytest.raises(TformerError, match="single texts, not pairs"):
        model.predict(["a"], ["b"])
    with pytest.raises(TformerError, match="text 1 is a int"):
        model.predict(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TformerError, match="top_k must be 0 or more"):
        model.predict(["fine"], top_k=-1)
    with pytest.raises(TformerError, match="batch_size must be positive"):
        model.predict(["fine"], batch_size=0)


def forge(checkpoint: Path, target: Path, edit: Callable[[Path], None], rehash: bool) -> Path:
    """A copy of a checkpoint with one file edited; with `rehash`, the manifest is made to match the edit."""
    shutil.copytree(checkpoint.resolve(), target)
    edit(target)
    if rehash:
        manifest = json.loads((target / "manifest.json").read_text())
        for name in manifest:
            manifest[name] = {"size": (target / name).stat().st_size, "sha256": sha256_file(target / name)}
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.slow
def test_a_forged_checkpoint_is_refused_as_the_command_refuses_it(runs: dict[str, Path], tmp_path: Path,
                                                                   run_cli: Callable) -> None:
    """A config naming code to call, with a manifest that matches it, or a weights file that does not match
    its manifest: load raises the TformerError the command prints, and nothing of the checkpoint runs."""
    def target(folder: Path) -> None:
        cfg = OmegaConf.load(folder / "config.yaml")
        cfg.model["_target_"] = "os.system"
        cfg.model["path"] = "touch pwned"
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))

    def truncate(folder: Path) -> None:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])

    best = runs["regress"] / "checkpoints" / "best"
    for name, edit, rehash in (("code", target, True), ("truncated", truncate, False)):
        forged = forge(best, tmp_path / name, edit, rehash)
        with pytest.raises(TformerError) as err:
            transformer_cli.load(forged)
        (tmp_path / "in.txt").write_text("fine\n")
        proc = run_cli(["predict", f"ckpt={forged}", f"input={tmp_path / 'in.txt'}",
                        f"hydra.run.dir={tmp_path / 'log'}"], tmp_path)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        assert f"error: {' '.join(err.value.message.split())}" in " ".join(proc.stderr.split())  # the same words
        if name == "code":
            assert "_target_" in err.value.message
        else:
            assert "corrupt" in err.value.message
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.slow
def test_the_readme_example_runs(repo: Path, tmp_path: Path) -> None:
    """The README's Python API example, as written, in a fresh process (outputs/ lands in its own directory)."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the README's Python API section has no python block"
    proc = subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    printed = [line.split() for line in proc.stdout.splitlines() if line.startswith(("fresh ", "rotten "))]
    assert len(printed) == 2 and all(0.5 <= float(p) <= 1.0 for _, p in printed), proc.stdout[-3000:]
    assert list((tmp_path / "outputs" / "train").glob("*/*/checkpoints/best"))
