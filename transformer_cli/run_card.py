"""README.md in every run directory: what was trained, how to reproduce it, how it did, where it ran.

The card is built from what the run already knows (its resolved config, summary.json, Hydra's record of the
command line) plus two facts gathered here: the sha256 of every data file, and the git commit of the code.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transformer_cli.errors import TformerError
from transformer_cli.files import read_json_object

log = logging.getLogger(__name__)

# Overrides left out of the reproduce command: they say where to continue, not what to compute.
NOT_REPRODUCED = ("resume",)


def write_run_card(run_dir: Path, cfg: DictConfig, summary: dict[str, Any]) -> Path:
    """Write `run_dir/README.md` for a finished training run."""
    hydra = hydra_record(run_dir)
    sections = [
        _title(run_dir, cfg, summary),
        _what(cfg, summary, hydra),
        _reproduce(hydra, cfg),
        _results(summary),
        _curves(run_dir),
        _environment(summary),
        _data(cfg),
        _files(run_dir),
    ]
    path = run_dir / "README.md"
    path.write_text("\n\n".join(s.strip("\n") for s in sections if s) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- what Hydra recorded


def hydra_record(run_dir: Path) -> dict[str, Any]:
    """Overrides, config sources, group choices and working directory of this job, as Hydra saw them."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return {"task": list(hc.overrides.task), "hydra": list(hc.overrides.hydra),
                "sources": OmegaConf.to_container(hc.runtime.config_sources),
                "choices": OmegaConf.to_container(hc.runtime.choices), "cwd": hc.runtime.cwd}
    saved = run_dir / ".hydra" / "overrides.yaml"
    if saved.is_file():  # written by Hydra at job start; the runtime may be gone (e.g. train() called directly)
        return {"task": list(OmegaConf.load(saved)), "hydra": [], "sources": [], "choices": {}, "cwd": None}
    return {}


def reproduce_args(hydra: dict[str, Any]) -> list[str]:
    """The `tformer train` arguments that rebuild this run's config: user config dirs, then every override."""
    from transformer_cli.catalog import USER_PROVIDER

    args: list[str] = []
    for source in hydra.get("sources", []):
        if source.get("provider") == USER_PROVIDER:
            args += ["--config-dir", str(source["path"])]
    args += [o for o in hydra.get("hydra", []) if o.startswith("hydra.searchpath=")]
    args += [o for o in hydra.get("task", []) if o.lstrip("+~").split("=")[0] not in NOT_REPRODUCED]
    return args


def reproduce_command(hydra: dict[str, Any]) -> str:
    """The reproduce command as one shell line."""
    return " ".join(["tformer", "train", *(shlex.quote(a) for a in reproduce_args(hydra))])


# ----------------------------------------------------------------------------- sections


def _title(run_dir: Path, cfg: DictConfig, summary: dict[str, Any]) -> str:
    """The heading and a one-sentence outcome."""
    best = summary.get("best_value")
    shown = f"{best:.4f}" if isinstance(best, float) else str(best)
    return (f"# Run card: {run_dir.name}\n\n"
            f"{cfg.task.name} / {cfg.loss.name} on {_data_name(cfg)}: best validation {summary.get('monitor')} "
            f"= {shown} at step {summary.get('best_step')} of {summary.get('steps')} ({summary.get('stop_reason')}).")


