"""A long-lived process: sessions roll over into parts at their bounds, overlapping tasks included, and every task
is in exactly one file, also after a SIGKILL in the middle of a roll-over (docs/long-running.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from sop_telemetry import TaskStatus
from sop_telemetry.storage import TelemetryDataStore


def _parts(storage_dir: Path) -> List:
    """Every stored part, oldest first, read as every reader reads them (file and tail)."""
    return list(TelemetryDataStore(storage_dir).iter_sessions())


def _task_ids(sessions) -> List[str]:
    return [t.task_id for s in sessions for t in s.tasks if not t.implicit]


def _run(collector, task_id: str, prompt: int) -> None:
    collector.start_task(task_id, f"task {task_id}")
    collector.record_llm_call("gpt-4o", prompt, 1, 0.01)
    collector.end_task(task_id, TaskStatus.COMPLETED)


def test_overlapping_tasks_on_two_threads_roll_over_and_each_is_written_once(manager, storage_dir):
    manager.initialize({"max_tasks_per_session": 5})
    collector = manager.get_collector()
    started, short_done = threading.Event(), threading.Event()
    errors: List[BaseException] = []

    def long_tasks() -> None:  # each stays open while the other thread runs twelve: over two bounds
        try:
            for n in range(3):
                collector.start_task(f"long-{n}", "a long task")
                collector.record_llm_call("gpt-4o", 1000 + n, 1, 0.01)
                started.set()
                short_done.wait(timeout=30)
                short_done.clear()
                collector.end_task(f"long-{n}", TaskStatus.COMPLETED)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def short_tasks() -> None:
        try:
            for n in range(3):
                started.wait(timeout=30)
                started.clear()
                for i in range(12):
                    _run(collector, f"short-{n}-{i}", 10 * n + i)
                short_done.set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=long_tasks), threading.Thread(target=short_tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    manager.shutdown()

    sessions = _parts(storage_dir)
    expected = {f"long-{n}" for n in range(3)} | {f"short-{n}-{i}" for n in range(3) for i in range(12)}
    ids = _task_ids(sessions)
    assert sorted(ids) == sorted(expected)  # nothing lost, nothing twice
    assert len(sessions) >= 39 // 5
    assert all(len(s.tasks) <= 5 for s in sessions)
    # One series, parts numbered 1..n, each ended; the tokens add up exactly to what was recorded.
    assert {s.series_id for s in sessions} == {sessions[0].session_id}
    assert [s.part for s in sessions] == list(range(1, len(sessions) + 1))
    assert all(s.end_time is not None and all(t.status is TaskStatus.COMPLETED for t in s.tasks) for s in sessions)
    prompt = sum(s.total_tokens.prompt_tokens for s in sessions)
    assert prompt == sum(1000 + n for n in range(3)) + sum(10 * n + i for n in range(3) for i in range(12))
    # A long task, still open when its part filled up, moved on whole: it started before the part it is in.
    moved = [t for s in sessions for t in s.tasks if t.task_id.startswith("long-") and t.start_time < s.start_time]
    assert len(moved) == 3


def test_a_part_also_ends_at_its_size_in_bytes(manager, storage_dir):
    manager.initialize({"max_tasks_per_session": 1000, "max_session_bytes": 3000})
    collector = manager.get_collector()
    for n in range(12):
        _run(collector, f"t{n}", n)
        manager.flush_data()  # (the size the bound is checked against is what the writer has written)
    manager.shutdown()
    sessions = _parts(storage_dir)
    assert _task_ids(sessions) == [f"t{n}" for n in range(12)]
    assert len(sessions) >= 3
    sizes = [p.stat().st_size for p in sorted(storage_dir.glob("*.json"))]
    one_task = max(sizes) // max(len(s.tasks) for s in sessions)
    assert all(size <= 3000 + 2 * one_task for size in sizes)


def test_an_ended_part_is_readable_at_once_by_its_id(manager):
    manager.initialize({"max_tasks_per_session": 2})
    collector = manager.get_collector()
    first = collector.session_id
    for n in range(3):
        _run(collector, f"t{n}", n)
    assert collector.series_id == first and collector.part == 2
    part = manager.get_session_data(first)
    assert [t.task_id for t in part.tasks] == ["t0", "t1"] and part.end_time is not None
    assert manager.get_storage_stats()["current_part"] == 2


def _cli(storage_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(storage_dir), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_lists_a_series_as_its_parts_and_reports_each_task_once(manager, storage_dir):
    manager.initialize({"max_tasks_per_session": 2})
    collector = manager.get_collector()
    series = collector.session_id
    for n in range(5):
        _run(collector, f"t{n}", 100)
    manager.shutdown()
    rows = json.loads(_cli(storage_dir, "--json", "list"))
    assert [(r["series_id"], r["part"], r["tasks"]) for r in rows] == [(series, 1, 2), (series, 2, 2), (series, 3, 1)]
    table = _cli(storage_dir, "list").splitlines()
    assert table[1].split()[:2] == ["session", "part"]
    assert [line.split()[1:4] for line in table[2:]] == [[str(n), "of", series] for n in (1, 2, 3)]
    report = json.loads(_cli(storage_dir, "--json", "report"))
    assert (report["sessions"], report["series"], report["tasks"]) == (3, 1, 5)
    assert report["total"]["prompt_tokens"] == 500
    assert "3 (1 series)" in _cli(storage_dir, "report")
    shown = _cli(storage_dir, "show", rows[1]["session_id"])
    assert f"2 of {series}" in shown


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    from sop_telemetry import TaskStatus
    from sop_telemetry.manager import TelemetryManager
    from sop_telemetry.storage import TelemetryDataStore

    directory, kill_at, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
    log = open(log_path, "a", buffering=1)
    real_write, real_append = TelemetryDataStore.write, TelemetryDataStore.append_tail
    sealed = [0]

    def note(payload, append):
        text = payload.decode() if isinstance(payload, bytes) else payload
        tasks = [json.loads(line) for line in text.splitlines()] if append else json.loads(text)["tasks"]
        for task in tasks:
            log.write(json.dumps([task["task_id"], task["end_time"] is not None]) + "\\n")

    def write(self, session_id, payload, sync=True):
        # A part's end is the one write of a file with an end time before the exit's.
        ended = json.loads(payload)["end_time"] is not None and not exiting.is_set()
        if ended:
            sealed[0] += 1
        if ended and sealed[0] == 3 and kill_at == "before":
            os.kill(os.getpid(), signal.SIGKILL)  # the part's new file not written: its old one and tail remain
        path = real_write(self, session_id, payload, sync)
        note(payload, False)
        if ended and sealed[0] == 3 and kill_at == "after":
            os.kill(os.getpid(), signal.SIGKILL)  # written, its tail not yet removed, the next part not written
        return path

    def append_tail(self, session_id, lines, sync=True):
        path = real_append(self, session_id, lines, sync)
        note(lines, True)
        return path

    TelemetryDataStore.write, TelemetryDataStore.append_tail = write, append_tail
    exiting = threading.Event()
    manager = TelemetryManager.get_instance()
    manager.initialize({"storage_dir": directory, "auto_cleanup": False, "fsync": False,
                        "max_tasks_per_session": 5, "flush_interval": 3600})
    collector = manager.get_collector()

    def worker(name):
        for n in range(40):
            collector.start_task(f"{name}-{n}", "a task")
            collector.record_llm_call("gpt-4o", n, 1, 0.01)
            collector.end_task(f"{name}-{n}", TaskStatus.COMPLETED)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    exiting.set()
    """
)


