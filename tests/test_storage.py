"""Session files: atomic private writes, ids that sort by time and cannot escape the folder, cleanup that touches
nothing but old session files."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import stat
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sop_telemetry import TaskExecution, TelemetryDataStore, TelemetrySession
from sop_telemetry.storage import SessionLoadError, is_session_id, new_session_id, parse_session

DAY = 86400.0


def session(session_id: str, tasks: int = 1, text: str = "") -> TelemetrySession:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return TelemetrySession(session_id=session_id, start_time=start, tasks=[
        TaskExecution(task_id=f"t{i}", description=text, start_time=start) for i in range(tasks)
    ])


@pytest.fixture
def store(tmp_path: Path) -> TelemetryDataStore:
    return TelemetryDataStore(tmp_path / "store", fsync=False)


def write(store: TelemetryDataStore, sid: str, **kw) -> Path:
    return store.write(sid, session(sid, **kw).to_json())


def age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


def leftovers(directory: Path) -> list:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- ids ------------------------------------------------------------------------------------------------------------
def test_session_ids_sort_by_start_time():
    moments = [1.0, 1.5, 9.999999, 10.0, 59.0, 3600.0, 86400.0 * 365, 1_700_000_000.000001, 1_700_000_000.5,
               4_102_444_799.0]
    ids = [new_session_id(t) for t in moments]
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == ids
    assert all(is_session_id(i) for i in ids)


def test_session_ids_are_unique():
    assert len({new_session_id(1.0) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("bad", ["../x", "a/b", "x\0y", "/etc/passwd", "..", "", "20250101T000000_000000_deadbeef\n",
                                 "20250101T000000_000000_DEADBEEF", "../20250101T000000_000000_deadbeef",
                                 "20250101T000000_000000_deadbeef.json", None, 42])
def test_invalid_ids_get_no_path(store, bad):
    assert not is_session_id(bad)
    assert store.path_for(bad) is None
    assert store.read_bytes(bad) is None
    if isinstance(bad, str):
        with pytest.raises(ValueError):
            store.write(bad, "{}")
    assert not store.directory.exists()


# -- writing --------------------------------------------------------------------------------------------------------
def test_write_then_load_round_trips(store):
    sid = new_session_id()
    original = session(sid, tasks=3, text="naïve ✓")
    path = store.write(sid, original.to_json())
    assert path == store.directory / f"{sid}.json"
    assert store.load(sid) == original
    assert store.read_bytes(sid) == original.to_json().encode()


def test_directory_is_0700_and_files_are_0600(store):
    os.umask(old := os.umask(0))  # read the umask without changing it
    try:
        os.umask(0o022)
        path = write(store, new_session_id())
        assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        write(store, path.stem)  # replacing keeps it private
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_reader_never_sees_a_partial_file(store):
    """A reader hammering the file while it is rewritten many times (with sizes going up and down) always parses."""
    sid = new_session_id()
    write(store, sid)
    path = store.path_for(sid)
    stop = threading.Event()
    reads, problems = [0], []

    def reader():
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # never expected: os.replace swaps in place
                problems.append("missing")
                continue
            try:
                json.loads(data)
            except ValueError as exc:
                problems.append(f"{exc} ({len(data)} bytes)")
            reads[0] += 1
            # Hands the GIL back at once: otherwise each of the writer's system calls waits out the interpreter's
            # switch interval (5 ms) to get it back, and the 300 writes took 20-35 s.
            time.sleep(0)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            write(store, sid, tasks=1 + (i * 37) % 50, text="x" * ((i * 101) % 3000))
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads[0] > 0
    assert leftovers(store.directory) == []


def test_a_write_that_fails_midway_keeps_the_previous_file(store, monkeypatch):
    sid = new_session_id()
    write(store, sid)
    before = store.read_bytes(sid)
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as info:
        write(store, sid, tasks=40)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert len(calls) == 2
    assert store.read_bytes(sid) == before
    assert leftovers(store.directory) == []


def test_a_failed_replace_leaves_no_temp_file(store, monkeypatch):
    sid = new_session_id()
    write(store, sid)
    before = store.read_bytes(sid)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        write(store, sid, tasks=5)
    monkeypatch.undo()
    assert store.read_bytes(sid) == before
    assert leftovers(store.directory) == []


def test_fsync_is_used_when_asked(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    TelemetryDataStore(tmp_path / "s", fsync=True).write(new_session_id(), "{}")
    TelemetryDataStore(tmp_path / "s", fsync=False).write(new_session_id(), "{}")
    assert len(synced) == 1


def test_storage_path_that_is_a_file_raises_and_touches_nothing(tmp_path):
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    store = TelemetryDataStore(blocker, fsync=False)
    with pytest.raises(OSError):
        store.write(new_session_id(), "{}")
    assert blocker.read_text() == "not a folder"
    assert store.session_ids() == []
    assert store.stats() == (0, 0)


# -- reading --------------------------------------------------------------------------------------------------------
def test_missing_folder_lists_nothing(store):
    assert store.session_ids() == []
    assert store.session_files() == []
    assert list(store.iter_sessions()) == []
    assert store.stats() == (0, 0)
    with pytest.raises(KeyError):
        store.load(new_session_id())


def test_only_session_files_are_listed_oldest_first(store):
    ids = [new_session_id(t) for t in (300.0, 100.0, 200.0)]
    for sid in ids:
        write(store, sid)
    d = store.directory
    (d / "notes.txt").write_text("hello")
    (d / f"{ids[0]}.json.bak").write_text("{}")
    (d / f".{ids[0]}.json.0123abcd.tmp").write_text("{")
    (d / f"{new_session_id()}.json").mkdir()
    (d / f"{new_session_id()}.json").symlink_to(d / f"{ids[0]}.json")
    assert store.session_ids() == sorted(ids)
    assert [row[0] for row in store.session_files()] == sorted(ids)
    files, size = store.stats()
    assert files == 3
    assert size == sum((d / f"{sid}.json").stat().st_size for sid in ids)


def test_symlinked_session_file_is_not_followed(store, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(session("x").to_json())
    sid = new_session_id()
    store.ensure_directory()
    (store.directory / f"{sid}.json").symlink_to(outside)
    assert store.read_bytes(sid) is None
    with pytest.raises(KeyError):
        store.load(sid)


def test_corrupt_files_are_skipped_with_one_warning_each(store, caplog):
    good = [new_session_id(t) for t in (1.0, 5.0)]
    for sid in good:
        write(store, sid)
    bad = {new_session_id(2.0): b"", new_session_id(3.0): session("s").to_json().encode()[:-40],
           new_session_id(4.0): b"\xff\xfe garbage", new_session_id(4.5): b'{"session_id": 5}',
           new_session_id(4.7): json.dumps({**json.loads(session("s").to_json()), "schema_version": 99}).encode()}
    for sid, data in bad.items():
        store.write(sid, data)
    with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
        loaded = list(store.iter_sessions())
    assert [s.session_id for s in loaded] == [session(sid).session_id for sid in good]
    warned = [r.getMessage() for r in caplog.records if r.name == "sop_telemetry"]
    assert len(warned) == len(bad)
    for sid in bad:
        assert sum(sid in message for message in warned) == 1
        with pytest.raises(SessionLoadError):
            store.load(sid)


def test_parse_session_names_the_problem():
    with pytest.raises(SessionLoadError, match="src: not a valid session file"):
        parse_session(b"{", source="src")


# -- cleanup --------------------------------------------------------------------------------------------------------
def test_cleanup_removes_only_old_session_files(store, tmp_path):
    old = [new_session_id(t) for t in (10.0, 20.0)]
    young = new_session_id(30.0)
    live = new_session_id(5.0)
    for sid in (*old, young, live):
        write(store, sid)
    d = store.directory
    for sid in (*old, live):
        age(d / f"{sid}.json", 30)

    lookalikes = [d / f"{old[0]}.json.bak", d / f"x{old[0]}.json", d / f"{old[0]}.JSON", d / "notes.txt",
                  d / "20250101T000000_000000_DEADBEEF.json", d / "20250101T000000_000000_deadbee.json"]
    for p in lookalikes:
        p.write_text("keep me")
        age(p, 400)
    folder = d / f"{new_session_id(1.0)}.json"
    folder.mkdir()
    age(folder, 400)
    target = tmp_path / "precious.json"
    target.write_text("keep me")
    age(target, 400)
    link = d / f"{new_session_id(2.0)}.json"
    link.symlink_to(target)
    age(link, 400)
    young_tmp = d / f".{young}.json.0123abcd.tmp"
    young_tmp.write_text("{")
    stale_tmp = d / f".{young}.json.89abcdef.tmp"
    stale_tmp.write_text("{")
    age(stale_tmp, 1)

    assert sorted(store.cleanup(14, dry_run=True, keep=live)) == old
    assert all((d / f"{sid}.json").exists() for sid in old)
    removed = store.cleanup(14, keep=live)
    assert sorted(removed) == old
    assert not any((d / f"{sid}.json").exists() for sid in old)
    assert (d / f"{young}.json").exists() and (d / f"{live}.json").exists()
    assert all(p.read_text() == "keep me" for p in lookalikes)
    assert folder.is_dir() and link.is_symlink() and target.read_text() == "keep me"
    assert young_tmp.exists() and not stale_tmp.exists()
    assert store.cleanup(14, keep=live) == []


def test_cleanup_of_a_missing_folder_is_a_no_op(store):
    assert store.cleanup(0) == []
    assert not store.directory.exists()


# -- a session's tail -----------------------------------------------------------------------------------------------
def _line(task_id: str, ended: bool) -> bytes:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    task = TaskExecution(task_id=task_id, start_time=start, end_time=start if ended else None,
                         status="completed" if ended else "running")
    return (task.model_dump_json() + "\n").encode()


def test_load_adds_the_tasks_of_the_tail_the_last_line_of_a_task_winning(store):
    sid = new_session_id()
    store.write(sid, TelemetrySession(session_id=sid, start_time=datetime(2025, 1, 1, tzinfo=timezone.utc), tasks=[
        TaskExecution(task_id="open", start_time=datetime(2025, 1, 1, tzinfo=timezone.utc)),
        TaskExecution(task_id="done", start_time=datetime(2025, 1, 1, tzinfo=timezone.utc),
                      end_time=datetime(2025, 1, 1, tzinfo=timezone.utc), status="completed"),
    ]).to_json())
    store.append_tail(sid, _line("new", False) + _line("open", True) + _line("new", True))
    store.append_tail(sid, _line("done", False) + b'{"task_id": "torn", "start_ti')  # a write cut short
    loaded = store.load(sid)
    assert [(t.task_id, t.status.value) for t in loaded.tasks] == [
        ("open", "completed"), ("done", "completed"), ("new", "completed")]  # an ended task is not overwritten
    store.append_tail(sid, _line("after", True))  # after a torn line: on a line of its own
    assert [t.task_id for t in store.load(sid).tasks][-1] == "after"
    _, path, size, _ = store.session_files()[0]
    assert size == path.stat().st_size + store.tail_path(sid).stat().st_size
    assert stat.S_IMODE(store.tail_path(sid).stat().st_mode) == 0o600


def test_the_tail_of_an_ended_session_is_ignored_and_cleaned_up_with_it(store):
    sid = new_session_id()
    ended = session(sid).model_copy(update={"end_time": datetime(2025, 1, 2, tzinfo=timezone.utc)})
    path = store.write(sid, ended.to_json())
    store.append_tail(sid, _line("stale", True))  # left over: the process died before removing it
    assert [t.task_id for t in store.load(sid).tasks] == ["t0"]
    orphan = new_session_id()
    store.append_tail(orphan, _line("x", True))  # its file removed by hand
    for p in (path, store.tail_path(sid), store.tail_path(orphan)):
        age(p, 30)
    assert store.cleanup(max_age_days=7) == [sid]
    assert sorted(os.listdir(store.directory)) == []
