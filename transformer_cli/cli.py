"""The `tformer` entry point: picks a subcommand and hands the rest of the line to its Hydra app."""

from __future__ import annotations

import atexit
import difflib
import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from transformer_cli import sweep
from transformer_cli.catalog import use_config_dirs
from transformer_cli.completion import SHELL_COMPLETION_FLAGS, complete
from transformer_cli.config import conf_dir, register_schemas
from transformer_cli.errors import Preempted, TformerError

USAGE = """usage: tformer <command> [hydra overrides] [hydra flags]

commands:
  train   train a model:            tformer train task=classify loss=ce model=small
          on N processes (torchrun, DistributedDataParallel): tformer train --nproc N [overrides]
  eval    evaluate a checkpoint:    tformer eval ckpt=outputs/train/<date>/<time>
  predict predict new texts:        tformer predict ckpt=outputs/train/<date>/<time> input=texts.txt
  plan    check a config, count parameters, FLOPs, memory and steps, preview the schedule:
                                    tformer plan model=base trainer.grad_accum=4
  report  compare runs or a sweep:  tformer report outputs/multirun/by-loss+seed
  export  ONNX / torch.export:      tformer export ckpt=outputs/train/<date>/<time> format=onnx
  ls      list config presets:      tformer ls [group ...]
  cp      copy one to edit:         tformer cp experiment/quick myconf/experiment/mine.yaml

Every command takes Hydra overrides (key=value, group=option, +key=value) and flags
(--help, --cfg job, -m for sweeps, --config-dir DIR for your own configs). `tformer train --help` lists
the config groups. Shell completion: eval "$(tformer -sc install=bash)".
Set TFORMER_TRACEBACK=1 to see full tracebacks for errors.
"""

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; resume to continue


def _train(cfg: DictConfig) -> float:
    """Hydra task function of `tformer train`."""
    from transformer_cli.run import train

    return _guard(lambda: train(cfg, _run_dir()), sweep_cfg=cfg)


