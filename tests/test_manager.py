"""The manager: the spec's API, files that reach disk on their own, and a host program that never sees an error."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sop_telemetry import TaskStatus, TelemetryManager, TelemetrySession, get_error_handler
from sop_telemetry.storage import TelemetryDataStore, new_session_id

DAY = 86400.0
REPO = Path(__file__).resolve().parents[1]


def record_task(manager, task_id: str = "t", prompt: int = 10, completion: int = 5) -> None:
    collector = manager.get_collector()
    collector.start_task(task_id, f"task {task_id}")
    collector.record_llm_call("gpt-4", prompt, completion, 0.1)
    collector.record_tool_usage("file_reader", 0.05)
    collector.end_task(task_id, TaskStatus.COMPLETED)


def files_in(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def session_files(directory: Path) -> list:
    return [name for name in files_in(directory) if name.endswith(".json") and not name.startswith(".")]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def write_session_file(directory: Path, sid: str, tasks: int = 1, days_old: float = 0.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    start = time.time() - days_old * DAY
    session = TelemetrySession.model_validate(
        {"session_id": sid, "start_time": start,
         "tasks": [{"task_id": f"old{i}", "start_time": start} for i in range(tasks)]})
    path = directory / f"{sid}.json"
    path.write_text(session.to_json())
    os.utime(path, (start, start))
    return path


def no_temp_files(directory: Path) -> bool:
    return not [name for name in files_in(directory) if name.endswith(".tmp")]


def telemetry_warnings(caplog) -> list:
    return [r for r in caplog.records if r.name == "sop_telemetry" and r.levelno >= logging.WARNING]


# -- the spec's API -------------------------------------------------------------------------------------------------
def test_get_instance_is_one_object_across_threads(manager):
    TelemetryManager._instance = None
    try:
        seen, barrier = [], threading.Barrier(16)

        def grab():
            barrier.wait(timeout=10)
            seen.append(TelemetryManager.get_instance())

        threads = [threading.Thread(target=grab) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 16 and len({id(m) for m in seen}) == 1
    finally:
        TelemetryManager._instance.shutdown(flush=False)
        TelemetryManager._instance = manager


def test_flush_writes_the_session_privately(manager, storage_dir):
    record_task(manager)
    path = manager.flush_data()
    assert path == storage_dir / f"{manager.get_collector().session_id}.json"
    assert stat.S_IMODE(storage_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    session = TelemetrySession.from_json(path.read_bytes())
    assert session == manager.get_session_data(session.session_id)
    assert session.tasks[0].token_usage.total_tokens == 15


def test_a_task_end_reaches_disk_without_a_flush(manager, storage_dir):
    record_task(manager)
    sid = manager.get_collector().session_id
    path = storage_dir / f"{sid}.json"
    wait_for(lambda: path.exists() and TelemetrySession.from_json(path.read_bytes()).tasks)
    assert TelemetrySession.from_json(path.read_bytes()).tasks[0].status is TaskStatus.COMPLETED


def test_records_outside_a_task_reach_disk_within_the_flush_interval(manager, storage_dir):
    manager.initialize({"flush_interval": 0.05})
    collector = manager.get_collector()
    collector.record_llm_call("gpt-4", 1, 1, 0.1)  # opens the implicit task: the writer starts
    collector.record_llm_call("gpt-4", 2, 2, 0.1)  # no task ends: only the interval writes this one
    path = storage_dir / f"{collector.session_id}.json"
    wait_for(lambda: path.exists() and TelemetrySession.from_json(path.read_bytes()).total_tokens.total_tokens == 6)


def test_a_task_that_ends_in_the_writers_pause_does_not_wake_it_and_one_that_ends_when_it_is_idle_does(
        manager, storage_dir, monkeypatch):
    # After a write the writer pauses before the next one (a large session is not rewritten after every task). The
    # pause is its own timer: a task that ends during it is written when it is over, without a wake (a system call
    # on the agent's thread). A pause that goes by with nothing to write leaves the writer waiting for a task's end,
    # and that end wakes it: written at once.
    from sop_telemetry import manager as manager_module

    monkeypatch.setattr(manager_module, "_WRITE_BACKOFF", 1e9)  # every pause is the longest
    monkeypatch.setattr(manager_module, "_MAX_WRITE_PAUSE", 1.0)
    wakes = []
    real_set = manager._wake.set
    monkeypatch.setattr(manager._wake, "set", lambda: (wakes.append(time.perf_counter()), real_set()))

    def where() -> str:
        frame = sys._current_frames().get(manager._writer.ident)
        while frame is not None and frame.f_code.co_name != "_write_until_stopped":
            frame = frame.f_back
        return "" if frame is None else textwrap.dedent(
            Path(frame.f_code.co_filename).read_text().splitlines()[frame.f_lineno - 1]).strip()

    def tasks_on_disk() -> int:
        return _tasks_on_disk(path)

    record_task(manager, "first")  # the writer, just started, waits for it: woken
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    wait_for(lambda: tasks_on_disk() == 1)
    written = time.perf_counter()
    assert len(wakes) == 1
    wait_for(lambda: where() == "self._halt.wait(pause)")
    record_task(manager, "second")  # within the pause: no wake, written when it is over
    assert len(wakes) == 1 and where() == "self._halt.wait(pause)" and tasks_on_disk() == 1
    wait_for(lambda: tasks_on_disk() == 2)
    assert time.perf_counter() - written >= 0.9  # (`written` was taken up to one poll after the write)
    assert len(wakes) == 1
    wait_for(lambda: where().startswith("self._await_change("), timeout=5)  # the next pause went by: idle
    ended = time.perf_counter()
    record_task(manager, "third")  # ends while the writer is idle: woken, written at once
    assert len(wakes) == 2
    wait_for(lambda: tasks_on_disk() == 3)
    assert time.perf_counter() - ended < 0.5


def test_wait_until_written_waits_for_the_writer_to_write_every_task_ended_so_far(manager, storage_dir, monkeypatch):
    # The writer pauses a second after each write here, so tasks that end during the pause reach the file only
    # when it is over: wait_until_written must block until then, without writing on the calling thread.
    from sop_telemetry import manager as manager_module

    monkeypatch.setattr(manager_module, "_WRITE_BACKOFF", 1e9)
    monkeypatch.setattr(manager_module, "_MAX_WRITE_PAUSE", 1.0)
    assert manager.wait_until_written(timeout=0) is True  # nothing recorded: nothing to wait for
    record_task(manager, "first")
    assert manager.wait_until_written(timeout=10) is True
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    assert _tasks_on_disk(path) == 1
    wait_for(lambda: manager.writer_state == "pausing")

    def record(thread: int) -> None:
        for i in range(5):
            record_task(manager, f"t{thread}-{i}", prompt=thread, completion=i)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer_thread = threading.current_thread()
    writes = []
    real_append = TelemetryDataStore.append_tail
    monkeypatch.setattr(TelemetryDataStore, "append_tail",
                        lambda *a, **k: (writes.append(threading.current_thread()), real_append(*a, **k))[1])
    assert manager.wait_until_written(timeout=0.05) is False  # still in the writer's pause
    assert _tasks_on_disk(path) == 1
    assert manager.wait_until_written(timeout=10) is True
    session = TelemetryDataStore(storage_dir).load(path.stem)
    assert sorted(t.task_id for t in session.tasks) == sorted(["first", *(f"t{n}-{i}" for n in range(4) for i in range(5))])
    assert session.total_tokens.prompt_tokens == 10 + 5 * (0 + 1 + 2 + 3)
    assert session.total_tokens.completion_tokens == 5 + 4 * (0 + 1 + 2 + 3 + 4)
    assert writes and writer_thread not in writes  # the writer wrote them, not the waiting thread


def test_wait_until_written_is_false_at_once_when_nothing_will_be_written(manager, storage_dir):
    manager.read_only = True
    record_task(manager, "never written")
    began = time.monotonic()
    assert manager.wait_until_written(timeout=30) is False
    assert time.monotonic() - began < 5
    manager.read_only = False
    record_task(manager, "written")
    assert manager.wait_until_written(timeout=30) is True
    manager.shutdown(flush=False)
    assert manager.writer_state == "stopped"
    assert manager.wait_until_written(timeout=30) is True  # (nothing ended since the last write)
    assert [t.task_id for t in manager.get_session_data(manager.get_collector().session_id).tasks] == [
        "never written", "written"]


def test_wait_until_written_is_false_when_the_write_fails(manager, storage_dir):
    record_task(manager, "first")
    assert manager.wait_until_written(timeout=30) is True
    for path in storage_dir.iterdir():
        path.unlink()
    storage_dir.rmdir()
    storage_dir.write_text("a file where the folder was")
    began = time.monotonic()
    record_task(manager, "second")
    assert manager.wait_until_written(timeout=30) is False
    assert time.monotonic() - began < 10
    assert get_error_handler().get_error_summary()["storage.write"]["count"] >= 1


class _Fsyncs:
    """Which files os.fsync was called on (by inode) and when. (Inode numbers are reused once a file is gone, so a
    file's fsyncs are looked for from a moment on: `since`.)"""

    def __init__(self, monkeypatch) -> None:
        self.calls = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (self.calls.append((time.monotonic(), os.fstat(fd).st_ino)),
                                                      real(fd))[1])

    def of(self, path: Path, since: float) -> list:
        """fsyncs of the session file `path` and of its tail (where task ends after the file's first write go)."""
        inodes = {os.stat(p).st_ino for p in (path, _tail(path)) if p.exists()}
        return [when for when, ino in self.calls if ino in inodes and when >= since]


