"""Rich consoles for people that print every string as written: paths, labels and messages are data, not markup."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def plain_console(stderr: bool = False, **kwargs: Any) -> Console:
    """A console without markup, emoji or highlighting: `[old]`, `[/]` and `:x:` print as written."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **kwargs)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line of literal pieces, some styled: styled(("error:", "bold red"), " ", message)."""
    return Text.assemble(*parts)
