"""Fanning tasks out to a dask client and gathering them as they finish: the one loop behind extract's
shard tasks and sweep's (configuration, split) tasks."""

from __future__ import annotations

from typing import Any, Callable, Mapping


def error_line(exc: BaseException) -> str:
    """An exception as one line, `Type: message` (a message's line breaks become spaces)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def submit_and_gather(client, fn: Callable, calls: Mapping[str, tuple],
                      on_result: Callable[[str, Any], str | None],
                      on_error: Callable[[str, str], str | None] | None = None,
                      resources: dict | None = None, pbar=None) -> list[str]:
    """Run `fn(*args)` for every `key: args` of `calls` as one dask task named `key` (pure=False; each
    holding `resources`, e.g. {"GPU": 1}), and hand each result to
    `on_result(key, result)` as its task finishes, in the order they finish. A task that raised (in `fn`,
    or its worker lost too often) is one line, `Type: message`: handed to `on_error(key, line)`, or without
    `on_error` collected as `key: Type: message`; the other tasks go on. `pbar` (progress.bar) advances by
    one per finished task, its info set to what the handler returned (None: unchanged).
    Returns the collected error lines, once every task has ended."""
    from distributed import as_completed

    futures = {client.submit(fn, *args, key=key, pure=False, resources=resources): key for key, args in calls.items()}
    errors: list[str] = []
    for fut in as_completed(futures):
        key, info = futures[fut], None
        try:
            result = fut.result()
        except Exception as exc:  # reported without stopping the other tasks
            if on_error is None:
                errors.append(f"{key}: {error_line(exc)}")
            else:
                info = on_error(key, error_line(exc))
        else:
            info = on_result(key, result)
        if pbar is not None:
            pbar.update(advance=1, info=info)
    return errors