def _eval(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer eval`."""
    from transformer_cli.run import evaluate

    return _guard(lambda: evaluate(cfg, _run_dir()))


def _predict(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer predict`."""
    from transformer_cli.predict import predict

    return _guard(lambda: predict(cfg))


def _plan(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer plan` (conf/plan.yaml composes the train config)."""
    from transformer_cli.plan import plan_command

    return _guard(lambda: plan_command(cfg))


def _export(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer export`."""
    from transformer_cli.export import export

    return _guard(lambda: export(cfg, _run_dir()))


def _ls(args: list[str]) -> int:
    """`tformer ls [GROUP ...]`."""
    from transformer_cli.catalog import ls_command

    return ls_command(args)


def _cp(args: list[str]) -> int:
    """`tformer cp GROUP/OPTION DEST`."""
    from transformer_cli.catalog import cp_command

    return cp_command(args)


def _report(args: list[str]) -> int:
    """`tformer report <run or sweep dir> ...`."""
    from transformer_cli.report import report_command

    return report_command(args)


# Commands whose arguments are Hydra overrides: name -> (config name in conf/, task function).
COMMANDS: dict[str, Callable[[DictConfig], Any]] = {"train": _train, "eval": _eval, "plan": _plan,
                                                      "predict": _predict, "export": _export}

# Commands with their own plain arguments: name -> function taking the argument list, returning an exit code.
PLAIN_COMMANDS: dict[str, Callable[[list[str]], int]] = {"report": _report, "ls": _ls, "cp": _cp}


def _run_dir() -> Path:
    """This job's Hydra output directory."""
    return Path(HydraConfig.get().runtime.output_dir)


def _guard(job: Callable[[], Any], sweep_cfg: DictConfig | None = None) -> Any:
    """Run a job; a user's mistake becomes a clear message and exit status 2, not a traceback.

    A training job inside a sweep (`sweep_cfg` given, `-m`) is skipped when its config already finished, and
    a failure is recorded in its directory instead of ending the sweep (transformer_cli/sweep.py)."""
    try:
        if sweep_cfg is not None and sweep.in_multirun():
            return sweep.run_job(job, sweep_cfg, _run_dir(), report_error)
        return job()
    except TformerError as err:
        if os.environ.get("TFORMER_TRACEBACK"):
            raise
        report_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Preempted as stop:
        how = ("rerun the same sweep command: finished jobs are skipped; add resume=auto to continue this one "
               "from its checkpoint" if sweep.in_multirun() else
               "resume with the same command plus resume=auto and the same hydra.run.dir (or resume=<run dir>)")
        if _torchrun_rank() == 0:  # under torchrun every rank stops at the same step; one message
            Console(stderr=True, highlight=False).print(f"[yellow]{stop}[/]: checkpoint {stop.checkpoint}\n{how}")
        raise SystemExit(EXIT_PREEMPTED) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        raise SystemExit(130) from None


def report_error(err: TformerError) -> None:
    """Print an error and its hint to stderr."""
    console = Console(stderr=True, highlight=False)
    rank = f"(rank {_torchrun_rank()}) " if _torchrun_world() > 1 else ""
    console.print(f"[bold red]error:[/] {rank}{err.message}", markup=True, soft_wrap=True)
    if err.hint:
        console.print(f"[bold]hint:[/] {err.hint}", soft_wrap=True)


# Hydra flags that change where configs come from: a precheck against the shipped configs would mislead.
CONFIG_SOURCE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "hydra.searchpath")


def precheck_overrides(command: str, args: list[str]) -> None:
    """Compose the config once before Hydra does, to turn a mistake into a clear message with a suggestion."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException

    if any(a.split("=")[0] in CONFIG_SOURCE_FLAGS or a.startswith("hydra.searchpath") for a in args):
        return
    candidates = [a for a in args if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra.")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except OverrideParseException:
        return  # Hydra reports malformed overrides itself
    single = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose(command, overrides=single)
    except ConfigCompositionException as err:
        report_error(TformerError(_composition_message(err), hint=_suggestion(command, err, single)))
        raise SystemExit(EXIT_USER_ERROR) from None


def _composition_message(err: Exception) -> str:
    """Hydra's message, plus OmegaConf's reason when it is the informative part."""
    cause = err.__cause__
    first = str(err).splitlines()[0]
    if cause is not None and getattr(cause, "full_key", None):
        reason = str(cause).splitlines()[0]
        return f"{first} {reason}"
    text = str(err).split("Config search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].startswith("Available"):
        wanted = lines[0].rsplit("/", 1)[-1].strip("'")
        close = difflib.get_close_matches(wanted, lines[2:], n=1)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        return f"{lines[0]} (available: {', '.join(lines[2:])}){guess}"
    return lines[0]


def _suggestion(command: str, err: Exception, overrides: list[str]) -> str | None:
    """'did you mean ...' for an unknown key, from the keys that exist next to it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not getattr(cause, "full_key", None):
        return None
    full_key = str(cause.full_key)
    parent, _, leaf = full_key.rpartition(".")
    rest = [o for o in overrides if o.lstrip("+~").split("=")[0] != full_key]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(command, overrides=rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = [str(k) for k in node.keys()] if node is not None else []
    except Exception:  # the rest of the overrides may be broken too; no suggestion then
        return None
    close = difflib.get_close_matches(leaf, keys, n=1)
    if close:
        return f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"keys under {parent or 'the top level'}: {', '.join(keys)}"


def main(argv: list[str] | None = None) -> None:
    """Dispatch `tformer <command> ...` to the command's Hydra app."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else EXIT_USER_ERROR)
    command, rest = args[0], args[1:]
    if command in SHELL_COMPLETION_FLAGS:  # Hydra's completion script calls back `tformer -sc query=bash`
        raise SystemExit(complete(rest, {c: partial(_complete_app, c) for c in COMMANDS},
                                  [*COMMANDS, *PLAIN_COMMANDS]))
    if command in PLAIN_COMMANDS:
        raise SystemExit(_guard(lambda: PLAIN_COMMANDS[command](rest)))
    if command not in COMMANDS:
        known = [*COMMANDS, *PLAIN_COMMANDS]
        close = difflib.get_close_matches(command, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        report_error(TformerError(f"unknown command '{command}'{hint}", hint=f"commands: {', '.join(known)}"))
        raise SystemExit(EXIT_USER_ERROR)
    refuse_code_paths(rest)
    if command == "train":
        rest = launch_distributed(rest)
    elif _torchrun_world() > 1:
        report_error(TformerError(f"tformer {command} runs in one process; only train runs under torchrun",
                                  hint=f"run `tformer {command} ...` without torchrun"))
        raise SystemExit(EXIT_USER_ERROR)
    register_schemas()
    if not set(SHELL_COMPLETION_FLAGS) & set(rest):  # in `tformer train -sc install=bash`, no overrides
        precheck_overrides(command, rest)
    sweep.register_resolvers()
    if command == "train":
        rest = sweep.with_default_sweep_dir(rest)
    run_app(command, rest)


NPROC_FLAGS = ("--nproc", "--nproc-per-node", "--nproc_per_node")


def launch_distributed(args: list[str]) -> list[str]:
    """`--nproc N`: hand the line to torchrun on this node (no return). Under torchrun: this rank's overrides.

    Rank 0 writes the one run directory; the other ranks get a throwaway Hydra directory and learn rank 0's
    from it (transformer_cli/distributed.py)."""
    nproc, rest = _pop_nproc(args)
    if nproc is not None:
        if nproc < 1:
            report_error(TformerError(f"--nproc {nproc}: need at least one process"))
            raise SystemExit(EXIT_USER_ERROR)
        _refuse_sweep(rest)
        register_schemas()
        precheck_overrides("train", rest)  # a config mistake: one message and exit 2, before any process starts
        os.execve(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc-per-node={nproc}", "-m", "transformer_cli", "train", *rest],
                  torchrun_env(os.environ))
    if not _torchrun_world() > 1:
        return rest
    _refuse_sweep(rest)
    if _torchrun_rank() == 0:
        return rest
    scratch = tempfile.mkdtemp(prefix=f"tformer-rank{_torchrun_rank()}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    # First, so that a trailing Hydra flag (--cfg job, -cn name) keeps its value; the user's own values of
    # these keys are dropped (rank 0 keeps them), since a later override would win.
    mine = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    kept = [a for a in rest if not a.lstrip("+").startswith(mine)]
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=stdout", *kept]


# Set for `tformer train --nproc` (environment values win): torchrun forwards SIGUSR1 too (cluster
# schedulers' warning signal, which tformer treats like SIGTERM) and gives workers 5 minutes to finish the
# step, an evaluation and the checkpoint before SIGKILL (torchrun's default is 30 s).
TORCHRUN_ENV = {"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}


def torchrun_env(environ: Any) -> dict[str, str]:
    """The environment for torchrun: TORCHRUN_ENV under the caller's own settings."""
    return {**TORCHRUN_ENV, **environ}


def _refuse_sweep(args: list[str]) -> None:
    """A sweep is many trainings: it cannot be one torchrun job."""
    if any(a in ("-m", "--multirun") or a.lstrip("+") == "hydra.mode=MULTIRUN" for a in args):
        report_error(TformerError("a sweep (-m) cannot run under torchrun: each training is one torchrun job",
                                  hint="sweep without torchrun (launcher=slurm or ray puts jobs on other machines), "
                                  "or run one training per torchrun"))
        raise SystemExit(EXIT_USER_ERROR)


def _torchrun_world() -> int:
    """WORLD_SIZE from torchrun's environment (1 without it); read here without importing torch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _torchrun_rank() -> int:
    """RANK from torchrun's environment (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def _pop_nproc(args: list[str]) -> tuple[int | None, list[str]]:
    """The value of `--nproc N` / `--nproc=N` (None without it) and the other arguments."""
    rest, nproc, i = [], None, 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in NPROC_FLAGS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            try:
                nproc = int(value)
            except ValueError:
                report_error(TformerError(f"{flag} needs a number of processes, got '{value}'",
                                          hint="e.g. tformer train --nproc 2"))
                raise SystemExit(EXIT_USER_ERROR) from None
        else:
            rest.append(args[i])
        i += 1
    return nproc, rest


def refuse_code_paths(args: list[str]) -> None:
    """No override, not even of Hydra's own node (callbacks, launchers), may name code to import or call."""
    for arg in args:
        if any(marker in arg for marker in ("_target_", "_partial_", "_args_")):
            report_error(TformerError(f"'{arg}': tformer never imports or calls code named on the command line",
                                      hint="choose components by name (e.g. loss=focal, launcher=joblib)"))
            raise SystemExit(EXIT_USER_ERROR)


def run_app(command: str, rest: list[str]) -> None:
    """Run a command's Hydra app on the rest of the command line, searching --config-dir first."""
    rest = _guard(lambda: use_config_dirs(rest))
    app = hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(COMMANDS[command])
    sys.argv = ["tformer", *rest]  # Hydra names the program after argv[0] in --help and shell completion
    app()


def _complete_app(command: str, rest: list[str]) -> None:
    """A command's Hydra app answering a shell completion request."""
    register_schemas()
    sweep.register_resolvers()
    run_app(command, rest)


if __name__ == "__main__":
    main()
