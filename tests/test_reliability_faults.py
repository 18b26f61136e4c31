"""Faults injected into sop_telemetry itself: the agent never notices, and no finished task is lost.

- Every internal step that runs during an agent run is made to raise in turn; each scenario's result, exception
  and stream must be exactly those of an uninstrumented run, the error must be counted, and logged once.
- The storage directory fails (read-only, deleted, replaced by a file, full): nothing reaches the user, the data
  stays in memory and is written, whole, when the directory works again.
- Real processes: SIGKILL in the middle of a flush, every way of exiting, two writers and a cleaner at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from agent_runs import SCENARIOS, assert_same_outcome, uninstrumented
from fakes import ScriptedModel, add, call
from smolagents import ToolCallingAgent

from sop_telemetry import recorder
from sop_telemetry.collector import TelemetryCollector
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.integrations.patching import is_ours
from sop_telemetry.integrations.smolagents import SmolagentsIntegration
from sop_telemetry.manager import TelemetryManager
from sop_telemetry.storage import TelemetryDataStore, parse_session

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


class Injected(Exception):
    """The fault: what a bug inside sop_telemetry would raise."""


def _warnings(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sop_telemetry" and r.levelno >= logging.WARNING]


def assert_counted_and_logged_once(caplog: pytest.LogCaptureFixture, min_count: int = 1) -> Dict[str, Any]:
    """Every failing operation is in the error summary, and each is logged at warning level exactly once."""
    # The writer thread counts an error, then logs it: stop it first, so that both have happened.
    TelemetryManager.get_instance().shutdown(flush=False)
    summary = get_error_handler().get_error_summary()
    assert summary, "the injected fault was not counted"
    assert sum(op["count"] for op in summary.values()) >= min_count
    warnings = _warnings(caplog)
    for operation in summary:
        said = [r for r in warnings if r.getMessage().startswith(f"sop_telemetry: {operation} failed")]
        assert len(said) == 1, (operation, [r.getMessage() for r in warnings])
    assert len(warnings) == len(summary), [r.getMessage() for r in warnings]
    return summary


# -- every internal step raising in turn --------------------------------------------------------------------------
# (owner, attribute): what a run goes through at the public seams, from the integration down to the disk. On the
# agent's thread the integration calls the recorder API, which queues events; the records are built from the queue
# by the recorder's builders when the collector materializes it (the writer, a reader); the store writes them.
FAULT_POINTS = {
    "collector.add": (TelemetryCollector, "add"),
    "collector.open_task": (TelemetryCollector, "open_task"),
    "collector.close_task": (TelemetryCollector, "close_task"),
    "collector.open_fallback_task": (TelemetryCollector, "open_fallback_task"),
    "collector.changed": (TelemetryCollector, "changed"),
    "collector.materialize": (TelemetryCollector, "materialize"),
    "collector.snapshot": (TelemetryCollector, "snapshot"),
    "collector.snapshot_with_open_ids": (TelemetryCollector, "snapshot_with_open_ids"),
    "collector.build_session": (TelemetryCollector, "build_session"),
    "manager.get_collector": (TelemetryManager, "get_collector"),
    "storage.write": (TelemetryDataStore, "write"),
    "recorder.begin_run": (recorder, "begin_run"),
    "recorder.end_run": (recorder, "end_run"),
    "recorder.defer": (recorder, "defer"),
    "recorder.model_call": (recorder, "model_call"),
    "recorder.tool_call": (recorder, "tool_call"),
    "recorder.error_of": (recorder, "error_of"),
    "recorder.attr": (recorder, "attr"),
    "recorder.open_run": (recorder, "open_run"),
    "recorder.close_run": (recorder, "close_run"),
    "recorder.call_record": (recorder, "call_record"),
    "recorder.add_model_call": (recorder, "add_model_call"),
    "recorder.add_tool_call": (recorder, "add_tool_call"),
    "recorder.add_step": (recorder, "add_step"),
    "recorder.take_calls": (recorder, "take_calls"),
    "recorder.usage_of": (recorder, "usage_of"),
    "recorder.clip": (recorder, "clip"),
    "recorder.next_id": (recorder, "next_id"),
    "integration.setup": (SmolagentsIntegration, "setup"),
}
# Fault points a scenario never reaches (asserted below, so that the matrix cannot quietly go hollow).
NOT_REACHED = (
    # (only streamed replies, errors and calls outside any run take the general path, on which model_call runs)
    {("recorder.model_call", s) for s in SCENARIOS if s not in ("stream", "direct_calls", "failing_model")}
    | {("recorder.tool_call", s) for s in SCENARIOS if s not in ("direct_calls", "tool_calling")}
    | {("collector.open_fallback_task", s) for s in SCENARIOS if s != "direct_calls"}
    | {("recorder.take_calls", s) for s in SCENARIOS if s != "stream"}  # (planning steps: only this one plans)
    # (a run that ends well, with no failing step or call, has no error to read)
    | {("recorder.error_of", "code")}
    # (the integration defers only a planning step's end and, before a failed model call, its model's credentials)
    | {("recorder.defer", s) for s in SCENARIOS if s not in ("stream", "failing_model", "direct_calls")}
    | {(p, "direct_calls") for p in ("recorder.begin_run", "recorder.end_run", "recorder.open_run",
                                     "recorder.close_run", "recorder.add_step", "recorder.take_calls")}
    # (installed before any scenario runs: a fault in it is the integration contract's, tested apart)
    | {("integration.setup", s) for s in SCENARIOS}
)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("point", sorted(FAULT_POINTS))
def test_a_failing_internal_step_never_changes_the_run(manager, monkeypatch, caplog, point, scenario):
    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    run = SCENARIOS[scenario]
    baseline = uninstrumented(run)

    owner, attribute = FAULT_POINTS[point]
    if owner == "the live collector":
        owner = manager.get_collector()
    calls = []

    def fault(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise Injected(f"injected into {point}")

    monkeypatch.setattr(owner, attribute, fault)
    observed = run()
    assert_same_outcome(baseline, observed)
    # What runs after the agent (the writer, an explicit flush, the exit hook) must not raise either.
    manager.flush_data()
    manager.get_session_data()
    manager.get_storage_stats()
    manager._at_exit()

    if (point, scenario) in NOT_REACHED:
        assert not calls
        return
    assert calls, f"{point} was not reached by {scenario}: the fault tested nothing"
    summary = assert_counted_and_logged_once(caplog)
    assert any(f"injected into {point}" in op["last_error"] for op in summary.values()), summary


def test_repeated_faults_are_logged_once_not_once_per_call(manager, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    monkeypatch.setattr(recorder, "add_model_call", lambda *a: (_ for _ in ()).throw(Injected("again")))
    for _ in range(5):
        assert_same_outcome(uninstrumented(SCENARIOS["tool_calling"]), SCENARIOS["tool_calling"]())
    manager.get_collector().materialize()  # the records (and so the faults) of the last runs may still be queued
    summary = assert_counted_and_logged_once(caplog, min_count=15)
    assert summary["recorder.model_call"]["count"] == 15  # 3 model calls per run


def test_a_failing_integration_setup_leaves_the_framework_as_shipped(manager, monkeypatch, caplog):
    """The integration contract's seam: a bug in setup() is counted and logged once, and the run is the same."""
    from smolagents.models import Model

    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    integration = SmolagentsIntegration.__new__(SmolagentsIntegration)  # (not the live one: its patches stay)
    SmolagentsIntegration.__init__(integration)
    monkeypatch.setattr(SmolagentsIntegration, "setup", lambda self: (_ for _ in ()).throw(Injected("setup")))
    generate = Model.__dict__["generate"]
    assert integration.install() is False and integration.install() is False
    assert integration.is_installed() is False and Model.__dict__["generate"] is generate
    summary = assert_counted_and_logged_once(caplog, min_count=2)
    assert summary["integrations.smolagents.install"]["count"] == 2


