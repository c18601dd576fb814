"""Files that are never half-written: atomic writes, checksums, and clean-up of what killed runs left.

Every writer goes through `atomic_path`: the content is written under a temporary name beside the target
(`<name>.<host>-<pid>.incomplete`) and renamed onto it only when complete, so a reader sees the old file
or the new one, never a part. A run that is killed leaves its temporary file behind; `remove_leftovers`
deletes those of dead processes when the run that owns the folder starts again.

Lock files (`claim_lock`, `folder_lock`) keep two processes from writing the same shard or output folder;
a lock left by a dead process of this host is taken over. `is_disk_full`/`reporting_disk_full` turn a
full disk into one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator

from diffvqa_cache.errors import DiffVQAError, UserInputError

INCOMPLETE = ".incomplete"
_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def temp_name(path: Path) -> Path:
    """The temporary sibling this process writes `path` under."""
    return path.with_name(f"{path.name}.{_HOST}-{os.getpid()}{INCOMPLETE}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write (a file or a folder); it replaces `path` when the block succeeds
    and is removed when it raises."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path | str, obj) -> None:
    """JSON with sorted keys (stable bytes for the same content)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def write_csv_atomic(path: Path | str, header: list[str], rows: Iterable) -> None:
    """Rows as sequences (in header order) or as dicts (keys outside the header are ignored)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            w.writeheader()
        else:
            w = csv.writer(f)
            w.writerow(header)
        w.writerows(rows)


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid) -> bool:
    """Whether process `pid` runs on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: Path | str, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders that killed processes of this host left in `folder`.

    Those of live processes (a concurrent run writing into the same folder) and of other hosts (which
    cannot be checked from here) are kept. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in (folder.rglob if recursive else folder.glob)(f"*{INCOMPLETE}"):
        writer = p.name[: -len(INCOMPLETE)].rsplit(".", 1)[-1]  # "<host>-<pid>", or "<pid>" (older versions)
        host, _, pid = writer.rpartition("-")
        if (host or _HOST) != _HOST or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------- locks
LOCK_NAME = "in-use.lock"  # the lock file `folder_lock` holds in an output folder


def lock_holder(lock: Path | str) -> dict:
    """The record in lock file `lock` (host, pid, ...); {} when missing or unreadable."""
    try:
        holder = json.loads(Path(lock).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def claim_lock(lock: Path | str, info: dict | None = None) -> dict | None:
    """Take lock file `lock` for this process (created atomically, holding this host, pid and `info`).

    Returns None when this process holds it (now or already), else the record of the process that holds
    it ({} when unreadable). A lock left by a dead process of this host is taken over; those of other
    hosts cannot be checked from here and are honoured."""
    lock = Path(lock)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    holder: dict = {}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock_holder(lock)
            if {k: holder.get(k) for k in me} == me:
                return None
            if holder.get("host") == me["host"] and not pid_alive(holder.get("pid")):
                lock.unlink(missing_ok=True)  # stale: its process was killed
                continue
            return holder
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**me, **(info or {})}, f)
        except BaseException:
            lock.unlink(missing_ok=True)  # never leave an empty lock that nobody can take over
            raise
        return None
    return holder


def describe_holder(holder: dict) -> str:
    """'`fit` (pid 123 on host h, since 2026-01-01T10:00:00)' for a lock record."""
    if not holder:
        return "another process (its lock file is unreadable)"
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"`{holder.get('command', 'another process')}` (pid {holder.get('pid')} on host {holder.get('host')}{since})"


@contextlib.contextmanager
def folder_lock(folder: Path | str, command: str) -> Iterator[Path]:
    """Hold `folder`/in-use.lock while `command` writes the folder (created if missing; removed again at the
    end when it was created here and is left empty). A second command on the same folder is refused with
    a one-line `UserInputError` naming the folder and the holder, before it changes anything."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    if lock_holder(lock).get("pid") == os.getpid() and lock_holder(lock).get("host") == socket.gethostname():
        yield folder  # already held by this process (a command inside another): the outer one releases it
        return
    holder = claim_lock(lock, {"command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if holder is not None:
        raise UserInputError(f"{folder} is in use by {describe_holder(holder)}; wait for it to end or pass another "
                             f"output folder (if that process is gone, delete {lock})")
    try:
        yield folder
    finally:
        lock.unlink(missing_ok=True)
        if created:
            try:
                folder.rmdir()  # only when nothing was written into it
            except OSError:
                pass


# ---------------------------------------------------------------- a full disk
def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk is full (OSError ENOSPC, or a library error quoting it, e.g. safetensors')."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


@contextlib.contextmanager
def reporting_disk_full(what: str, fix: str) -> Iterator[None]:
    """Turn a full disk inside the block into one line: 'disk full while writing `what`; `fix`'."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DiffVQAError(f"disk full while writing {what}; {fix}") from None


# ---------------------------------------------------------------- checksums of a folder's files
def checksums(folder: Path | str, names: Iterable[str]) -> dict[str, dict]:
    """{name: {bytes, sha256}} of the files `names` (paths relative to `folder`)."""
    folder = Path(folder)
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in sorted(names)}


def checksum_problems(folder: Path | str, recorded: dict[str, dict]) -> list[str]:
    """'name: why' for every file of `recorded` (as `checksums` wrote it) missing or changed in `folder`."""
    folder = Path(folder)
    problems = []
    for name, rec in recorded.items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != rec.get("bytes") or file_sha256(p) != rec.get("sha256"):
            problems.append(f"{name}: content does not match its checksum (damaged or changed)")
    return problems
