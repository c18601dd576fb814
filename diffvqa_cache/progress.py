"""Progress bars and console output on stderr (results go to stdout)."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True, soft_wrap=True)  # long lines (paths, errors) stay whole in logs


def bar(description: str, total: int, enabled: bool = True, unit_text: str = ""):
    """A rich progress bar on stderr; `update(advance=..., info=...)` shows a live rate or metric text."""
    if not enabled:
        return contextlib.nullcontext(_Null())
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=err)
    return _Bar(progress, description, total, unit_text)


class _Bar:
    def __init__(self, progress: Progress, description: str, total: int, info: str):
        self.progress, self.description, self.total, self.info = progress, description, total, info

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task(self.description, total=self.total, info=self.info)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, advance: int = 0, info: str | None = None) -> None:
        fields = {} if info is None else {"info": info}
        self.progress.update(self.task, advance=advance, **fields)


class _Null:
    def update(self, advance: int = 0, info: str | None = None) -> None:
        pass
