"""The one rich progress bar every long robodual job shows (on stderr, so stdout stays machine-readable)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def progress_bar(enabled: bool = True, unit: str | None = None) -> Any:
    """A ``rich.progress.Progress``: description, bar, done/total, [unit], elapsed, remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled, transient=False)


@contextlib.contextmanager
def counting(enabled: bool, total: int, description: str, unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """``with counting(True, n, "converting", "frames") as advance: advance(k)``."""
    with progress_bar(enabled, unit) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