def _what(cfg: DictConfig, summary: dict[str, Any], hydra: dict[str, Any]) -> str:
    """Task, data, tokenizer, model size, loss, optimizer, schedule and length of training."""
    m = cfg.model
    sizes = summary.get("examples", {})
    rows = [
        ("task", f"`{cfg.task.name}` {_options(cfg.task)}"),
        ("data", f"{_data_name(cfg)}; examples {', '.join(f'{k} {v:,}' for k, v in sizes.items())}"),
        ("tokenizer", f"{cfg.data.tokenizer.kind}, vocabulary {summary.get('vocab_size')}, "
                      f"max length {cfg.data.tokenizer.max_length}"),
        ("model", f"d_model {m.d_model}, {_count(m.n_layers, 'layer')}, {_count(m.n_heads, 'head')}, "
                  f"d_ff {m.d_ff}, {m.norm}-norm, {m.positional} positions; "
                  f"{summary.get('parameters', 0):,} parameters"),
        ("loss", f"`{cfg.loss.name}` {_options(cfg.loss)}"),
        ("optimizer", f"`{cfg.optim.name}` {_options(cfg.optim)}"),
        ("schedule", f"`{cfg.schedule.name}` {_options(cfg.schedule)}"),
        ("training", f"{summary.get('steps')} steps ({summary.get('epochs', 0):.2f} epochs), batch "
                     f"{cfg.trainer.batch_size} x {cfg.trainer.grad_accum} accumulation, seed {cfg.seed}, "
                     f"{summary.get('train_seconds', 0):.1f} s"),
    ]
    choices = {k: v for k, v in hydra.get("choices", {}).items() if not k.startswith("hydra/") and v is not None}
    if choices:
        rows.append(("config choices", ", ".join(f"{k}={v}" for k, v in choices.items())))
    return "## What was trained\n\n" + _table(("", ""), rows)


def _reproduce(hydra: dict[str, Any], cfg: DictConfig) -> str:
    """The command line that rebuilds this run's config, and what else a rerun depends on."""
    if not hydra:
        return ("## Reproduce\n\nThis run did not go through the `tformer` command line, so its overrides are "
                "unknown; `config.yaml` holds the full resolved config.")
    notes = []
    if hydra.get("cwd"):
        notes.append(f"Run from `{hydra['cwd']}` (relative data paths are read from there).")
    if any(o.lstrip("+~").split("=")[0] in NOT_REPRODUCED for o in hydra.get("task", [])):
        notes.append("The run was resumed from a checkpoint; the command trains from scratch.")
    if not cfg.trainer.deterministic:
        notes.append("On CPU the same command on the same machine gives the same metrics; GPU kernels may "
                     "vary from run to run (`trainer.deterministic=true` asks torch for deterministic ones).")
    return ("## Reproduce\n\nThe exact overrides of this run (`.hydra/overrides.yaml`); everything else came from "
            "the config files, and `config.yaml` holds the whole resolved config:\n\n"
            f"```bash\n{reproduce_command(hydra)}\n```\n\n" + "\n".join(f"- {n}" for n in notes))


def _results(summary: dict[str, Any]) -> str:
    """The best checkpoint's final metrics per split."""
    final = summary.get("final", {})
    if not final:
        return ""
    names = list(dict.fromkeys(k for split in final.values() for k in split if k != "count"))
    rows = [(split, *(_num(m.get(n)) for n in names), str(m.get("count", ""))) for split, m in final.items()]
    return ("## Final metrics\n\nThe best checkpoint (`checkpoints/best`, by validation "
            f"{summary.get('monitor')}) on each split:\n\n" + _table(("split", *names, "examples"), rows))


def _curves(run_dir: Path) -> str:
    """The curves plot, and where the numbers behind it are."""
    if not (run_dir / "curves.png").is_file():
        return ""
    extra = " TensorBoard: `tensorboard --logdir tensorboard`." if (run_dir / "tensorboard").is_dir() else ""
    mlflow = read_json_object(run_dir / "mlflow.json")
    if mlflow:
        extra += (f" MLflow: run `{mlflow.get('run_id')}` of experiment `{mlflow.get('experiment')}`, "
                  f"`{mlflow.get('ui')}`.")
    return f"## Curves\n\n![training and validation curves](curves.png)\n\nData: `metrics.jsonl`, `metrics.csv`.{extra}"


def _environment(summary: dict[str, Any]) -> str:
    """Versions, device, and the git commit of the code that ran."""
    env = dict(summary.get("environment", {}))
    rows = [(k, str(v)) for k, v in env.items()]
    rows += [("device", f"{summary.get('device')} ({summary.get('precision')})")]
    if str(summary.get("device", "")).startswith("cuda"):
        import torch

        rows.append(("gpu", torch.cuda.get_device_name()))
    source = Path(__file__).parent  # the package's own directory
    rows.append(("tformer source", git_state(source, must_track=source / "__init__.py") or "not a git checkout"))
    cwd_state = git_state(Path.cwd())
    if cwd_state and cwd_state != git_state(source):
        rows.append(("working directory", cwd_state))
    return "## Environment\n\n" + _table(("", ""), rows)


