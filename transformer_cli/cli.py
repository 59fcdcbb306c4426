"""The `tformer` entry point: picks a subcommand and hands the rest of the line to its Hydra app."""

from __future__ import annotations

import difflib
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from transformer_cli import sweep
from transformer_cli.allocator import tune_malloc
from transformer_cli.catalog import use_config_dirs
from transformer_cli.code_guard import check_command_line
from transformer_cli.completion import SHELL_COMPLETION_FLAGS, complete
from transformer_cli.config import conf_dir
from transformer_cli.console import plain_console, styled
from transformer_cli.errors import Preempted, TformerError
from transformer_cli.launch import launch_distributed, torchrun_rank, torchrun_world
from transformer_cli.overrides import precheck_overrides, refuse_code_paths, require_values

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

    return _guard(lambda: train(cfg, job_dir()), sweep_cfg=cfg)


def _eval(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer eval`."""
    from transformer_cli.run import evaluate

    return _guard(lambda: evaluate(cfg, job_dir()))


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

    return _guard(lambda: export(cfg, job_dir()))


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


def job_dir() -> Path:
    """This job's Hydra output directory."""
    return Path(HydraConfig.get().runtime.output_dir)


def _guard(job: Callable[[], Any], sweep_cfg: DictConfig | None = None) -> Any:
    """Run a job; a user's mistake becomes a clear message and exit status 2, not a traceback.

    A training job inside a sweep (`sweep_cfg` given, `-m`) is skipped when its config already finished, and
    a failure is recorded in its directory instead of ending the sweep (transformer_cli/sweep.py)."""
    try:
        if sweep_cfg is not None and sweep.in_multirun():
            return sweep.run_job(job, sweep_cfg, job_dir(), report_error)
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
        if torchrun_rank() == 0:  # under torchrun every rank stops at the same step; one message
            plain_console(stderr=True).print(styled((str(stop), "yellow"), f": checkpoint {stop.checkpoint}\n{how}"))
        raise SystemExit(EXIT_PREEMPTED) from None
    except MissingMandatoryValue as err:  # a required value read inside the job, e.g. a group's `???`
        if os.environ.get("TFORMER_TRACEBACK"):
            raise
        report_error(missing_value(err))
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        plain_console(stderr=True).print(styled(("interrupted", "yellow")))
        raise SystemExit(130) from None


def missing_value(err: MissingMandatoryValue) -> TformerError:
    """The user error of a required value (`???`) the job read without it being given."""
    return TformerError(f"{err.full_key}= is required", hint=f"give it on the command line: {err.full_key}=...")


def report_error(err: TformerError) -> None:
    """Print an error and its hint to stderr, as written (a path or label may hold `[...]` or `:x:`)."""
    console = plain_console(stderr=True)
    rank = f"(rank {torchrun_rank()}) " if torchrun_world() > 1 else ""
    console.print(styled(("error:", "bold red"), f" {rank}{err.message}"), soft_wrap=True)
    if err.hint:
        console.print(styled(("hint:", "bold"), f" {err.hint}"), soft_wrap=True)


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
    rest = _guard(lambda: prepare(command, rest))
    run_app(command, rest)


def prepare(command: str, rest: list[str]) -> list[str]:
    """Check a Hydra command's line before Hydra composes it; under torchrun, this rank's overrides."""
    from transformer_cli.validate import register_schemas

    if command not in COMMANDS:
        known = [*COMMANDS, *PLAIN_COMMANDS]
        close = difflib.get_close_matches(command, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TformerError(f"unknown command '{command}'{hint}", hint=f"commands: {', '.join(known)}")
    refuse_code_paths(rest)
    if command == "train":
        rest = launch_distributed(rest)
    elif torchrun_world() > 1:
        raise TformerError(f"tformer {command} runs in one process; only train runs under torchrun",
                           hint=f"run `tformer {command} ...` without torchrun")
    register_schemas()
    if not set(SHELL_COMPLETION_FLAGS) & set(rest):  # in `tformer train -sc install=bash`, no overrides
        precheck_overrides(command, rest)
    sweep.register_resolvers()
    return sweep.with_default_sweep_dir(rest) if command == "train" else rest


def run_app(command: str, rest: list[str]) -> None:
    """Run a command's Hydra app on the rest of the command line, searching --config-dir first.

    The config is composed and checked first: Hydra configures logging and instantiates callbacks, launcher
    and sweeper from it before the command's own code runs (transformer_cli/code_guard.py)."""
    rest = _guard(lambda: use_config_dirs(rest))
    _guard(lambda: check_command(command, rest))
    tune_malloc()  # before the first large tensor
    run_hydra(command, rest, COMMANDS[command])


def check_command(command: str, rest: list[str]) -> None:
    """Compose the command's config and check it (code_guard.py) and its required values, before Hydra runs.
    The Python API's train checks through here too."""
    cfg = check_command_line(command, rest)
    if cfg is not None:
        require_values(cfg, usage_line(command))


def run_hydra(command: str, rest: list[str], task_function: Callable[[DictConfig], Any]) -> None:
    """Compose the command's config from conf/ and the rest of the line, and run `task_function` on it as a
    Hydra app (its run directory, log and .hydra/ record). The Python API's train runs through here too."""
    app = hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(task_function)
    sys.argv = ["tformer", *rest]  # Hydra names the program after argv[0] in --help and shell completion
    app()


def usage_line(command: str) -> str:
    """The command's example line from USAGE, e.g. `tformer eval ckpt=outputs/train/<date>/<time>`."""
    for line in USAGE.splitlines():
        if f"tformer {command} " in line:
            return line[line.index(f"tformer {command} "):].strip()
    return f"tformer {command} [overrides]"


def _complete_app(command: str, rest: list[str]) -> None:
    """A command's Hydra app answering a shell completion request."""
    from transformer_cli.validate import register_schemas

    register_schemas()
    sweep.register_resolvers()
    run_app(command, rest)


if __name__ == "__main__":
    main()
