"""Checks of a command line before Hydra composes it: clear messages for mistakes, no code named anywhere."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig

from transformer_cli.config import conf_dir
from transformer_cli.errors import TformerError


def refuse_code_paths(args: list[str]) -> None:
    """No override, not even of Hydra's own node (callbacks, launchers), may name code to import or call."""
    for arg in args:
        if any(marker in arg for marker in ("_target_", "_partial_", "_args_")):
            raise TformerError(f"'{arg}': tformer never imports or calls code named on the command line",
                                      hint="choose components by name (e.g. loss=focal, launcher=joblib)")


def require_values(cfg: DictConfig, usage: str) -> None:
    """A top-level value the config leaves `???` (ckpt=) is named before the job starts, with the usage line.

    A group's own required values (data.train under data=local) get their group's message later."""
    from omegaconf import OmegaConf

    missing = [str(k) for k in cfg if k != "hydra" and OmegaConf.is_missing(cfg, k)]
    if missing:
        raise TformerError(f"{missing[0]}= is required", hint=f"usage: {usage}")


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
        raise TformerError(_composition_message(err), hint=_suggestion(command, err, single)) from None


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
