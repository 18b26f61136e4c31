"""The writer reuses each finished task's JSON between writes: the file must stay exactly what a fresh
`TelemetrySession` would serialize, whatever changed in between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sop_telemetry import TaskStatus
from sop_telemetry.manager import _file_text
from sop_telemetry.models import TaskExecution


def _fresh(manager) -> dict:
    """The session as the uncached path builds it: validate the whole snapshot, serialize it."""
    return json.loads(_file_text(manager._build_current(final=False)))


def _written(manager) -> dict:
    path = manager.flush_data()
    assert path is not None
    return json.loads(Path(path).read_text())


def _same(written: dict, fresh: dict) -> None:
    assert written == fresh
    assert list(written) == list(fresh)  # same field order as TelemetrySession.to_json()


def _fill(collector, task_id: str, calls: int, fail: bool = False) -> None:
    collector.start_task(task_id, f"task {task_id}")
    for i in range(calls):
        collector.record_llm_call(model="gpt-4o", prompt_tokens=100 + i, completion_tokens=10, duration=0.01)
        collector.record_tool_usage("search", 0.02)
    collector.record_llm_call(model="local", duration=0.01)  # usage not reported
    collector.end_task(task_id, TaskStatus.FAILED if fail else TaskStatus.COMPLETED,
                       **({"error_message": "boom"} if fail else {}))


def test_written_file_equals_a_fresh_build_cold_and_warm(manager) -> None:
    collector = manager.get_collector()
    _fill(collector, "a", 3)
    _fill(collector, "b", 2, fail=True)
    collector.start_task("open", "still running")
    collector.record_llm_call(model="gpt-4o", prompt_tokens=5, completion_tokens=5, duration=0.01)
    _same(_written(manager), _fresh(manager))  # cold: nothing cached yet

    collector.record_tool_usage("late", 0.01)  # the open task changes
    _same(_written(manager), _fresh(manager))

    collector.end_task("open", TaskStatus.COMPLETED)  # it closes: cached from now on, with its final fields
    _fill(collector, "c", 1)
    _same(_written(manager), _fresh(manager))
    _same(_written(manager), _fresh(manager))  # warm: everything from the cache


def test_finished_tasks_are_validated_once(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = manager.get_collector()
    for name in ("a", "b", "c"):
        _fill(collector, name, 2)
    manager.flush_data()
    validated = []
    original = TaskExecution.model_validate.__func__

    def counting(cls, obj, *args, **kwargs):
        validated.append(obj["task_id"])
        return original(cls, obj, *args, **kwargs)

    monkeypatch.setattr(TaskExecution, "model_validate", classmethod(counting))
    collector.start_task("open", "running")
    manager.flush_data()
    assert set(validated) == {"open"}  # (the background writer may write it too)


def test_a_task_that_gets_a_record_after_closing_is_written_again(manager) -> None:
    from sop_telemetry.collector import Frame, current

    collector = manager.get_collector()
    collector.start_task("t", "")
    frame = current.get()
    collector.end_task("t", TaskStatus.COMPLETED)
    manager.flush_data()
    collector.add("tools", {"tool_name": "straggler", "start_time": 1.0, "end_time": 2.0, "duration": 1.0},
                  Frame(frame.task))
    written = _written(manager)
    _same(written, _fresh(manager))
    assert [t["tool_name"] for t in written["tasks"][0]["tools"]] == ["straggler"]


def test_a_task_that_cannot_be_written_leaves_the_others_written(manager) -> None:
    from sop_telemetry.collector import Frame, current
    from sop_telemetry.error_handler import get_error_handler

    collector = manager.get_collector()
    _fill(collector, "a", 2)
    collector.start_task("bad", "")
    frame = current.get()
    collector.add("tools", {"tool_name": "t", "start_time": 1.0, "status": "no such status"}, Frame(frame.task))
    collector.end_task("bad", TaskStatus.COMPLETED)
    _fill(collector, "c", 1)
    written = _written(manager)
    assert [t["task_id"] for t in written["tasks"]] == ["a", "c"]
    assert written["total_tokens"]["prompt_tokens"] == 100 + 101 + 100
    assert get_error_handler().get_error_summary()["manager.task"]["count"] >= 1
    assert collector.task_count() == 3  # still held, and tried again at each write
