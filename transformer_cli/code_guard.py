"""No config names code: the config is composed and checked, Hydra's own nodes included, before Hydra acts on it.

Hydra instantiates `_target_` nodes (callbacks, launcher, sweeper, sampler) and hands `hydra.hydra_logging` and
`hydra.job_logging` to `logging.config.dictConfig`, which imports a `class`, calls a `()` and imports an
`ext://` module. tformer composes the config first, as its Hydra app will, and refuses each such key or value
that the shipped configs do not produce at the same place with the same value. tformer's sweep callback,
Hydra's logging presets and the launcher / sweeper plugins picked through config groups (launcher=joblib,
hparams_search=classify, hydra/job_logging=disabled) are what the shipped configs produce, so they pass; the
same key written in a user's file or override, or a shipped key given another value, does not.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError

# Keys whose value names code: Hydra's instantiate keys, logging.config.dictConfig's factory keys, and the
# Optuna sweeper's dotted path to a search-space function.
CODE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_args_", "class", "()", "custom_search_space"})

HINT = ("remove it: components are chosen by name (loss=focal, launcher=joblib, hparams_search=classify, "
        "hydra/job_logging=disabled)")


def check_command_line(command: str, args: list[str]) -> DictConfig | None:
    """Refuse a Hydra command line (with the user's config directories in place) whose config names code.

    Returns the composed config when the line runs one job (None for a sweep, --cfg, --help, --info, or a line
    Hydra will reject itself), for the caller's own checks."""
    from hydra._internal.utils import get_args_parser
    from hydra.types import RunMode

    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit:
        return None  # Hydra rejects the same line itself, before composing anything
    if parsed.shell_completion:
        return None
    if parsed.experimental_rerun is not None:
        raise TformerError("--experimental-rerun loads a pickle, which can run code; tformer refuses it",
                           hint="rerun with the same overrides (the run's .hydra/overrides.yaml)")
    if parsed.config_path is not None:
        raise TformerError(f"--config-path {parsed.config_path}: tformer reads configs from its package and "
                           "--config-dir only (a pkg:// path imports a package, which can run code)",
                           hint="add your own with --config-dir DIR")
    name = parsed.config_name or command
    _refuse_package_searchpath(name, parsed.overrides)
    with _composer() as hydra:
        cfg = _compose(hydra, name, parsed.overrides)
        if cfg is None:
            return None  # a composition error: Hydra reports it itself before acting on any node
        _check(cfg, "the config")
        if parsed.multirun or OmegaConf.select(cfg, "hydra.mode", default=None) == RunMode.MULTIRUN:
            _check_sweep(hydra, name, parsed.overrides, cfg)
            return None
    shows = parsed.cfg or parsed.help or parsed.hydra_help or parsed.info
    return None if shows else cfg


# ----------------------------------------------------------------------------- composing as the app does


@contextlib.contextmanager
def _composer(shipped_only: bool = False) -> Iterator[Any]:
    """A Hydra instance with the app's config search path (user directories first, unless `shipped_only`)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from transformer_cli.catalog import UserConfigDirs

    saved_dirs = UserConfigDirs.dirs
    if shipped_only:
        UserConfigDirs.dirs = []
    saved_hydra = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    try:
        GlobalHydra.instance().clear()
        yield Hydra.create_main_hydra2(task_name="tformer", config_search_path=create_config_search_path(str(conf_dir())))
    finally:
        UserConfigDirs.dirs = saved_dirs
        GlobalHydra.instance().clear()
        if saved_hydra is not None:
            GlobalHydra.instance().initialize(saved_hydra)


def _compose(hydra: Any, name: str, overrides: list[str]) -> DictConfig | None:
    """The config with Hydra's node, as a multirun composes it (sweep values not yet expanded); None on error."""
    from hydra.types import RunMode

    try:
        return hydra.compose_config(name, overrides, run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False)
    except Exception:  # noqa: BLE001 - any composition error is Hydra's to report, before it acts on a node
        return None


def _refuse_package_searchpath(name: str, overrides: list[str]) -> None:
    """A `pkg://` entry in hydra.searchpath imports that package while Hydra composes; refuse it first."""
    from transformer_cli.catalog import UserConfigDirs

    entries = [a for a in overrides if a.lstrip("+~").startswith("hydra.searchpath")]
    for root in UserConfigDirs.dirs:
        primary = Path(root) / f"{name}.yaml"
        if primary.is_file():
            entries.append(str(OmegaConf.select(OmegaConf.load(primary), "hydra.searchpath", default="")))
            break
    for entry in entries:
        if "pkg://" in entry:
            raise TformerError(f"hydra.searchpath names a Python package ({entry}); importing it can run code",
                               hint="add config directories with --config-dir DIR")


# ----------------------------------------------------------------------------- what the config names


def occurrences(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every code key, `ext://` value and interpolation in a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}{key}"
            if str(key) in CODE_KEYS:
                yield child, value
            else:
                yield from occurrences(value, child + ".")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from occurrences(value, f"{path}{i}.")
    elif isinstance(node, str) and (node.startswith("ext://") or "${" in node):
        yield path.rstrip("."), node


def _check(cfg: DictConfig, where: str) -> None:
    """Fail on the first code key, `ext://` value or container-making interpolation the shipped configs lack."""
    allowed = _shipped(cfg)
    for path, value in occurrences(OmegaConf.to_container(cfg, resolve=False)):
        if (path, _frozen(value)) in allowed:
            continue
        code_key = path.rsplit(".", 1)[-1] in CODE_KEYS
        if not code_key and isinstance(value, str) and "${" in value and not value.startswith("ext://"):
            _check_resolved(cfg, path, where)
            continue
        raise TformerError(f"{where} names code at '{path}' ({value!r}): tformer never imports or calls code "
                           "named in a config", hint=HINT)


def _check_resolved(cfg: DictConfig, path: str, where: str) -> None:
    """An interpolation inside Hydra's node may resolve to a node or `ext://` string; check what it gives."""
    if not path.startswith("hydra."):
        return  # tformer never instantiates its own nodes; only a literal code key there is refused
    try:
        value = OmegaConf.select(cfg, path, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - unresolvable here: Hydra fails on it too, before using the value
        return
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    for inner, found in occurrences({path: value} if not isinstance(value, str) else value):
        raise TformerError(f"{where} names code at '{inner or path}' ({found!r}) through an interpolation: tformer "
                           "never imports or calls code named in a config", hint=HINT)


def _frozen(value: Any) -> Any:
    """A hashable copy of a plain value (lists and dicts as tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


_SHIPPED: dict[tuple[tuple[str, str], ...], frozenset[tuple[str, Any]]] = {}


def _shipped(cfg: DictConfig) -> frozenset[tuple[str, Any]]:
    """What the shipped configs name at each place, for the same choices of Hydra's own groups as `cfg`."""
    name = str(OmegaConf.select(cfg, "hydra.job.config_name", default="train"))
    choices = ((".", name), *sorted((str(g), str(o)) for g, o in OmegaConf.select(cfg, "hydra.runtime.choices",
                                                                                  default={}).items()
                                    if str(g).startswith("hydra/") and o is not None))
    if choices not in _SHIPPED:
        with _composer(shipped_only=True) as hydra:
            loader = hydra.config_loader
            chosen = [f"{g}={o}" for g, o in choices[1:] if o in loader.get_group_options(g)]
            reference = _compose(hydra, name, chosen) or _compose(hydra, name, []) or OmegaConf.create()
        plain = OmegaConf.to_container(reference, resolve=False)
        _SHIPPED[choices] = frozenset((p, _frozen(v)) for p, v in occurrences(plain))
    return _SHIPPED[choices]


# ----------------------------------------------------------------------------- a sweep's jobs


def _check_sweep(hydra: Any, name: str, overrides: list[str], cfg: DictConfig) -> None:
    """Each job of a sweep composes its own config: check every value a swept key or group can take."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    lines = [*(f"{k}={v}" for k, v in (params or {}).items()), *overrides]
    try:
        parsed = parser.parse_overrides(lines)
    except Exception:  # noqa: BLE001 - the sweeper rejects a malformed value itself before running a job
        return
    fixed = [o.input_line for o in parsed[len(params or {}):] if not o.is_sweep_override()]
    for override in (o for o in parsed if o.is_sweep_override()):
        key = override.key_or_group
        for value in _sweep_values(hydra, override):
            line = f"{override.get_key_element()}={value}"
            if set(key.replace("/", ".").split(".")) & CODE_KEYS:
                raise TformerError(f"the sweep value '{line}' names code: tformer never imports or calls code "
                                   "named in a config", hint=HINT)
            if _may_name_code(hydra, key, value):
                job = _compose(hydra, name, [*fixed, line])
                if job is not None:
                    _check(job, f"the sweep value '{line}'")


def _sweep_values(hydra: Any, override: Any) -> list[str]:
    """The values a swept override takes, as override strings (an interval's ends: numbers name no code)."""
    from hydra.core.override_parser.types import ValueType

    if override.is_interval_sweep():
        return []
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return list(override.value().filter(hydra.config_loader.get_group_options(override.key_or_group)))
    return list(override.sweep_string_iterator())


def _may_name_code(hydra: Any, key: str, value: str) -> bool:
    """Whether a job's value can bring a code key: Hydra's node, a config group, or a mapping or list value."""
    return (key.startswith("hydra") or value.lstrip().startswith(("{", "["))
            or bool(hydra.config_loader.get_group_options(key)))