def _tail(path: Path) -> Path:
    return path.parent / f".{path.stem}.tail.jsonl"


def _tasks_on_disk(path: Path) -> int:
    """Tasks in the session file and its tail, read as every reader reads them."""
    return len(TelemetryDataStore(path.parent).load(path.stem).tasks) if path.exists() else 0


def _second_write_deferred(manager, path: Path) -> tuple:
    """Records two tasks: the first write is fsynced as it is made, the second, moments later, is not yet. Returns
    when the second task began and the inode of its file."""
    record_task(manager, "first")
    wait_for(lambda: _tasks_on_disk(path) == 1)
    second = time.monotonic()
    record_task(manager, "second")
    _await_unsynced_write(manager, path, 2)
    return second, os.stat(path).st_ino


def _await_unsynced_write(manager, path: Path, tasks: int) -> None:
    """Until `path` holds `tasks` tasks and waits for its deferred fsync. (The writer notes the file as unsynced
    right after renaming it into place: both are waited for.)"""
    wait_for(lambda: _tasks_on_disk(path) == tasks and list(manager._unsynced) == [_tail(path)])


@pytest.fixture
def no_pause(monkeypatch):
    """The writer writes each task's end at once, with no pause after a write."""
    from sop_telemetry import manager as manager_module

    monkeypatch.setattr(manager_module, "_WRITE_BACKOFF", 0.0)


