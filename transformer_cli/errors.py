"""The one exception type for a user's mistake: bad config, bad data, bad checkpoint."""

from __future__ import annotations

from typing import Any, Mapping


class TformerError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback and exits non-zero."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class Preempted(Exception):
    """A stop signal arrived; the run saved a checkpoint at a step boundary and should exit."""

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def choose(table: Mapping[str, Any], name: str, what: str) -> Any:
    """Look a component up by name in one of tformer's tables, or fail naming the ones that exist."""
    if name not in table:
        raise TformerError(f"unknown {what} '{name}'", hint=f"choose one of: {', '.join(sorted(table))}")
    return table[name]
