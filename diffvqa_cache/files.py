"""Files that are never half-written: atomic writes, checksums, and clean-up of what killed runs left.

Every writer goes through `atomic_path`: the content is written under a temporary name beside the target
(`<name>.<host>-<pid>.incomplete`) and renamed onto it only when complete, so a reader sees the old file
or the new one, never a part. A run that is killed leaves its temporary file behind; `remove_leftovers`
deletes those of dead processes when the run that owns the folder starts again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Iterable, Iterator

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