def test_a_write_within_fsync_interval_of_the_last_fsync_is_synced_when_the_interval_is_over(
        manager, storage_dir, monkeypatch, no_pause):
    manager.initialize({"fsync": True, "fsync_interval": 2.0})
    fsyncs = _Fsyncs(monkeypatch)
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    began = time.monotonic()
    record_task(manager, "first")
    wait_for(lambda: _tasks_on_disk(path) == 1)
    [first_sync] = fsyncs.of(path, began)  # the first write is synced as it is made
    second = time.monotonic()
    record_task(manager, "second")
    wait_for(lambda: _tasks_on_disk(path) == 2)  # written at once all the same: whole, renamed into place
    assert fsyncs.of(path, second) == []  # but not synced yet: it came moments after the last fsync
    [deferred] = wait_for(lambda: fsyncs.of(path, second), timeout=10)
    assert deferred - first_sync >= 2.0 - 0.01
    flushed = time.monotonic()
    record_task(manager, "third")
    assert manager.flush_data() == path  # an explicit flush is synced at once, however recent the last fsync
    assert _tasks_on_disk(path) == 3 and len(fsyncs.of(path, flushed)) == 1
    assert get_error_handler().total_errors() == 0


def test_fsync_interval_0_syncs_every_write_and_shutdown_syncs_a_deferred_one(manager, storage_dir, monkeypatch,
                                                                             no_pause):
    fsyncs = _Fsyncs(monkeypatch)
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    manager.initialize({"fsync": True, "fsync_interval": 0})
    for n in range(3):
        began = time.monotonic()
        record_task(manager, f"t{n}")
        wait_for(lambda expected=n + 1: _tasks_on_disk(path) == expected)
        assert len(fsyncs.of(path, began)) == 1
    manager.initialize({"fsync_interval": 3600})
    began = time.monotonic()
    record_task(manager, "t3")
    _await_unsynced_write(manager, path, 4)
    assert fsyncs.of(path, began) == []
    began = time.monotonic()
    manager.shutdown()  # the exit's write is synced, and so is anything still waiting for its fsync
    assert len(fsyncs.of(path, began)) == 1 and not manager._unsynced


