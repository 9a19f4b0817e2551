"""How the command prints. Every command's output goes through here: its result on stdout (text for people, or
one JSON document with --json), messages about the work on stderr (so that stdout stays the result alone), and
progress bars on stderr, on a terminal only."""

import contextlib
import json
import sys

import click

PROGRESS_MIN_BYTES = 8 << 20


def result(data, as_json: bool, text=(), *, indent: int | None = None) -> None:
    """The command's result: data as one JSON document with --json, else text: a line, an iterable of lines, or a
    function of data that returns one of these (only called for text output)."""
    if as_json:
        click.echo(json.dumps(data, indent=indent))
        return
    if callable(text):
        text = text(data)
    for line in [text] if isinstance(text, str) else text:
        click.echo(line)


def say(text: str = "", *, nl: bool = True) -> None:
    """A line of the result for people (commands without a structured result, such as a log of steps)."""
    click.echo(text, nl=nl)


def note(text: str = "", *, nl: bool = True) -> None:
    """A message about the work on stderr: a warning, what is being waited for, where something was saved."""
    click.echo(text, err=True, nl=nl)


def binary_stdout():
    """Standard output for raw bytes (`cat`, `car export -o -`)."""
    return sys.stdout.buffer


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


@contextlib.contextmanager
def transcode_progress(duration: float, enabled: bool):
    """A rich progress bar on stderr for a transcode of duration seconds (on a terminal); yields on_progress or
    None."""
    if not enabled or not sys.stderr.isatty() or duration <= 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("transcoding"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
               TextColumn("{task.fields[fps]:.1f} fps"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("transcoding", total=duration, fps=0.0)
        yield lambda p: bar.update(task, completed=min(p.seconds, duration), fps=p.fps)


def fetch_progress(info: dict | None) -> None:
    """The line a read shows while the agent fetches from neighbours (rewritten in place; None ends it): what has
    come, and where the agent knows the DAG's size, the total, the percent and the time left."""
    if info is None:
        note()
        return
    mib = 1 << 20
    line = f"fetching from neighbours: {info['blocks']:,} blocks, {info['bytes'] / mib:,.1f} MiB"
    if info.get("total"):
        line = (f"fetching from neighbours: {info['done'] / mib:,.1f} of {info['total'] / mib:,.1f} MiB "
                f"({info['percent']:.0f}%), {info['blocks']:,} blocks")
        if info.get("rate"):
            line += f", {info['rate'] / 1e6:.1f} MB/s"
        if info.get("eta") is not None:
            line += f", {_duration(info['eta'])} left"
    note(f"\r{line}\x1b[K", nl=False)   # erase what a longer line before left


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
