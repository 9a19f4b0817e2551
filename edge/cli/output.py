"""How the command prints: results on stdout, progress on stderr."""

import contextlib
import sys

PROGRESS_MIN_BYTES = 8 << 20


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool):
    """A rich progress bar on stderr (only on a terminal, and only for inputs worth one); yields advance(n)."""
    if not enabled or total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
