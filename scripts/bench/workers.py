"""Measurements that need fresh processes: peak memory per contender, and parallel sweep jobs.

The parent starts `python -m scripts.bench --worker ...`; a worker prints JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .flops import summary
from .workload import Settings, load_workload

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600


def _command(mode: str, *args: str) -> list[str]:
    """The command line of one worker."""
    return [sys.executable, "-m", "scripts.bench", "--mode", mode, *args]


def _env() -> dict[str, str]:
    """The parent's environment, with the repository importable."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def _last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a worker printed last."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker printed no result:\n{stdout[-2000:]}")
    return json.loads(lines[-1])


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident memory of this process image so far, in MiB. (Not ru_maxrss: Linux carries that over
    from the parent across fork and exec, so a worker started by a large process would report the parent's.)"""
    return _status_mib("VmHWM")


# --- peak memory ----------------------------------------------------------------------------------


def measure_memory(settings: Settings, name: str) -> dict[str, Any]:
    """Run the memory worker for one contender in a fresh process."""
    proc = subprocess.run(_command(settings.mode, "--worker", "memory", "--name", name), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker for {name} failed:\n{proc.stderr[-3000:]}")
    return _last_json(proc.stdout)


def memory_worker(settings: Settings, name: str) -> dict[str, Any]:
    """Load the data, build one contender, then train on its largest batches: peak RSS and its growth."""
    from .runner import CONTENDERS

    work = load_workload(settings)
    contender = CONTENDERS[name].build(work, settings)
    setup_peak, before = peak_rss_mib(), rss_mib()
    reset = _reset_peak()
    contender.stress(settings.memory_steps)
    training_peak = peak_rss_mib()
    return {"peak_rss_mib": max(setup_peak, training_peak), "rss_before_training_mib": before,
            "training_peak_rss_mib": training_peak if reset else None,
            "training_growth_mib": training_peak - before if reset else None}


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next reading is the training peak alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- parallel sweep jobs ------------------------------------------------------------------------


def sweep_worker(settings: Settings, threads: int) -> dict[str, Any]:
    """One sweep job: our training step with `threads` torch threads; times its steps after a 'go' line."""
    from .contenders import ours
    from .workload import epoch_batches

    torch.set_num_threads(threads)  # what trainer.threads does
    work = load_workload(settings)
    contender = ours(work, settings)
    batches = epoch_batches(work, settings.batch_size, True, settings.seed)
    contender.block(1)
    print("ready", flush=True)
    sys.stdin.readline()
    start, tokens = time.time(), 0
    for idx in batches[: settings.sweep_steps]:
        contender.step_fn(work.collate(idx))
        tokens += int(work.split.lengths[idx].sum())
    return {"start": start, "end": time.time(), "tokens": tokens, "threads": torch.get_num_threads()}


def run_sweep(settings: Settings, jobs: int, threads: int) -> dict[str, Any]:
    """`jobs` sweep jobs at once with `threads` threads each, started together: aggregate real tokens/s."""
    procs = [subprocess.Popen(_command(settings.mode, "--worker", "sweep", "--threads", str(threads)), cwd=REPO,
                              env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for _ in range(jobs)]
    for p in procs:  # wait until every job has loaded its data and warmed up
        while (line := p.stdout.readline()) and line.strip() != "ready":
            pass
    for p in procs:
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
        except BrokenPipeError:  # it died before 'ready'; communicate() below reports why
            pass
    results = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT_S)
        if p.returncode != 0:
            raise RuntimeError(f"sweep worker failed with exit status {p.returncode}:\n{err[-3000:]}")
        results.append(_last_json(out))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"jobs": jobs, "threads_per_job": threads, "wall_s": wall,
            "real_tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "per_job_tokens_per_s": [r["tokens"] / (r["end"] - r["start"]) for r in results]}


def sweep_table(settings: Settings) -> dict[str, Any]:
    """N jobs x 1 thread on N cores against the fair baseline, one N-thread job at a time (a sweep's jobs run
    one after another), and against N jobs x N threads (oversubscribed: 2N threads on N cores). Each
    configuration runs `sweep_reps` times, in an order shuffled per repetition under the seed; ratios are paired
    by repetition."""
    cores = os.cpu_count() or 1
    baseline, parallel, fighting = (f"1 job x {cores} threads", f"{cores} jobs x 1 thread",
                                    f"{cores} jobs x {cores} threads")
    configs = {baseline: (1, cores), parallel: (cores, 1), fighting: (cores, cores)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    rng = random.Random(settings.seed)
    for _ in range(settings.sweep_reps):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            runs[name].append(run_sweep(settings, *configs[name]))

    def ratio(a: str, b: str) -> dict[str, float]:
        """Aggregate real tokens/s of a over b, repetition by repetition, summarised."""
        return summary([x["real_tokens_per_s"] / y["real_tokens_per_s"] for x, y in zip(runs[a], runs[b])])

    rows = {name: {"jobs": jobs, "threads_per_job": threads,
                   "real_tokens_per_s": summary([r["real_tokens_per_s"] for r in runs[name]]),
                   "wall_s": summary([r["wall_s"] for r in runs[name]]), "runs": runs[name]}
            for name, (jobs, threads) in configs.items()}
    return {"cores": cores, "reps": settings.sweep_reps, "rows": rows, "baseline": baseline,
            "one_thread_over_one_job": ratio(parallel, baseline), "one_thread_over_fighting": ratio(parallel, fighting)}
