"""Shell completion for `tformer <command> ...`, on top of Hydra's own.

Hydra's completion script calls back `<program> -sc query=<shell>` with the line being typed in COMP_LINE.
Our program is `tformer`, and the Hydra app depends on the command word after it, so this module routes:
the command word itself completes to a command name; after `train` / `eval` / ..., the line minus the
command word goes to that command's Hydra app (groups, options and keys); after `cp` / `ls`, to the catalog.

Install for the current shell (bash; zsh after `autoload -U bashcompinit && bashcompinit`):
    eval "$(tformer -sc install=bash)"      # or: eval "$(tformer train -sc install=bash)"
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

SHELL_COMPLETION_FLAGS = ("-sc", "--shell-completion")


def complete(args: list[str], hydra_commands: dict[str, Callable[[list[str]], None]], commands: list[str]) -> int:
    """Handle `tformer -sc install=SHELL | uninstall=SHELL | query=SHELL`.

    `hydra_commands` maps a Hydra command to a function that runs its app with the given argv tail."""
    action = next((a for a in args if "=" in a), "")
    what, _, shell = action.partition("=")
    if what in ("install", "uninstall"):
        hydra_commands["train"](["-sc", action])  # Hydra writes the script; any command's app would do
        return 0
    if what != "query":
        print(f"usage: eval \"$(tformer -sc install=bash)\"  (got {' '.join(args)!r})", file=sys.stderr)
        return 2
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typing_command = len(words) == 1 or (len(words) == 2 and not line.endswith(" "))
    if typing_command:
        prefix = words[1] if len(words) == 2 else ""
        _print([c for c in commands if c.startswith(prefix)], shell)
        return 0
    command = words[1] if len(words) > 1 else ""
    if command in hydra_commands:
        # Hydra strips the program name (the first word) itself; drop the command word after it.
        os.environ["COMP_LINE"] = re.sub(r"^(\s*\S+\s+)" + re.escape(command), r"\1", line, count=1)
        hydra_commands[command](["-sc", action, *_config_dir_args(words)])
        return 0
    if command in ("cp", "ls"):
        _print(_catalog_words(words, line, command), shell)
    return 0


def _config_dir_args(words: list[str]) -> list[str]:
    """The complete, existing `--config-dir DIR` pairs of the line, so that your own options complete too."""
    from transformer_cli.catalog import CONFIG_DIR_FLAGS

    out = []
    for flag, value in zip(words, words[1:]):
        if flag in CONFIG_DIR_FLAGS and os.path.isdir(os.path.expanduser(value)):
            out += [flag, value]
    return out


def _catalog_words(words: list[str], line: str, command: str) -> list[str]:
    """Completions for `tformer cp <group/option>` and `tformer ls <group>`."""
    from transformer_cli.catalog import options

    args = words[2:]
    current = "" if line.endswith(" ") else (args[-1] if args else "")
    done = args if line.endswith(" ") else args[:-1]
    every = options()
    if command == "cp" and not done:
        return [o.key for o in every if o.key.startswith(current)]
    if command == "ls":
        return sorted({o.group for o in every if o.group and o.group.startswith(current)})
    return []


def _print(choices: list[str], shell: str) -> None:
    """Candidates as the shell's script expects them: space-separated (bash, zsh) or one per line (fish)."""
    print(("\n" if shell == "fish" else " ").join(choices))