def _child(tmp_path: Path, kill_at: str) -> Tuple[int, Path, Dict[str, bool]]:
    storage_dir = tmp_path / "telemetry"
    log = tmp_path / "written.log"
    done = subprocess.run([sys.executable, "-c", CHILD, str(storage_dir), kill_at, str(log)],
                          capture_output=True, text=True, timeout=120)
    written: Dict[str, bool] = {}
    for line in log.read_text().splitlines():
        task_id, ended = json.loads(line)
        written[task_id] = written.get(task_id, False) or ended
    return done.returncode, storage_dir, written


def test_a_process_past_its_bound_leaves_parts_that_add_up_to_its_tasks(tmp_path):
    code, storage_dir, _written = _child(tmp_path, "never")
    assert code == 0
    sessions = _parts(storage_dir)
    assert sorted(_task_ids(sessions)) == sorted(f"{name}-{n}" for name in "ab" for n in range(40))
    assert len(sessions) >= 80 // 5 and len({s.series_id for s in sessions}) == 1
    assert not list(storage_dir.glob(".*.tail.jsonl"))  # every part ended whole


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("kill_at", ["before", "after"])
def test_killed_in_the_middle_of_a_roll_over_nothing_written_is_lost_or_doubled(tmp_path, kill_at):
    code, storage_dir, written = _child(tmp_path, kill_at)
    assert code == -signal.SIGKILL
    sessions = _parts(storage_dir)
    ids = _task_ids(sessions)
    assert len(ids) == len(set(ids))  # no task twice, though a part's old file and tail are still there
    assert set(ids) <= {f"{name}-{n}" for name in "ab" for n in range(40)}
    ended_on_disk = {t.task_id for s in sessions for t in s.tasks if t.end_time is not None}
    assert {task_id for task_id, ended in written.items() if ended} <= ended_on_disk  # nothing written is lost
    assert len(sessions) >= 2 and [s.part for s in sessions] == list(range(1, len(sessions) + 1))
