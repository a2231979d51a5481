"""Progress bars for long work, off when ``progress=False``.

>>> with progress_bar(False) as bar:  # off: the same calls, nothing drawn
...     job = bar.add_task("work", total=2)
...     bar.update(job, advance=1)
"""

from __future__ import annotations


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def progress_bar(enabled: bool):
    """A rich progress bar (description, bar, n/total, time left), or one that shows nothing."""
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
