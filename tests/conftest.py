"""Shared fixtures: an offline, isolated environment and helpers that compose the real configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from transformer_cli.config import conf_dir
from transformer_cli.validate import register_schemas

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings for runs on real data in tests.
TINY = [
    "model=tiny",
    "data.max_train_examples=400",
    "data.max_eval_examples=200",
    "data.tokenizer.vocab_size=600",
    "trainer=debug",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No hub access, a private HF cache, and one shared tformer data cache for the session."""
    hf = tmp_path_factory.mktemp("hf_home")
    cache = os.environ.get("TFORMER_TEST_CACHE") or str(tmp_path_factory.mktemp("tformer_cache"))
    saved = dict(os.environ)
    os.environ.update({"HF_HOME": str(hf), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                       "TFORMER_CACHE": cache, "TQDM_DISABLE": "1"})
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """An in-process run with trainer.threads=N must not change the thread count of later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_train(overrides: list[str]) -> DictConfig:
    """The real `tformer train` config with overrides, as Hydra composes it for the CLI."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m transformer_cli ...` as a user would, capturing its output."""
    return subprocess.run([sys.executable, "-m", "transformer_cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
