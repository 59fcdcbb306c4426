"""The tokenized data cache: training from it matches training in memory bit for bit, a second run reuses it,
a changed file or setting tokenizes again, and a large corpus trains in bounded memory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transformer_cli.data.cache import cache_root
from transformer_cli.errors import Preempted
from transformer_cli.loop import Fitter
from transformer_cli.plan import make_plan
from transformer_cli.prepare import prepare_training_data
from transformer_cli.run import train

# 300 rows: 270 train (17 batches of 16, 9 steps per epoch), 30 carved off for validation.
RUN = ["model=tiny", "data=local", "data.tokenizer.vocab_size=300", "trainer.max_epochs=1", "trainer.batch_size=16",
       "trainer.grad_accum=2", "trainer.progress=false", "trainer.log_every=1", "trainer.save_every=1",
       "trainer.threads=1"]


def write_corpus(path: Path, rows: int, sentence: Callable[[int], str], seed: int = 0) -> Path:
    """A CSV of `rows` generated sentences with a label each."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "label"])
        for i in range(rows):
            out.writerow([sentence(i * 31 + seed), "pos" if (i + seed) % 3 else "neg"])
    return path


def events(run_dir: Path) -> list[tuple]:
    """(event, step, loss) of every metrics.jsonl record, without timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["event"], r["step"], r.get("loss")) for r in rows if r["event"] != "preempted"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's last checkpoint."""
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


@pytest.mark.slow
def test_cached_training_matches_in_memory_training_even_resumed(tmp_path: Path, sentence: Callable,
                                                                 compose_train: Callable,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same losses and bit-identical weights from the cache as from in-memory data, also when the cached run
    is stopped mid-epoch and resumed (which reuses the entry its first part wrote)."""
    data = write_corpus(tmp_path / "train.csv", 300, sentence)
    run = [*RUN, f"data.train={data}", f"data.cache_dir={tmp_path / 'cache'}"]
    train(compose_train([*run, "data.cache=false"]), tmp_path / "memory")
    with monkeypatch.context() as m:
        original = Fitter._step

        def step_then_signal(self: Fitter, micro: list) -> None:
            original(self, micro)
            if self.state.step == 4:  # mid-epoch: 9 steps per epoch
                self.stop_signal = signal.SIGTERM

        m.setattr(Fitter, "_step", step_then_signal)
        with pytest.raises(Preempted):
            train(compose_train(run), tmp_path / "cached")
    train(compose_train([*run, "resume=auto"]), tmp_path / "cached")
    assert len(list(cache_root(compose_train(run).data).iterdir())) == 1  # the resumed run wrote no new entry
    assert events(tmp_path / "cached") == events(tmp_path / "memory")
    a, b = weights(tmp_path / "cached"), weights(tmp_path / "memory")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_is_reused_and_invalidated_by_a_changed_file_or_setting(tmp_path: Path, sentence: Callable,
                                                                      compose_train: Callable) -> None:
    """The second preparation reuses the entry (and plan says so); a changed file, tokenizer setting or
    max_length writes a new one; an abandoned temporary folder is never taken for an entry."""
    data = write_corpus(tmp_path / "train.csv", 200, sentence)
    run = [*RUN, f"data.train={data}", f"data.cache_dir={tmp_path / 'cache'}"]
    first = prepare_training_data(compose_train(run))
    assert first.cache.startswith("written ")
    again = prepare_training_data(compose_train(run))
    assert again.cache == "reused " + first.cache.split(" ", 1)[1]
    assert np.array_equal(again.splits["train"].lengths, first.splits["train"].lengths)
    assert make_plan(compose_train(run)).data_cache.startswith("reused ")
    for change in ("data.tokenizer.vocab_size=250", "data.tokenizer.max_length=8", "data.tokenizer.lowercase=false",
                   "data.tokenizer.train_sample=50"):
        assert prepare_training_data(compose_train([*run, change])).cache.startswith("written "), change
    write_corpus(data, 200, sentence, seed=1)  # same name and size, other contents
    changed = prepare_training_data(compose_train(run))
    assert changed.cache.startswith("written ") and changed.cache != first.cache
    folders = sorted(p.name for p in cache_root(compose_train(run).data).iterdir())
    assert len(folders) == 6 and not any(name.startswith(".tmp-") for name in folders)


def test_an_interrupted_write_leaves_no_entry(tmp_path: Path, sentence: Callable, compose_train: Callable,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway leaves neither an entry nor its temporary folder; the next run writes it whole."""
    from transformer_cli.data import cache

    data = write_corpus(tmp_path / "train.csv", 200, sentence)
    run = [*RUN, f"data.train={data}", f"data.cache_dir={tmp_path / 'cache'}"]

    def fail(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "write_manifest", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare_training_data(compose_train(run))
    assert list(cache_root(compose_train(run).data).iterdir()) == []
    monkeypatch.undo()
    assert prepare_training_data(compose_train(run)).cache.startswith("written ")


MEMORY_CEILING_MB = 800  # measured: about 1,140 MB with the data held in memory, about 520 MB from the cache
ROWS = 300_000

# The peak is VmHWM, the high-water mark of this process's own memory map. Not getrusage's ru_maxrss: Linux
# carries the parent's high-water mark across fork and exec into it, so under a large test process (pytest -n,
# after in-process trainings) it reported the parent's peak, not the command's.
WRAPPER = """
import runpy, sys
sys.argv = ["tformer", *sys.argv[1:]]
try:
    runpy.run_module("transformer_cli", run_name="__main__")
finally:
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("peak_rss_kb", hwm, file=sys.stderr)
"""


@pytest.mark.slow
def test_a_large_corpus_trains_in_bounded_memory(tmp_path: Path, sentence: Callable, repo: Path) -> None:
    """ROWS rows train a few steps with a peak resident memory under MEMORY_CEILING_MB (a fresh process)."""
    data = write_corpus(tmp_path / "big.csv", ROWS, sentence)
    args = ["train", "data=local", f"data.train={data}", "model=tiny", "trainer=debug", "trainer.max_steps=3",
            "data.max_eval_examples=200", "data.tokenizer.train_sample=5000", "trainer.threads=1",
            f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]) / 1024
    assert peak_mb < MEMORY_CEILING_MB, f"peak {peak_mb:.0f} MB"
