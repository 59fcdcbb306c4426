"""The config catalog: `tformer ls` lists every group and option, `tformer cp` copies one to start your own.

Options come from the shipped `conf/` and from a user's config directories (`--config-dir DIR`, repeatable).
A user directory is searched before the shipped one, so `DIR/model/small.yaml` replaces the shipped
`model=small` and `DIR/data/reviews.yaml` adds `data=reviews`. Hydra itself would search a `--config-dir`
after the shipped configs (extend only); the search path plugin here puts it first.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError

USER_PROVIDER = "tformer --config-dir"  # the provider name of user directories in Hydra's search path
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
SHIPPED = "shipped"

USAGE_LS = """usage: tformer ls [GROUP ...] [--config-dir DIR]

List every config group and option with its description (the first comment line of its YAML).
GROUP limits the list (e.g. `tformer ls model loss`). Options from --config-dir are listed first and marked."""

USAGE_CP = """usage: tformer cp GROUP/OPTION DEST [--config-dir DIR] [--force]

Copy one config to start your own. DEST ending in .yaml is the file to write; any other DEST is a config
directory, and the copy goes to DEST/GROUP/OPTION.yaml. Then: tformer train --config-dir DIR GROUP=NAME."""


@dataclass(frozen=True)
class Option:
    """One selectable YAML: `group=name` on the command line (group '' for a command's primary config)."""

    group: str  # e.g. "model", "hydra/launcher"; "" for train.yaml, eval.yaml, ...
    name: str
    path: Path
    description: str
    source: str  # "shipped", or the user directory it comes from
    replaces_shipped: bool = False

    @property
    def key(self) -> str:
        """`group/name`, or just `name` for a primary config."""
        return f"{self.group}/{self.name}" if self.group else self.name


def describe(path: Path) -> str:
    """The first comment line of a YAML file that is not a `# @package` directive ('' if none)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            continue
        if not text.startswith("#"):
            return ""
        body = text.lstrip("#").strip()
        if body and not body.startswith("@package"):
            return body
    return ""


def options(user_dirs: Sequence[Path] = ()) -> list[Option]:
    """Every option in the user directories (first wins) and the shipped configs, sorted by group and name."""
    found: dict[str, Option] = {}
    for root, source in [*((Path(d), str(d)) for d in user_dirs), (conf_dir(), SHIPPED)]:
        for path in sorted(root.rglob("*.yaml")):
            rel = path.relative_to(root)
            if any(part.startswith((".", "_")) for part in rel.parts):
                continue
            group = rel.parent.as_posix() if rel.parent != Path(".") else ""
            opt = Option(group, rel.stem, path, describe(path), source)
            if opt.key in found:
                if source == SHIPPED and found[opt.key].source != SHIPPED:
                    found[opt.key] = _replacing(found[opt.key])
                continue
            found[opt.key] = opt
    return sorted(found.values(), key=lambda o: (o.group, o.name))


def _replacing(opt: Option) -> Option:
    """The same option, marked as replacing a shipped one."""
    return Option(opt.group, opt.name, opt.path, opt.description, opt.source, replaces_shipped=True)


def find(key: str, user_dirs: Sequence[Path] = ()) -> Option:
    """The option named `group/name` (or `group=name`), or a clear error with the closest names."""
    key = key.replace("=", "/").strip("/").removesuffix(".yaml")
    every = options(user_dirs)
    for opt in every:
        if opt.key == key:
            return opt
    close = difflib.get_close_matches(key, [o.key for o in every], n=3)
    groups = sorted({o.group for o in every if o.group})
    hint = f"did you mean {' or '.join(close)}?" if close else f"groups: {', '.join(groups)}; `tformer ls` lists all"
    raise TformerError(f"no config option '{key}'", hint=hint)


# ----------------------------------------------------------------------------- user config directories


class UserConfigDirs(SearchPathPlugin):
    """Puts the user's config directories in Hydra's search path before the shipped configs."""

    dirs: ClassVar[list[str]] = []

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Insert each directory, in the order given, just before the shipped ('main') configs."""
        for d in self.dirs:
            search_path.prepend(provider=USER_PROVIDER, path=f"file://{d}", anchor=SearchPathQuery(provider="main"))


def take_config_dirs(args: list[str]) -> tuple[list[str], list[Path]]:
    """Split `--config-dir DIR` / `-cd DIR` / `--config-dir=DIR` out of a command line; check each exists."""
    rest: list[str] = []
    dirs: list[Path] = []
    it = iter(args)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            if not eq:
                value = next(it, "")
            if not value:
                raise TformerError(f"{flag} needs a directory", hint=f"{flag} path/to/my_configs")
            dirs.append(_config_dir(value))
        else:
            rest.append(arg)
    return rest, dirs


def _config_dir(value: str) -> Path:
    """An existing config directory, absolute."""
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise TformerError(f"config directory {path} does not exist",
                           hint="create it, e.g. `tformer cp data/local myconf/data/mine.yaml`")
    return path


def use_config_dirs(args: list[str]) -> list[str]:
    """Take the config directories out of `args` and have Hydra search them first; returns the rest."""
    from hydra.core.plugins import Plugins

    rest, dirs = take_config_dirs(args)
    UserConfigDirs.dirs = [str(d) for d in dirs]
    if dirs:
        Plugins.instance().register(UserConfigDirs)
    return rest


# ----------------------------------------------------------------------------- commands


def ls_command(args: list[str]) -> int:
    """`tformer ls [GROUP ...] [--config-dir DIR]`: print groups, options and descriptions."""
    if any(a in ("-h", "--help") for a in args):
        print(USAGE_LS)
        return 0
    rest, dirs = take_config_dirs(args)
    every = options(dirs)
    groups = sorted({o.group for o in every})
    wanted = [g.strip("/") for g in rest]
    for g in wanted:
        if g not in groups:
            close = difflib.get_close_matches(g, [x for x in groups if x], n=1)
            raise TformerError(f"no config group '{g}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                               hint=f"groups: {', '.join(x for x in groups if x)}")
    print(render_ls(every, wanted, dirs))
    return 0


def render_ls(every: list[Option], wanted: Sequence[str] = (), user_dirs: Sequence[Path] = ()) -> str:
    """The listing: one block per group (`tformer train GROUP=OPTION`), primary configs last."""
    width = max((len(o.name) for o in every), default=0) + 2
    lines: list[str] = []
    order = sorted({o.group for o in every}, key=lambda g: (g == "", g))
    for group in order:
        if wanted and group not in wanted:
            continue
        title = f"{group}  (tformer train {group}=<option>)" if group else "commands  (tformer <command>: its config)"
        lines.append(title)
        for o in (o for o in every if o.group == group):
            mark = "" if o.source == SHIPPED else ("  [yours, replaces shipped]" if o.replaces_shipped else "  [yours]")
            lines.append(f"  {o.name:<{width}}{o.description or '(no description)'}{mark}")
        lines.append("")
    if user_dirs:
        lines.append("yours: from " + ", ".join(str(d) for d in user_dirs))
    lines.append("copy one to start your own: tformer cp <group>/<option> <your config dir>/<group>/<name>.yaml")
    return "\n".join(lines)


def cp_command(args: list[str]) -> int:
    """`tformer cp GROUP/OPTION DEST [--config-dir DIR] [--force]`: copy one config file."""
    if any(a in ("-h", "--help") for a in args):
        print(USAGE_CP)
        return 0
    rest, dirs = take_config_dirs(args)
    force = "--force" in rest or "-f" in rest
    rest = [a for a in rest if a not in ("--force", "-f")]
    if len(rest) != 2:
        raise TformerError(f"tformer cp takes a config and a destination, got {len(rest)} argument(s)",
                           hint="tformer cp experiment/quick myconf/experiment/mine.yaml")
    opt = find(rest[0], dirs)
    dest = copy_option(opt, Path(rest[1]), force)
    print(f"copied {opt.key} ({opt.path}) to {dest}")
    print(next_step(opt, dest))
    return 0


def copy_option(opt: Option, dest: Path, force: bool = False) -> Path:
    """Copy an option's YAML to `dest` (a .yaml file, or a config directory that gets GROUP/NAME.yaml)."""
    target = dest if dest.suffix in (".yaml", ".yml") else dest / opt.group / f"{opt.name}.yaml"
    if target.exists() and not force:
        raise TformerError(f"{target} already exists", hint="choose another name, or pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(opt.path, target)
    defaults = schema_defaults(opt.path, opt.group)
    if defaults:
        with target.open("a", encoding="utf-8") as f:
            f.write(defaults)
    return target


def schema_defaults(path: Path, group: str) -> str:
    """The settings a group option may change that its YAML leaves at their defaults, as YAML comments.

    Each default lives in one place, the schema's dataclass; a copy lists them so they are there to edit."""
    import yaml
    from omegaconf import OmegaConf

    from transformer_cli.validate import schema_of

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    schema = schema_of(group, doc.get("name") if isinstance(doc, dict) else None)
    if schema is None:
        return ""
    settings = OmegaConf.to_container(OmegaConf.structured(schema))
    unset = {k: v for k, v in settings.items() if k not in doc and k != "name"}
    if not unset:
        return ""
    lines = OmegaConf.to_yaml(unset).rstrip().splitlines()
    return ("\n# The other settings and their defaults (from tformer's schema): uncomment a line to change it.\n"
            + "".join(f"# {line}\n" for line in lines))


def next_step(opt: Option, target: Path) -> str:
    """How to use the copy: the --config-dir and override that select it."""
    target = target.resolve()
    depth = len(Path(opt.group).parts) if opt.group else 0
    root = target.parents[min(depth, len(target.parents) - 1)]
    if target.parent.relative_to(root).as_posix() != (opt.group or "."):
        where = f"<config dir>/{opt.group}/" if opt.group else "<config dir>/"
        return f"next: move it to {where}{target.name}, edit it, then: tformer train --config-dir <config dir> ..."
    select = f"{opt.group}={target.stem}" if opt.group else f"(it replaces the {target.stem} command's config)"
    same = " (your copy replaces the shipped one of that name)" if opt.group and target.stem == opt.name else ""
    return f"next: edit it, then: tformer train --config-dir {root} {select}{same}"