def test_a_failed_deferred_fsync_is_counted_and_the_session_written_again(manager, storage_dir, monkeypatch,
                                                                          no_pause):
    manager.initialize({"fsync": True, "fsync_interval": 1.0})
    fsyncs = _Fsyncs(monkeypatch)

    def broken(store, path):
        raise OSError(errno.EIO, "I/O error", str(path))

    monkeypatch.setattr(TelemetryDataStore, "sync", broken)
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    second, deferred = _second_write_deferred(manager, path)
    assert fsyncs.of(path, second) == []
    wait_for(lambda: get_error_handler().get_error_summary().get("storage.sync", {}).get("count", 0) == 1)
    # After a failed fsync the kernel may have dropped the data: the file is written again, and synced as it is.
    wait_for(lambda: os.stat(path).st_ino != deferred and fsyncs.of(path, second))
    assert _tasks_on_disk(path) == 2 and not manager._unsynced


def test_a_deferred_fsync_does_not_rewrite_the_session_of_a_task_still_running(manager, storage_dir, monkeypatch,
                                                                               no_pause):
    # The writer, idle, wakes when a deferred fsync comes due: it syncs, and writes nothing (a write there would land
    # in the middle of the running task, for nothing: the task's end is written when it comes).
    manager.initialize({"fsync": True, "fsync_interval": 0.5})
    fsyncs = _Fsyncs(monkeypatch)
    path = storage_dir / f"{manager.get_collector().session_id}.json"
    began, deferred = _second_write_deferred(manager, path)
    collector = manager.get_collector()
    collector.start_task("third", "still running")
    collector.record_llm_call("gpt-4", 7, 3, 0.1)
    [synced] = wait_for(lambda: fsyncs.of(path, began), timeout=10)  # the deferred fsync, of the second write
    # The interval counts from the fsync before it (the first write's), not from when the second task began.
    previous = max(when for when, _ in fsyncs.calls if when < synced)
    assert synced - previous >= 0.5 - 0.01 and not manager._unsynced
    assert os.stat(path).st_ino == deferred and _tasks_on_disk(path) == 2  # not written again
    collector.end_task("third", TaskStatus.COMPLETED)
    wait_for(lambda: _tasks_on_disk(path) == 3)
    assert get_error_handler().total_errors() == 0


def test_shutdown_writes_the_session_with_its_end(manager, storage_dir):
    record_task(manager)
    manager.shutdown()
    [name] = session_files(storage_dir)
    assert TelemetrySession.from_json((storage_dir / name).read_bytes()).end_time is not None


def test_get_session_data(manager, storage_dir):
    current = manager.get_session_data()
    assert current is not None and current.tasks == []
    record_task(manager)
    current = manager.get_session_data()
    assert current.session_id == manager.get_collector().session_id and len(current.tasks) == 1
    assert manager.get_session_data(current.session_id) == current
    assert manager.get_session_data(new_session_id()) is None
    old = new_session_id(time.time() - 60)
    write_session_file(storage_dir, old, tasks=2)
    assert len(manager.get_session_data(old).tasks) == 2
    assert manager.get_session_data(old) is manager.get_session_data(old)  # kept in memory


@pytest.mark.parametrize("bad", ["../x", "a/b", "x\0y", "/etc/passwd", "..", "", "../outside/{sid}", "{outside}",
                                 "{sid}/../{sid}", 123])
