"""Check a value read from JSON against a type written as a Python annotation (int, str | None, list[str]...).

Used on files a checkpoint carries, so that a forged or damaged one is refused with the key that is wrong
rather than failing later with a KeyError or TypeError deep in the code that uses it.
"""

from __future__ import annotations

import types
import typing
from typing import Any


def mismatches(value: Any, spec: Any, where: str = "") -> list[str]:
    """Every place where `value` does not fit `spec`, as "key: expected X, found Y" (empty when it fits).

    `spec` is a type (int, float, str, bool, torch.Tensor, type(None)), Any, a union (X | None), list[X],
    dict[str, X], or a dict of key -> spec (a record: every key optional, no other keys allowed)."""
    if isinstance(spec, dict):
        return _record(value, spec, where)
    origin = typing.get_origin(spec)
    if origin in (types.UnionType, typing.Union):
        options = [mismatches(value, option, where) for option in typing.get_args(spec)]
        return [] if any(not found for found in options) else [_wrong(where, spec, value)]
    if origin is list:
        if not isinstance(value, list):
            return [_wrong(where, spec, value)]
        (item,) = typing.get_args(spec)
        return [m for i, v in enumerate(value) for m in mismatches(v, item, f"{where}[{i}]")][:10]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return [_wrong(where, spec, value)]
        _, item = typing.get_args(spec)
        return [m for k, v in value.items() for m in mismatches(v, item, _join(where, k))][:10]
    return [] if _is_instance(value, spec) else [_wrong(where, spec, value)]


def _record(value: Any, fields: dict[str, Any], where: str) -> list[str]:
    """A JSON object whose keys are among `fields`, each fitting its type."""
    if not isinstance(value, dict):
        return [_wrong(where, "an object", value)]
    unknown = [f"{_join(where, k)}: unexpected key" for k in value if k not in fields]
    return unknown + [m for k, v in value.items() if k in fields for m in mismatches(v, fields[k], _join(where, k))]


def _is_instance(value: Any, spec: Any) -> bool:
    """isinstance, except that a bool is not an int and an int is a float (JSON has one number type)."""
    if spec is Any:
        return True
    if spec is None or spec is type(None):
        return value is None
    if isinstance(value, bool) and spec in (int, float):
        return False
    if spec is float:
        return isinstance(value, (int, float))
    return isinstance(value, spec)


def _wrong(where: str, spec: Any, value: Any) -> str:
    """One mismatch, readable."""
    expected = getattr(spec, "__name__", None) or str(spec).replace("typing.", "")
    return f"{where or 'the file'}: expected {expected}, found {type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    """A value for a message, cut to a few characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(where: str, key: str) -> str:
    """A dotted path."""
    return f"{where}.{key}" if where else str(key)
