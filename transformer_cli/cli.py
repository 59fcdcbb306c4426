"""The `tformer` entry point: picks a subcommand and hands the rest of the line to its Hydra app."""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from transformer_cli.config import conf_dir, register_schemas
from transformer_cli.errors import Preempted, TformerError

USAGE = """usage: tformer <command> [hydra overrides] [hydra flags]

commands:
  train   train a model:            tformer train task=classify loss=ce model=small
  eval    evaluate a checkpoint:    tformer eval ckpt=outputs/train/<date>/<time>

Every command takes Hydra overrides (key=value, group=option, +key=value) and flags
(--help, --cfg job, -m for sweeps). `tformer train --help` lists the config groups.
Set TFORMER_TRACEBACK=1 to see full tracebacks for errors.
"""

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; resume to continue


def _train(cfg: DictConfig) -> float:
    """Hydra task function of `tformer train`."""
    from transformer_cli.run import train

    return _guard(lambda: train(cfg, _run_dir()))


def _eval(cfg: DictConfig) -> Any:
    """Hydra task function of `tformer eval`."""
    from transformer_cli.run import evaluate

    return _guard(lambda: evaluate(cfg, _run_dir()))


# Commands whose arguments are Hydra overrides: name -> (config name in conf/, task function).
COMMANDS: dict[str, Callable[[DictConfig], Any]] = {"train": _train, "eval": _eval}

# Commands with their own plain arguments: name -> function taking the argument list, returning an exit code.
PLAIN_COMMANDS: dict[str, Callable[[list[str]], int]] = {}


def _run_dir() -> Path:
    """This job's Hydra output directory."""
    return Path(HydraConfig.get().runtime.output_dir)


def _guard(job: Callable[[], Any]) -> Any:
    """Run a job; a user's mistake becomes a clear message and exit status 2, not a traceback."""
    try:
        return job()
    except TformerError as err:
        if os.environ.get("TFORMER_TRACEBACK"):
            raise
        report_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Preempted as stop:
        Console(stderr=True, highlight=False).print(
            f"[yellow]{stop}[/]: checkpoint {stop.checkpoint}\n"
            "resume with the same command plus resume=auto and the same hydra.run.dir (or resume=<run dir>)")
        raise SystemExit(EXIT_PREEMPTED) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        raise SystemExit(130) from None


def report_error(err: TformerError) -> None:
    """Print an error and its hint to stderr."""
    console = Console(stderr=True, highlight=False)
    console.print(f"[bold red]error:[/] {err.message}", markup=True, soft_wrap=True)
    if err.hint:
        console.print(f"[bold]hint:[/] {err.hint}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Dispatch `tformer <command> ...` to the command's Hydra app."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else EXIT_USER_ERROR)
    command, rest = args[0], args[1:]
    if command in PLAIN_COMMANDS:
        raise SystemExit(_guard(lambda: PLAIN_COMMANDS[command](rest)))
    if command not in COMMANDS:
        known = [*COMMANDS, *PLAIN_COMMANDS]
        close = difflib.get_close_matches(command, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        report_error(TformerError(f"unknown command '{command}'{hint}", hint=f"commands: {', '.join(known)}"))
        raise SystemExit(EXIT_USER_ERROR)
    register_schemas()
    app = hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(COMMANDS[command])
    sys.argv = [f"tformer-{command}", *rest]
    app()


if __name__ == "__main__":
    main()
