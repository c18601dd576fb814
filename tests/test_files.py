"""Atomic writes, checksums and the clean-up of what killed runs leave behind."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from diffvqa_cache.files import (atomic_path, file_sha256, remove_leftovers, temp_name, write_csv_atomic,
                                 write_json_atomic)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed while writing")
    assert target.read_text() == '{\n "a": 1\n}' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_folders_are_written_atomically_too(tmp_path):
    with atomic_path(tmp_path / "step-1") as tmp:
        tmp.mkdir()
        (tmp / "state.json").write_text("{}")
        assert not (tmp_path / "step-1").exists()
    assert (tmp_path / "step-1" / "state.json").is_file()
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "step-2") as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("1")
            raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]


def test_csv_rows_as_sequences_or_dicts(tmp_path):
    write_csv_atomic(tmp_path / "a.csv", ["k", "v"], [("x", 1), ("y", 2)])
    write_csv_atomic(tmp_path / "b.csv", ["k", "v"], [{"k": "x", "v": 1, "extra": 0}, {"k": "y", "v": 2}])
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes() == b"k,v\r\nx,1\r\ny,2\r\n"


def test_sha256_of_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"x" * 100).hexdigest()


def test_leftovers_of_dead_processes_of_this_host_are_removed(tmp_path):
    (tmp_path / "shards").mkdir()
    mine = temp_name(tmp_path / "shards" / "shard-00000.h5")
    dead = mine.with_name(mine.name.replace(f"-{os.getpid()}.", f"-{dead_pid()}."))
    old_style = tmp_path / f"config.json.{dead_pid()}.incomplete"  # written by 0.1.0: no host in the name
    other_host = tmp_path / "labels.csv.otherhost-1.incomplete"
    for p in (mine, dead, old_style, other_host):
        p.write_text("partial")
    folder = temp_name(tmp_path / "step-5").with_name(f"step-5.{dead.name.split('.')[-2]}.incomplete")
    folder.mkdir()
    removed = remove_leftovers(tmp_path)
    assert sorted(removed) == sorted([dead, old_style, folder])
    assert mine.exists() and other_host.exists()  # a live writer's and another host's are kept
