"""The built wheel, installed into a fresh virtual environment, works from an unrelated directory.

How the fresh environment gets its dependencies: the wheel itself is installed for real (`pip install
--no-deps`, so its files, package data and `tformer` script are what gets tested), while torch, hydra,
datasets and the rest are borrowed from the environment running the tests through a `.pth` file. That
takes seconds, needs no network, and cannot hide a missing file: the fresh site-packages comes first on
sys.path, the borrowed directory holds no `transformer_cli` (the dev install is an editable finder that a
`.pth`-added directory never runs), and the tests assert where `transformer_cli` was imported from.
A check in the fresh interpreter then confirms that the wheel's declared requirements are all met there.
TFORMER_WHEEL_CLEAN_INSTALL=1 installs every dependency from the package index instead (minutes, network).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# What a user of the export runs: nothing of tformer, only tokenizers, onnxruntime and numpy.
PREDICT_WITH_ONNX = """
import json, sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

d = sys.argv[1]
spec = json.load(open(f"{d}/export.json"))
tok = Tokenizer.from_file(f"{d}/tokenizer.json")  # pads a batch to its longest text
enc = tok.encode_batch(["what a warm and lovely film", "dull"])
feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
logits, probs = ort.InferenceSession(f"{d}/{spec['model']}").run(None, feed)
print([spec["labels"][i] for i in probs.argmax(-1)])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    """sdist, then the wheel built from that sdist, with the standard `build` front end (offline)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(repo)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_holds_every_module_and_config(wheel: Path, repo: Path) -> None:
    """Every .py of the package and every YAML under conf/ (nested groups too) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (repo / "conf").rglob("*.yaml"):
        assert f"transformer_cli/conf/{path.relative_to(repo / 'conf').as_posix()}" in names, path
    for path in (repo / "transformer_cli").rglob("*.py"):
        assert path.relative_to(repo).as_posix() in names, path
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tformer = transformer_cli.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def fresh_env(wheel: Path, where: Path) -> Path:
    """A new virtual environment with the wheel installed; returns its bin directory."""
    if os.environ.get("TFORMER_WHEEL_CLEAN_INSTALL") == "1":
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
        import torch

        torch_req = f"torch=={torch.__version__.split('+')[0]}"  # the build this machine has, not a GPU download
        subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", torch_req,
                        f"{wheel}[export,logging]"], check=True, timeout=1800)
        return where / "bin"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Written after the install, so pip never sees the borrowed editable tformer as already installed.
    (Path(purelib) / "_borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return where / "bin"


# Run in the fresh interpreter: tformer's own requirements (not those of every borrowed package) are met.
CHECK_REQUIREMENTS = """
import importlib.metadata as md
from packaging.requirements import Requirement
bad = []
for line in md.requires("tformer"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req}: not installed")
        continue
    if not req.specifier.contains(version, prereleases=True):
        bad.append(f"{req}: {version} installed")
print("; ".join(bad) or "ok")
"""


def test_newcomer_flow_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """From a clean directory: list presets, copy and edit two, train with TensorBoard, export to ONNX, run it."""
    bin_dir = fresh_env(wheel, tmp_path / "venv")
    home = tmp_path / "elsewhere"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    def tformer(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(bin_dir / "tformer"), *args], cwd=home, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"tformer {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    where = subprocess.run([str(bin_dir / "python"), "-c", "import transformer_cli; print(transformer_cli.__file__)"],
                           cwd=home, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    met = subprocess.run([str(bin_dir / "python"), "-c", CHECK_REQUIREMENTS], cwd=home, env=env, capture_output=True,
                         text=True)
    assert met.stdout.strip() == "ok", met.stdout + met.stderr

    assert "experiment  (tformer train experiment=<option>)" in tformer("ls").stdout
    rows = ["body,stars"] + [f"{'warm lovely film' if i % 2 else 'dull tired plot'} number {i},"
                             f"{'good' if i % 2 else 'bad'}" for i in range(160)]
    (home / "reviews.csv").write_text("\n".join(rows) + "\n")

    tformer("cp", "data/local", "myconf/data/reviews.yaml")
    data = home / "myconf" / "data" / "reviews.yaml"
    data.write_text("# My reviews: a body text and a good/bad verdict.\n"
                    + _edit(data.read_text(), {"train: ???": "train: reviews.csv", "text_column: text":
                                               "text_column: body", "label_column: label": "label_column: stars"},
                            drop_first_line=True))
    tformer("cp", "experiment/quick", "myconf/experiment/mine.yaml")
    preset = home / "myconf" / "experiment" / "mine.yaml"
    preset.write_text(_edit(preset.read_text(), {"  - override /model: small\n": "  - override /model: tiny\n"
                                                 "  - override /data: reviews\n  - override /trainer: debug\n"}))
    listing = tformer("ls", "--config-dir", "myconf", "data", "experiment").stdout
    assert "My reviews" in listing and "mine" in listing and "[yours]" in listing

    tformer("train", "--config-dir", "myconf", "experiment=mine", "logger=tensorboard",
            "data.tokenizer.vocab_size=300", "hydra.run.dir=run")
    run = home / "run"
    card = (run / "README.md").read_text()
    assert f"tformer train --config-dir {home / 'myconf'} experiment=mine logger=tensorboard" in card
    assert list((run / "tensorboard").glob("events.out.tfevents.*")) and (run / "metrics.csv").is_file()

    tformer("export", "ckpt=run", "format=onnx", "out=exported", "hydra.run.dir=export_run")
    spec = json.loads((home / "exported" / "export.json").read_text())
    assert spec["labels"] == ["bad", "good"] and max(spec["check"]["max_abs_diff"].values()) <= 1e-4
    proc = subprocess.run([str(bin_dir / "python"), "-c", PREDICT_WITH_ONNX, str(home / "exported")], cwd=home,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(eval(proc.stdout)) <= {"bad", "good"}  # noqa: S307 - our own script's printed list

    if shutil.which("bash"):
        line = "tformer train --config-dir myconf experiment="
        script = (f'eval "$(tformer -sc install=bash)"; COMP_LINE="{line}"; COMP_POINT={len(line)}; '
                  f'COMP_WORDS=({line}); COMP_CWORD=4; hydra_bash_completion; echo "${{COMPREPLY[@]}}"')
        proc = subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=120)
        assert "experiment=mine" in proc.stdout.split() and "experiment=quick" in proc.stdout.split(), proc.stderr


def _edit(text: str, replacements: dict[str, str], drop_first_line: bool = False) -> str:
    """Replace each (present) piece of a copied YAML, as a user would in an editor."""
    for old, new in replacements.items():
        assert old in text, f"the shipped YAML changed: {old!r} not found"
        text = text.replace(old, new, 1)
    return text.split("\n", 1)[1] if drop_first_line else text