def test_path_traversal_ids_are_refused_without_touching_the_filesystem(manager, storage_dir, tmp_path, bad,
                                                                          monkeypatch):
    sid = new_session_id()
    outside = tmp_path / "outside"
    write_session_file(outside, sid)
    if isinstance(bad, str):
        bad = bad.format(sid=sid, outside=outside / f"{sid}.json")
    manager.get_storage_stats()  # initialized before we start watching
    touched = []
    for name in ("stat", "lstat", "open", "scandir", "listdir"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):
            touched.append(os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    assert manager.get_session_data(bad) is None
    monkeypatch.undo()
    assert [p for p in touched if isinstance(p, str) and not p.startswith(str(storage_dir))] == []


def test_storage_stats_has_the_specs_keys(manager, storage_dir):
    stats = manager.get_storage_stats()
    assert stats["storage_path"] == str(storage_dir)
    assert stats["active_collectors"] == 0
    assert stats["total_files"] == 0 and stats["total_bytes"] == 0
    assert stats["current_session_id"] == manager.get_collector().session_id
    record_task(manager)
    path = manager.flush_data()
    write_session_file(storage_dir, new_session_id(1e9))
    (storage_dir / "unrelated.txt").write_text("x" * 1000)
    stats = manager.get_storage_stats()
    assert stats["active_collectors"] == 1
    assert stats["total_files"] == 2
    assert stats["total_bytes"] == sum(p.stat().st_size for p in storage_dir.glob("2*.json"))
    assert stats["total_bytes"] > path.stat().st_size
    assert stats["current_session_id"] == path.stem


def test_all_session_ids_are_oldest_first_and_include_the_current_one(manager, storage_dir):
    now = time.time()
    stored = [new_session_id(now - 300), new_session_id(now - 100), new_session_id(now - 200)]
    for sid in stored:
        write_session_file(storage_dir, sid)
    assert manager.get_all_session_ids() == sorted(stored)
    record_task(manager)
    ids = manager.get_all_session_ids()
    assert ids == sorted(stored) + [manager.get_collector().session_id]
    manager.flush_data()
    assert manager.get_all_session_ids() == ids


def test_cleanup_old_data_returns_the_count_and_keeps_the_live_session(manager, storage_dir):
    now = time.time()
    old = [write_session_file(storage_dir, new_session_id(now - d * DAY), days_old=d) for d in (30, 20, 10)]
    young = write_session_file(storage_dir, new_session_id(now - DAY), days_old=1)
    other = storage_dir / "keep.txt"
    other.write_text("x")
    os.utime(other, (now - 100 * DAY, now - 100 * DAY))
    record_task(manager)
    live = manager.flush_data()
    os.utime(live, (now - 100 * DAY, now - 100 * DAY))
    assert manager.cleanup_old_data(max_age_days=7) == 3
    assert not any(p.exists() for p in old)
    assert young.exists() and other.exists() and live.exists()
    assert manager.cleanup_old_data(max_age_days=7) == 0
    assert manager.cleanup_old_data() == 0  # the config's 14 days
    assert manager.cleanup_old_data(max_age_days=-1) == 0  # refused, not raised


def test_auto_cleanup_runs_off_the_callers_thread(manager, storage_dir):
    old = write_session_file(storage_dir, new_session_id(time.time() - 30 * DAY), days_old=30)
    manager.initialize({"auto_cleanup": True, "max_file_age_days": 14})
    record_task(manager)
    wait_for(lambda: not old.exists())


# -- disabled -------------------------------------------------------------------------------------------------------
def test_disable_telemetry_records_and_writes_nothing(manager, storage_dir):
    manager.disable_telemetry()
    assert manager.is_enabled() is False
    record_task(manager)
    assert manager.flush_data() is None
    assert manager.get_session_data().tasks == []
    assert not storage_dir.exists()
    manager.enable_telemetry()
    assert manager.is_enabled() is True
    record_task(manager)
    assert manager.flush_data() is not None


def test_initialize_enabled_false_records_nothing(manager, storage_dir):
    manager.initialize({"enabled": False})
    assert manager.is_enabled() is False
    record_task(manager)
    manager.shutdown()
    assert not storage_dir.exists()


# -- bad disks ------------------------------------------------------------------------------------------------------
def make_unwritable(directory: Path, monkeypatch, how: str):
    """A storage folder nothing can be written into. chmod does not stop root, so then the refusal is simulated
    where the kernel would give it: creating the temp file, or replacing the session file."""
    if how == "chmod" and getattr(os, "geteuid", lambda: 0)() != 0:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o500)
        return lambda: directory.chmod(0o700)
    if how == "file":
        directory.parent.mkdir(parents=True, exist_ok=True)
        if directory.exists():
            for p in directory.iterdir():
                p.unlink()
            directory.rmdir()
        directory.write_text("a file where the folder should be")
        return directory.unlink
    real_open, real_replace = os.open, os.replace

    def refuse_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == directory:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def refuse_replace(src, dst, *args, **kwargs):
        if Path(dst).parent == directory:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open" if how == "chmod" else "replace",
                        refuse_open if how == "chmod" else refuse_replace)
    return monkeypatch.undo


