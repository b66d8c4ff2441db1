"""The progress bar `batch` and `perplexity` show on stderr while they work (on a terminal only)."""

from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .app import err_console


def terminal_bar(label: str, figure: str) -> Progress | None:
    """A bar with done/total, elapsed time and ETA, between the text columns `label` and `figure`
    (rich markup with task fields, e.g. "[dim]PPL {task.fields[ppl]}"); None when stderr is not a
    terminal. It disappears when done."""
    if not err_console.is_terminal:
        return None
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(figure), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=True)


@contextlib.contextmanager
def showing(bar: Progress | None):
    """`bar` on screen for the block (nothing when there is none)."""
    if bar is None:
        yield
        return
    with bar:
        yield