def _data(cfg: DictConfig) -> str:
    """The data files read, with their sizes and sha256."""
    rows = data_fingerprints(cfg.data)
    if not rows:
        return (f"## Data\n\n{_data_name(cfg)}: a hub dataset, identified by its name and configuration "
                "(no local files to fingerprint).")
    cells = [(split, f"`{path}`", "" if size is None else f"{size:,}", f"`{digest}`")
             for split, path, size, digest in rows]
    header = ("split", "file", "bytes", "sha256")
    return "## Data\n\nThe files this run read, with their sha256:\n\n" + _table(header, cells)


def _files(run_dir: Path) -> str:
    """What else the run directory holds."""
    known = {
        "config.yaml": "the resolved config", "summary.json": "every number above, and per-class details",
        "metrics.jsonl": "one JSON line per training, evaluation and final record",
        "metrics.csv": "the same records as a table", "curves.png": "loss and monitored metric against steps",
        "checkpoints": "`best/` and `last/`: self-describing checkpoints (`tformer eval ckpt=<this dir>`)",
        "tensorboard": "TensorBoard event files", "mlflow.json": "the MLflow run this run logs to",
        "train.log": "the log", ".hydra": "Hydra's own record",
    }
    rows = [(f"`{name}`", what) for name, what in known.items() if (run_dir / name).exists()]
    return "## Files\n\n" + _table(("file", "what"), rows)


# ----------------------------------------------------------------------------- facts gathered here


def data_fingerprints(data: Any) -> list[tuple[str, str, int | None, str]]:
    """(split, path, size, sha256) of each data file a built-in or local dataset reads; [] for hub data."""
    from transformer_cli.data.loading import data_files

    if data.source == "hub":
        return []
    try:
        files = data_files(data)
    except TformerError as err:  # the files moved since training: say so rather than fail the run
        log.warning("run card: cannot fingerprint the data: %s", err.message)
        return []
    out = []
    for split, name in files.items():
        path = Path(name)
        if path.is_file():
            out.append((split, str(path.resolve()), path.stat().st_size, sha256_file(path)))
        else:
            out.append((split, str(path.resolve()), None, "missing now"))
    return out


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_state(directory: Path, must_track: Path | None = None) -> str | None:
    """`<commit>` (plus a note when there are uncommitted changes) of the git checkout holding `directory`.

    With `must_track`, only when git tracks that file: a package installed into a virtual environment that
    happens to sit inside some repository is not that repository's code."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    if not directory.is_dir() or git("rev-parse", "--is-inside-work-tree") != "true":
        return None
    if must_track is not None and git("ls-files", "--error-unmatch", str(must_track)) is None:
        return None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return "a git checkout with no commit yet"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}" + (" (with uncommitted changes)" if dirty else "")


# ----------------------------------------------------------------------------- formatting


def _data_name(cfg: DictConfig) -> str:
    """The dataset in a few words."""
    d = cfg.data
    if d.source == "local":
        files = [getattr(d, split) for split in ("train", "validation", "test") if getattr(d, split)]
        return "local files " + ", ".join(f"`{f}`" for f in files)
    return f"{d.source} dataset `{d.name}`" + (f" ({d.hub_config})" if d.get("hub_config") else "")


def _options(node: Any) -> str:
    """A config group's settings besides its name, as `key=value` pairs."""
    items = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}
    return "(" + ", ".join(f"{k}={v}" for k, v in items.items()) + ")" if items else ""


def _num(value: Any) -> str:
    """A metric cell: four decimals for floats."""
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; pipes inside cells are escaped."""
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(tuple("---" for _ in header)), *(line(r) for r in rows)])


def _count(n: int, noun: str) -> str:
    """'1 layer', '2 layers'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