@pytest.mark.parametrize("how", ["chmod", "file", "replace"])
def test_unwritable_storage_never_raises_and_a_later_flush_succeeds(manager, storage_dir, monkeypatch, caplog, how):
    record_task(manager, "before")
    first = manager.flush_data()
    assert first is not None
    restore = make_unwritable(storage_dir, monkeypatch, how)
    try:
        with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
            for i in range(8):
                record_task(manager, f"during-{i}")
                assert manager.flush_data() is None
        assert manager.get_storage_stats()["unwritten_changes"] is True
    finally:
        restore()
    assert len(telemetry_warnings(caplog)) == 1
    assert get_error_handler().get_error_summary()["storage.write"]["count"] >= 8
    assert len(manager.get_session_data().tasks) == 9  # collection went on in memory
    path = manager.flush_data()
    assert path is not None
    assert [t.task_id for t in TelemetrySession.from_json(path.read_bytes()).tasks] == \
        ["before"] + [f"during-{i}" for i in range(8)]
    wait_for(lambda: no_temp_files(storage_dir))


def test_a_full_disk_never_raises_keeps_the_old_file_and_a_later_flush_succeeds(manager, storage_dir,
                                                                                   monkeypatch, caplog):
    record_task(manager, "before")
    path = manager.flush_data()
    before = path.read_bytes()

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
        monkeypatch.setattr(os, "write", full)
        for i in range(3):
            record_task(manager, f"during-{i}")
            assert manager.flush_data() is None
        assert path.read_bytes() == before
        # The writer thread may be between creating its temp file and removing it after the failure.
        wait_for(lambda: no_temp_files(storage_dir))
        monkeypatch.undo()
    assert len(telemetry_warnings(caplog)) == 1
    assert "No space left" in get_error_handler().get_error_summary()["storage.write"]["last_error"]
    assert manager.flush_data() == path
    assert len(TelemetrySession.from_json(path.read_bytes()).tasks) == 4


def test_corrupt_files_are_skipped_with_one_warning(manager, storage_dir, caplog):
    good = write_session_file(storage_dir, new_session_id(time.time() - 30))
    corrupt = storage_dir / f"{new_session_id(time.time() - 20)}.json"
    corrupt.write_bytes(good.read_bytes()[:-25])
    with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
        ids = manager.get_all_session_ids()
        assert ids == [good.stem, corrupt.stem]
        sessions = [manager.get_session_data(sid) for sid in ids]
        assert [s.session_id if s else None for s in sessions] == [good.stem, None]
        assert manager.get_session_data(corrupt.stem) is None
    warned = telemetry_warnings(caplog)
    assert len(warned) == 1 and corrupt.stem in warned[0].getMessage()
    # A repaired file is read again.
    corrupt.write_bytes(good.read_bytes().replace(good.stem.encode(), corrupt.stem.encode()))
    assert manager.get_session_data(corrupt.stem).session_id == corrupt.stem


# -- secrets, caps, implicit tasks, roll-over -----------------------------------------------------------------------
def test_secrets_never_reach_the_file(manager, storage_dir, monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "sk-secret-123")
    monkeypatch.setenv("MY_DEPLOYMENT", "blue")
    manager.initialize({"environment_allowlist": ["MY_API_KEY", "MY_DEPLOYMENT"]})
    record_task(manager)
    path = manager.flush_data()
    manager.shutdown()
    env = json.loads(path.read_bytes())["environment"]["environment_variables"]
    assert env["MY_API_KEY"] == "***" and env["MY_DEPLOYMENT"] == "blue"
    for p in storage_dir.iterdir():
        assert b"sk-secret-123" not in p.read_bytes()


def test_memory_caps_apply_from_the_config(manager):
    manager.initialize({"max_records_per_task": 3, "max_string_length": 20})
    collector = manager.get_collector()
    collector.start_task("t", "x" * 1000)
    for _ in range(10):
        collector.record_llm_call("gpt-4", 10, 1, 0.1)
    collector.end_task("t")
    path = manager.flush_data()
    data = json.loads(path.read_bytes())
    task = data["tasks"][0]
    assert len(task["llm_calls"]) == 3 and task["dropped_records"] == {"llm_calls": 7}
    assert len(task["description"]) <= 20
    assert data["total_tokens"]["total_tokens"] == 110
    assert manager.get_storage_stats()["dropped_records"] == {"llm_calls": 7}