def test_an_uninstrumented_baseline_really_is_uninstrumented(manager):
    """The comparison above means something only if the baseline ran with smolagents as shipped."""
    from smolagents.agents import MultiStepAgent
    from smolagents.models import Model

    seen = []

    def probe() -> Any:
        seen.append((MultiStepAgent.__dict__["run"], Model.__dict__["generate"]))
        return SCENARIOS["code"]()

    tasks_before = manager.get_collector().task_count()
    uninstrumented(probe)
    assert manager.get_collector().task_count() == tasks_before
    assert not any(is_ours(f) for f in seen[0])
    assert is_ours(MultiStepAgent.__dict__["run"]) and is_ours(Model.__dict__["generate"])


# -- the storage directory failing ---------------------------------------------------------------------------------
class BrokenDisk:
    """Makes file operations inside one directory fail with `error` (an errno) while `broken` is set.

    Running as root, chmod does not stop writes, so the failures are simulated at the os-function level: exactly
    what a read-only mount (EROFS), a denied directory (EACCES) or a full disk (ENOSPC) looks like to our code.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path, error: int, on: str) -> None:
        self.directory = str(directory)
        self.error = error
        self.on = on
        self.broken = False
        self.hits = 0
        self._fds: set = set()
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_replace, real_mkdir = os.replace, os.mkdir

        def inside(path: Any) -> bool:
            try:
                return os.fspath(path).startswith(self.directory)
            except TypeError:
                return False

        def fail(path: Any = "") -> None:
            self.hits += 1
            raise OSError(self.error, os.strerror(self.error), os.fspath(path) if path else None)

        def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if self.broken and self.on in ("open", "all") and inside(path) and flags & (os.O_WRONLY | os.O_RDWR):
                fail(path)
            fd = real_open(path, flags, mode, **kw)
            if inside(path):
                self._fds.add(fd)
            return fd

        def fake_write(fd: int, data: Any) -> int:
            if self.broken and self.on in ("write", "all") and fd in self._fds:
                # A full disk: part of the data goes in, then the write fails.
                half = max(1, len(data) // 2)
                real_write(fd, bytes(data[:half]))
                fail()
            return real_write(fd, data)

        def fake_fsync(fd: int) -> None:
            if self.broken and self.on == "fsync" and fd in self._fds:
                fail()
            return real_fsync(fd)

        def fake_replace(src: Any, dst: Any, **kw: Any) -> None:
            if self.broken and self.on in ("replace", "all") and inside(dst):
                fail(dst)
            return real_replace(src, dst, **kw)

        def fake_mkdir(path: Any, mode: int = 0o777, **kw: Any) -> None:
            if self.broken and self.on == "all" and inside(path):
                fail(path)
            return real_mkdir(path, mode, **kw)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)


def _run_task(number: int) -> Any:
    model = ScriptedModel([call("add", a=number, b=1), call("final_answer", answer=str(number + 1))],
                          model_id=f"model-{number}")
    return ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run(f"task {number}")


def _file_tasks(storage_dir: Path) -> List[str]:
    files = sorted(storage_dir.glob("*.json"))
    assert len(files) == 1, files
    session = TelemetryDataStore(storage_dir).load(files[0].stem)  # (with its tail: the tasks ended since)
    assert all(t.status.value == "completed" for t in session.tasks)
    return [t.description for t in session.tasks]


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


@pytest.mark.parametrize(
    "error,on",
    [
        (errno.EROFS, "all"),  # a read-only file system: nothing can be created
        (errno.EACCES, "open"),  # a directory we may not write into
        (errno.ENOSPC, "write"),  # a full disk: half a file goes in, then the write fails
        (errno.ENOSPC, "fsync"),  # delayed allocation: the disk is found full at fsync
        (errno.EIO, "replace"),  # the rename fails
    ],
)
def test_a_broken_directory_loses_nothing_and_heals(manager, storage_dir, monkeypatch, caplog, error, on):
    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    # (fsync_interval 0: every write meets the broken fsync, none is renamed into place unsynced to be synced
    # later; that path is tested in test_manager.py.)
    manager.initialize({"storage_dir": str(storage_dir), "auto_cleanup": False, "fsync": True, "fsync_interval": 0})
    assert _run_task(1) == "2"
    assert manager.flush_data() is not None
    before = (storage_dir / f"{manager.get_collector().session_id}.json").read_bytes()

    disk = BrokenDisk(monkeypatch, storage_dir, error, on)
    disk.broken = True
    for number in range(2, 9):  # more failures than the error handler's threshold
        assert _run_task(number) == str(number + 1)
    assert manager.flush_data() is None
    manager._at_exit()  # even the final write at exit fails quietly
    assert disk.hits >= 2
    # The last complete file is still there, untouched, and no temp file was left behind. (Looked at under the
    # write lock: the background writer may be retrying at this very moment, with its temp file in the directory.)
    with manager._write_lock:
        assert (storage_dir / f"{manager.get_collector().session_id}.json").read_bytes() == before
        assert [p.name for p in storage_dir.iterdir() if p.name.endswith(".tmp")] == []
    summary = assert_counted_and_logged_once(caplog, min_count=2)
    assert summary["storage.write"]["last_error_type"] in ("OSError", "PermissionError")

    disk.broken = False
    assert manager.flush_data() is not None
    assert _file_tasks(storage_dir) == [f"task {n}" for n in range(1, 9)]


def test_the_writer_retries_by_itself_once_the_directory_works(manager, storage_dir, monkeypatch):
    """No flush_data(), no exit, nothing new recorded: the background writer alone catches up."""
    manager.initialize({"flush_interval": 0.05})
    monkeypatch.setattr(get_error_handler(), "failure_threshold", 10 ** 6)  # no cool-down: timing-independent
    _run_task(1)
    _wait_for(lambda: manager._written_generation == manager.get_collector().generation)
    disk = BrokenDisk(monkeypatch, storage_dir, errno.ENOSPC, "write")
    disk.broken = True
    _run_task(2)
    _wait_for(lambda: disk.hits >= 2)  # the task's end, then at least one periodic retry
    assert _file_tasks(storage_dir) == ["task 1"]
    disk.broken = False
    _wait_for(lambda: _file_tasks(storage_dir) == ["task 1", "task 2"])


def test_written_again_by_the_exit_hook_when_the_directory_heals(manager, storage_dir, monkeypatch):
    disk = BrokenDisk(monkeypatch, storage_dir, errno.ENOSPC, "write")
    disk.broken = True
    for number in range(1, 7):
        _run_task(number)
    for _ in range(5):  # forced writes still try; repeated failures suspend the background ones
        assert manager.flush_data() is None
    assert get_error_handler().is_suspended("storage.write")  # the writer thread stopped hammering the disk
    disk.broken = False
    manager._at_exit()
    assert _file_tasks(storage_dir) == [f"task {n}" for n in range(1, 7)]


def test_directory_deleted_mid_session(manager, storage_dir):
    _run_task(1)
    assert manager.flush_data() is not None
    shutil.rmtree(storage_dir)
    _run_task(2)  # the background writer recreates the directory at the end of the task
    _wait_for(lambda: storage_dir.is_dir() and any(storage_dir.glob("*.json")))
    _wait_for(lambda: manager._written_generation == manager.get_collector().generation)
    assert _file_tasks(storage_dir) == ["task 1", "task 2"]


def test_directory_replaced_by_a_file(manager, storage_dir, caplog):
    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    _run_task(1)
    assert manager.flush_data() is not None
    shutil.rmtree(storage_dir)
    storage_dir.write_text("somebody else's file")
    _run_task(2)
    _run_task(3)
    assert manager.flush_data() is None
    assert storage_dir.read_text() == "somebody else's file"
    assert_counted_and_logged_once(caplog)
    storage_dir.unlink()
    assert manager.flush_data() is not None
    assert _file_tasks(storage_dir) == ["task 1", "task 2", "task 3"]


# -- real processes ------------------------------------------------------------------------------------------------
def _child_env(storage_dir: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("SOP_TELEMETRY_DISABLED", None)
    env["SOP_TELEMETRY_DIR"] = str(storage_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO)])
    env.update(extra)
    return env


_ONE_RUN = textwrap.dedent(
    """
    import errno, os, sys
    import sop_telemetry
    from smolagents import ToolCallingAgent
    from fakes import ScriptedModel, add, call
    if sys.argv[1] == "disk_full":
        import sop_telemetry.storage as storage

        def write(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))

        storage.TelemetryDataStore.write = write
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    print(ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("one run"))
    """
)


@pytest.mark.parametrize("bad", ["a_file", "under_a_file"])
def test_a_storage_folder_that_cannot_be_used_falls_back_and_says_where(tmp_path, bad):
    blocker = tmp_path / "blocker"
    blocker.write_text("somebody's file")
    configured = blocker if bad == "a_file" else blocker / "telemetry"
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", _ONE_RUN, "-"], env=_child_env(configured, XDG_CACHE_HOME=str(cache)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "3\n"
    fallback = cache / "ept" / "sop_agents"
    reason = "it is a file, not a folder" if bad == "a_file" else "Not a directory"
    assert done.stderr == (
        f"sop_telemetry: cannot use the storage folder {configured} ({reason}); sessions are written to {fallback} "
        "instead. Set SOP_TELEMETRY_DIR (or storage_dir) to a writable folder.\n")
    (written,) = fallback.glob("*.json")
    assert [t.description for t in parse_session(written.read_bytes()).tasks] == ["one run"]
    assert blocker.read_text() == "somebody's file"


def test_a_storage_failure_is_one_line_on_stderr_and_its_traceback_goes_to_the_debug_log(tmp_path):
    storage_dir = tmp_path / "telemetry"
    done = subprocess.run([sys.executable, "-c", _ONE_RUN, "disk_full"], env=_child_env(storage_dir),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "3\n"
    assert done.stderr == (
        f"sop_telemetry: storage.write failed (OSError: [Errno 28] No space left on device: '{storage_dir}'); the "
        f"session stays in memory and is written when {storage_dir} works again; to write elsewhere, set "
        "SOP_TELEMETRY_DIR to a writable folder. Further failures of this operation are logged at debug level.\n")


def test_the_traceback_of_a_failure_is_logged_at_debug_level_only(manager, caplog):
    caplog.set_level(logging.DEBUG, logger="sop_telemetry")
    get_error_handler().record_error("storage.write", OSError(errno.ENOSPC, "No space left on device"))
    warning, debug = [r for r in caplog.records if r.name == "sop_telemetry"]
    assert (warning.levelno, warning.exc_info) == (logging.WARNING, None)
    assert debug.levelno == logging.DEBUG and debug.exc_info is not None


# A child that keeps rewriting one big session: task N holds CALLS model calls, every flush adds one task.
FLUSH_LOOP = textwrap.dedent(
    """
    import os, sys
    from sop_telemetry.manager import TelemetryManager
    CALLS = int(os.environ["CALLS"])
    BIG = int(os.environ.get("BIG", "0"))  # a huge first description: most of a flush is then spent writing
    manager = TelemetryManager.get_instance()
    # One session file however big it grows: this is about a kill in the middle of a write, not about roll-over.
    manager.initialize({"auto_cleanup": False, "fsync": os.environ.get("FSYNC") == "1", "flush_interval": 3600,
                        "max_string_length": max(16, BIG), "max_session_bytes": 1 << 40})
    collector = manager.get_collector()
    pause = os.environ.get("PAUSE")
    if pause:
        # Deterministic kill points: at the second flush, tell the parent where we are, then wait to be killed.
        real = getattr(os, pause)
        state = {"flushes": 0}
        def paused(*args, **kwargs):
            if pause == "write" and not os.readlink(f"/proc/self/fd/{args[0]}").endswith(".tmp"):
                pass  # a finished task appended to the session's tail: not a flush of the session file
            elif pause == "write":
                state["flushes"] += 1
                if state["flushes"] == 2:
                    real(args[0], bytes(args[1][: len(args[1]) // 2]))
                    print("paused", flush=True)
                    sys.stdin.read()
            elif pause == "replace":
                state["flushes"] += 1
                if state["flushes"] == 2:
                    print("paused", flush=True)
                    sys.stdin.read()
            return real(*args, **kwargs)
        setattr(os, pause, paused)
    n = 0
    while True:
        collector.start_task(f"t{n}", "x" * BIG if n == 0 and BIG else f"task number {n}")
        for i in range(CALLS):
            collector.record_llm_call("m", prompt_tokens=n, completion_tokens=1, duration=0.01)
        collector.end_task(f"t{n}")
        manager.flush_data()
        print(n, flush=True)
        n += 1
    """
)


def _check_directory_after_kill(storage_dir: Path, calls: int) -> int:
    """The session file is complete (tasks t0..tN, each whole) or absent; listing and loading never break."""
    store = TelemetryDataStore(storage_dir)
    ids = store.session_ids()
    assert len(ids) <= 1
    sessions = list(store.iter_sessions())
    assert len(sessions) == len(ids)
    if not sessions:
        return -1
    session = sessions[0]
    for n, task in enumerate(session.tasks):
        assert task.task_id == f"t{n}"
        if task.status.value == "running":
            # The background writer may have saved a snapshot while the last task was still recording.
            assert n == len(session.tasks) - 1 and len(task.llm_calls) <= calls
            continue
        assert task.status.value == "completed" and len(task.llm_calls) == calls
        assert task.token_usage.prompt_tokens == n * calls
    return len(session.tasks) - 1


_line_queues: Dict[int, "queue.Queue[str]"] = {}


def _read_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The child's next line. Read by a thread into a queue: select() on the pipe would miss lines that an earlier
    readline() already pulled into the file object's buffer (two lines written together), and wait for nothing."""
    lines = _line_queues.get(proc.pid)
    if lines is None:
        lines = _line_queues[proc.pid] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        raise AssertionError("the child said nothing before the deadline") from None


@pytest.mark.parametrize("pause", ["write", "replace"])
def test_sigkill_in_the_middle_of_a_flush_leaves_the_previous_complete_file(tmp_path, pause):
    storage_dir = tmp_path / "telemetry"
    proc = subprocess.Popen([sys.executable, "-c", FLUSH_LOOP], env=_child_env(storage_dir, CALLS="200", PAUSE=pause),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # The second write of the session pauses (the main thread's flush or the background writer's, whichever
        # comes second), so "0" may come before or not at all.
        while (line := _read_line(proc)) != "paused":
            assert line == "0"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    # Killed half-way through writing flush 2: the file is an earlier one, complete (task t0, and t1 if the
    # background writer saved it while it was recording); the partial temp file is there...
    assert _check_directory_after_kill(storage_dir, 200) in (0, 1)
    temps = [p for p in storage_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1
    # ...is not listed, and goes with the next cleanup once stale.
    old = time.time() - 2 * 3600
    os.utime(temps[0], (old, old))
    TelemetryDataStore(storage_dir).cleanup(max_age_days=14)
    assert not temps[0].exists()
    assert _check_directory_after_kill(storage_dir, 200) in (0, 1)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_broken_file(tmp_path):
    rng = random.Random(7)
    mid_flush = 0
    for attempt in range(20):
        storage_dir = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", FLUSH_LOOP],
                                env=_child_env(storage_dir, CALLS="300", BIG=str(10_000_000), FSYNC="1"),
                                stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(rng.randint(1, 4)):
                _read_line(proc)
            # Where in the next flush the kill lands is the random part; what must hold does not depend on it.
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert _check_directory_after_kill(storage_dir, 300) >= 0
        mid_flush += any(p.name.endswith(".tmp") for p in storage_dir.iterdir())
    print(f"{mid_flush} of 20 kills landed while a temp file was being written")


EXIT_CHILD = textwrap.dedent(
    """
    import sys
    import sop_telemetry
    from fakes import ScriptedModel, add, call
    from smolagents import ToolCallingAgent
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    print(ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("finished before exit"))
    how = sys.argv[1]
    if how == "sys.exit":
        sys.exit(3)
    if how == "uncaught":
        raise RuntimeError("the program crashes after the task")
    if how == "failing_run":
        ToolCallingAgent(tools=[add], model=ScriptedModel([ValueError("model down")]), verbosity_level=0).run("fails")
    """
)


@pytest.mark.parametrize("how,code", [("normal", 0), ("sys.exit", 3), ("uncaught", 1), ("failing_run", 1)])
def test_every_way_of_exiting_leaves_the_session(tmp_path, how, code):
    storage_dir = tmp_path / "telemetry"
    done = subprocess.run([sys.executable, "-c", EXIT_CHILD, how], env=_child_env(storage_dir, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    sessions = list(TelemetryDataStore(storage_dir).iter_sessions())
    assert len(sessions) == 1
    session = sessions[0]
    assert session.end_time is not None  # written by the exit hook, not only by the writer thread
    first = session.tasks[0]
    assert (first.description, first.status.value, len(first.llm_calls), len(first.tools)) == (
        "finished before exit", "completed", 2, 2)
    if how == "failing_run":
        assert [t.status.value for t in session.tasks] == ["completed", "failed"]
    else:
        assert len(session.tasks) == 1
    assert "sop_telemetry" not in done.stderr.replace("sop_telemetry/", "")


WRITER_CHILD = textwrap.dedent(
    """
    import os, sys
    from sop_telemetry.manager import TelemetryManager
    name, tasks = sys.argv[1], int(sys.argv[2])
    manager = TelemetryManager.get_instance()
    # A small max_tasks_per_session: each writer also rolls over into new sessions while the others write.
    manager.initialize({"auto_cleanup": False, "fsync": False, "max_tasks_per_session": 7, "flush_interval": 3600})
    collector = manager.get_collector()
    sys.stdin.readline()  # everyone starts together
    for n in range(tasks):
        collector.start_task(f"{name}-{n}", f"{name} task {n}")
        collector.record_llm_call(name, prompt_tokens=n, completion_tokens=1)
        collector.end_task(f"{name}-{n}")
        manager.flush_data()
    if os.fork() == 0:  # a forked child writes its own session, never its parent's
        collector = manager.get_collector()
        collector.start_task(f"{name}-forked", f"{name} forked")
        collector.end_task(f"{name}-forked")
        sys.exit(0)
    os.wait()
    """
)

CLEANER_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from sop_telemetry.storage import TelemetryDataStore
    store = TelemetryDataStore(Path(sys.argv[1]))
    sys.stdin.readline()
    removed = set()
    for _ in range(int(sys.argv[2])):
        removed.update(store.cleanup(max_age_days=1))
        for session in store.iter_sessions():  # reading while others write: never a broken file
            assert session.tasks
    print(" ".join(sorted(removed)))
    """
)


def test_two_writers_and_a_cleaner_at_once_lose_nothing(tmp_path):
    storage_dir = tmp_path / "telemetry"
    storage_dir.mkdir()
    # Planted: two expired sessions (to be cleaned), a stale temp file, and a file that is not ours.
    store = TelemetryDataStore(storage_dir)
    expired = ["20200101T000000_000000_0000000a", "20200101T000000_000000_0000000b"]
    old = time.time() - 30 * 86400
    for sid in expired:
        path = store.write(sid, json.dumps({"session_id": sid, "start_time": "2020-01-01T00:00:00Z",
                                            "tasks": [{"task_id": "x", "start_time": "2020-01-01T00:00:00Z"}]}))
        os.utime(path, (old, old))
    (storage_dir / "notes.txt").write_text("keep me")
    os.utime(storage_dir / "notes.txt", (old, old))

    tasks = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER_CHILD, name, str(tasks)], env=_child_env(storage_dir),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("alpha", "beta")
    ]
    procs.append(subprocess.Popen([sys.executable, "-c", CLEANER_CHILD, str(storage_dir), "200"],
                                  env=_child_env(storage_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert set(outputs[2][0].split()) == set(expired)

    seen: Dict[str, List[str]] = {"alpha": [], "beta": []}
    forked: Dict[str, int] = {"alpha": 0, "beta": 0}
    for session in store.iter_sessions():
        owners = {t.task_id.rsplit("-", 1)[0] for t in session.tasks}
        assert len(owners) == 1, f"{session.session_id} mixes writers: {owners}"
        owner = owners.pop()
        for task in session.tasks:
            if task.task_id.endswith("-forked"):
                forked[owner] += 1
                assert len(session.tasks) == 1  # the forked child's session holds only its own task
            else:
                seen[owner].append(task.task_id)
    for name in seen:
        assert sorted(seen[name]) == sorted(f"{name}-{n}" for n in range(tasks))
        assert forked[name] == 1
    assert (storage_dir / "notes.txt").read_text() == "keep me"
    assert len(store.session_ids()) == len(list(store.iter_sessions()))
