"""The one submit-and-gather loop (extract's shards, sweep's tasks) on a local dask cluster: every result
handed over as its task finishes, progress per task, and a task that raises as one line while the
others go on."""

from __future__ import annotations

import time

from diffvqa_cache.cluster.tasks import error_line, submit_and_gather


class Progress:
    """Records what the loop tells a progress bar."""

    def __init__(self):
        self.updates: list[tuple[int, str | None]] = []

    def update(self, advance: int = 0, info: str | None = None) -> None:
        self.updates.append((advance, info))


def slow_square(x: int, seconds: float) -> int:
    time.sleep(seconds)
    if x < 0:
        raise ValueError(f"negative input {x}:\n  cannot square it")
    return x * x


def timed_square(x: int, seconds: float) -> tuple[int, float]:
    time.sleep(seconds)
    return x * x, time.time()


def test_results_arrive_as_tasks_finish_with_progress(dask_client):
    calls = {"slow": (3, 1.0), "fast": (2, 0.0), "faster": (1, 0.0)}
    seen, bar = [], Progress()
    errors = submit_and_gather(dask_client, timed_square, calls,
                               lambda key, r: seen.append((key, r)) or f"done {key}", pbar=bar)
    assert errors == [] and sorted((key, value) for key, (value, _) in seen) == [("fast", 4), ("faster", 1),
                                                                                 ("slow", 9)]
    # in the order they finish (which worker runs what is the scheduler's choice), not the order given
    finished = [t for _, (_, t) in seen]
    assert all(later >= earlier - 0.05 for earlier, later in zip(finished, finished[1:])), seen
    assert bar.updates == [(1, f"done {key}") for key, _ in seen]


def test_a_failing_task_is_one_line_and_the_others_finish(dask_client):
    seen, bar = {}, Progress()
    errors = submit_and_gather(dask_client, slow_square, {"bad": (-1, 0.0), "ok": (5, 0.2)},
                               lambda key, r: seen.setdefault(key, r) and None, pbar=bar)
    assert errors == ["bad: ValueError: negative input -1: cannot square it"] and seen == {"ok": 25}
    assert len(bar.updates) == 2 and all(advance == 1 for advance, _ in bar.updates)


def test_on_error_takes_the_failures(dask_client):
    failed = []
    errors = submit_and_gather(dask_client, slow_square, {"a": (-2, 0.0), "b": (-3, 0.0), "c": (1, 0.0)},
                               lambda key, r: None, on_error=lambda key, line: failed.append((key, line)))
    assert errors == [] and sorted(failed) == [("a", "ValueError: negative input -2: cannot square it"),
                                               ("b", "ValueError: negative input -3: cannot square it")]


def test_error_line():
    assert error_line(KeyError("a\nb")) == "KeyError: 'a\\nb'"
    assert error_line(RuntimeError("first\n  second\n")) == "RuntimeError: first second"