def test_records_outside_any_task_are_kept(manager, storage_dir):
    collector = manager.get_collector()
    collector.record_llm_call("gpt-4", 7, 3, 0.2)
    collector.record_tool_usage("grep", 0.1)
    session = TelemetrySession.from_json(manager.flush_data().read_bytes())
    [task] = session.tasks
    assert task.implicit and len(task.llm_calls) == 1 and len(task.tools) == 1
    assert session.total_tokens.total_tokens == 10
    manager.shutdown()
    [name] = session_files(storage_dir)
    final = TelemetrySession.from_json((storage_dir / name).read_bytes())
    assert final.tasks[0].status is TaskStatus.COMPLETED and final.tasks[0].end_time is not None


def test_a_full_session_rolls_over_to_a_new_one(manager, storage_dir):
    manager.initialize({"max_tasks_per_session": 3})
    collector = manager.get_collector()
    first_id = collector.session_id
    collector.record_tool_usage("loose", 0.1)  # an open implicit task must not block the roll-over
    for i in range(2):
        record_task(manager, f"a{i}")
    manager.flush_data()
    assert collector.session_id == first_id  # full, but the next task decides: it starts the next part
    record_task(manager, "b0")
    assert collector.session_id != first_id
    second = manager.flush_data()
    assert second.stem == collector.session_id
    assert manager.get_all_session_ids() == [first_id, second.stem]
    first = manager.get_session_data(first_id)
    assert len(first.tasks) == 3 and first.end_time is not None and first.tasks[0].implicit
    assert (first.series_id, first.part) == (first_id, 1)
    current = manager.get_session_data()
    assert [t.task_id for t in current.tasks] == ["b0"]
    assert (current.series_id, current.part) == (first_id, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_session(manager, storage_dir):
    record_task(manager, "parent")
    parent_id = manager.get_collector().session_id
    assert manager.get_session_data().environment.pid == os.getpid()  # the environment is known before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running pytest's cleanup
        code = 1
        try:
            os.close(read_end)
            child = TelemetryManager.get_instance()
            record_task(child, "child")
            path = child.flush_data()
            os.write(write_end, json.dumps({"sid": child.get_collector().session_id, "path": str(path)}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["sid"] != parent_id
    child_session = TelemetrySession.from_json(Path(report["path"]).read_bytes())
    assert [t.task_id for t in child_session.tasks] == ["child"]
    assert child_session.environment.pid == pid
    parent = manager.get_session_data()
    assert parent.session_id == parent_id and [t.task_id for t in parent.tasks] == ["parent"]
    assert TelemetrySession.from_json(manager.flush_data().read_bytes()).environment.pid == os.getpid()


# -- real processes -------------------------------------------------------------------------------------------------
def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter whose HOME and cache are inside tmp_path, so nothing reaches ~/.cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SOP_TELEMETRY_", "XDG_"))}
    environ.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(REPO))
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


RECORD_ONE_TASK = """
    from sop_telemetry import TelemetryManager, TaskStatus
    collector = TelemetryManager.get_instance().get_collector()
    collector.start_task("job", "one task")
    collector.record_llm_call("gpt-4", 150, 75, 3.2)
    collector.end_task("job", TaskStatus.COMPLETED)
    collector.record_tool_usage("after_the_task", 0.1)
"""


@pytest.mark.parametrize(("ending", "exit_code"), [("", 0), ("import sys; sys.exit(3)", 3),
                                                   ("raise RuntimeError('crash')", 1)])
def test_a_process_that_never_flushes_leaves_a_complete_file(tmp_path, ending, exit_code):
    out = tmp_path / "store"
    result = run_python(RECORD_ONE_TASK + f"\n    {ending}\n", tmp_path, SOP_TELEMETRY_DIR=str(out))
    assert result.returncode == exit_code, result.stderr
    [name] = session_files(out)
    session = TelemetrySession.from_json((out / name).read_bytes())
    job = [t for t in session.tasks if t.task_id == "job"][0]
    assert job.status is TaskStatus.COMPLETED and job.token_usage.total_tokens == 225
    assert [t.tools[0].tool_name for t in session.tasks if t.implicit] == ["after_the_task"]
    assert session.end_time is not None
    assert files_in(out) == [name]
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_sop_telemetry_disabled_in_the_environment_records_and_writes_nothing(tmp_path):
    out = tmp_path / "store"
    code = RECORD_ONE_TASK + """
    manager = TelemetryManager.get_instance()
    manager.enable_telemetry()
    collector.record_llm_call("gpt-4", 1, 1, 0.1)
    assert manager.is_enabled() is False
    assert manager.get_session_data().tasks == []
    assert manager.flush_data() is None
    """
    result = run_python(code, tmp_path, SOP_TELEMETRY_DIR=str(out), SOP_TELEMETRY_DISABLED="1")
    assert result.returncode == 0, result.stderr
    assert not out.exists()


def test_a_process_that_records_nothing_leaves_no_file(tmp_path):
    out = tmp_path / "store"
    code = """
    from sop_telemetry import TelemetryManager
    manager = TelemetryManager.get_instance()
    manager.initialize()
    manager.get_collector()
    assert manager.flush_data() is None
    assert manager.get_session_data().tasks == []
    assert manager.get_storage_stats()["total_files"] == 0
    assert manager.get_all_session_ids() == []
    """
    result = run_python(code, tmp_path, SOP_TELEMETRY_DIR=str(out))
    assert result.returncode == 0, result.stderr
    assert not out.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_CACHE_HOME is the Linux convention")
def test_the_default_folder_honours_xdg_cache_home(tmp_path):
    result = run_python(RECORD_ONE_TASK + """
    import platformdirs
    print(TelemetryManager.get_instance().get_storage_stats()["storage_path"])
    print(platformdirs.user_cache_path("ept") / "sop_agents")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    expected = tmp_path / "xdg" / "ept" / "sop_agents"
    assert result.stdout.split() == [str(expected), str(expected)]
    assert len(session_files(expected)) == 1
    assert stat.S_IMODE(expected.stat().st_mode) == 0o700


def test_writer_coalesces_writes_of_a_slow_session_and_loses_nothing(manager, monkeypatch):
    """Each background write here takes 10 ms; tasks end every 5 ms for half a second. Writing after every task end
    would take the writer (and the GIL) all the time; it pauses 20x the last write's duration instead, and the
    file still ends up with every task."""
    import time as _time

    from sop_telemetry.storage import TelemetryDataStore

    writes = []
    real_write = TelemetryDataStore.write

    def slow_write(self, session_id, payload):
        _time.sleep(0.01)
        writes.append(_time.perf_counter())
        return real_write(self, session_id, payload)

    monkeypatch.setattr(TelemetryDataStore, "write", slow_write)
    collector = manager.get_collector()
    for i in range(100):
        collector.start_task(f"t{i}", "quick")
        collector.record_llm_call("m", 1, 1, 0.0)
        collector.end_task(f"t{i}")
        _time.sleep(0.005)
    assert 1 <= len(writes) <= 20, len(writes)  # ~100 without the pause; ~3 with it
    gaps = [b - a for a, b in zip(writes, writes[1:], strict=False)]
    assert all(gap >= 0.15 for gap in gaps), gaps  # 20 x (10 ms write + building the file)
    manager.flush_data()
    assert len(manager.get_session_data().tasks) == 100
    assert len(TelemetrySession.from_json(manager.last_flush_path.read_text()).tasks) == 100


def test_a_write_during_another_threads_build_of_queued_events_waits_for_it(manager, storage_dir):
    """A task's end wakes the writer while another thread (a reader, or the recording thread at its queue limit) may
    be building the queued events. Taken from the queue but not yet in any task, they are briefly in neither list;
    a write that looked then found "no records", returned, and left the finished task unwritten until the next
    change (seen as a lost wake-up in the benchmark, 1 run in ~20)."""
    collector = manager.get_collector()
    outcome = {}

    def write_in_the_window() -> None:
        outcome["path"] = manager._write(final=False)

    def build(collector_) -> None:  # a queued event: runs inside materialize(), with the queue already emptied
        writer = threading.Thread(target=write_in_the_window)
        writer.start()
        writer.join(timeout=0.5)  # without the fix it returns at once, having written nothing
        outcome["joined_early"] = not writer.is_alive()
        outcome["thread"] = writer
        task = collector_.open_task("t", "built late", notify=False)
        collector_.close_task(task, TaskStatus.COMPLETED, notify=False)

    collector.pending.append(("test.build", build))
    collector.materialize()
    outcome["thread"].join(timeout=10)
    assert outcome["path"] is not None, outcome
    assert outcome["joined_early"] is False
    assert [t.task_id for t in TelemetrySession.from_json(outcome["path"].read_bytes()).tasks] == ["t"]
