"""The results table a command prints at its end: one row per split, one column per metric."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from transformer_cli.console import plain_console


def print_results(title: str, results: dict[str, dict[str, Any]], console: Console | None = None) -> None:
    """One row per split, one column per metric (transposed when there are too many metrics to fit)."""
    console = console or plain_console()
    names = [k for k in next(iter(results.values()), {}) if k != "count"]
    if len(names) > 6:
        _print_transposed(title, results, names, console)
        return
    table = Table(title=Text(title), title_justify="left")
    table.add_column("split", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("examples", justify="right")
    for split, scalars in results.items():
        cells = [_cell(scalars.get(n)) for n in names]
        table.add_row(split, *cells, str(scalars.get("count", "")))
    console.print(table)


def _print_transposed(title: str, results: dict[str, dict[str, Any]], names: list[str], console: Console) -> None:
    """One row per metric, one column per split."""
    table = Table(title=Text(title), title_justify="left")
    table.add_column("metric", style="bold")
    for split in results:
        table.add_column(split, justify="right")
    for name in [*names, "count"]:
        table.add_row(name, *(_cell(scalars.get(name)) for scalars in results.values()))
    console.print(table)


def _cell(value: Any) -> str:
    """A metric value as a table cell."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
