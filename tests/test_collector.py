"""The collector: the spec's recording API, implicit tasks, caps, thread safety, and never raising."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sop_telemetry import CallStatus, TaskStatus, TelemetryCollector, TelemetrySession, get_error_handler
from sop_telemetry.collector import Frame, current, switch
from sop_telemetry.storage import is_session_id


@pytest.fixture
def collector():
    get_error_handler().reset_error_state()
    token = current.set(None)
    switch.enabled = True
    yield TelemetryCollector()
    current.reset(token)
    switch.enabled = True


def only(session: TelemetrySession, task_id: str):
    [task] = [t for t in session.tasks if t.task_id == task_id]
    return task


def test_the_specs_core_methods(collector):
    """The spec's block for TelemetryCollector, as written (a collector made with no arguments)."""
    collector.start_task("task_123", "分析代码仓库")
    collector.end_task("task_123", TaskStatus.COMPLETED)

    collector.record_llm_call(model="gpt-4", prompt_tokens=100, completion_tokens=50, duration=2.5)
    collector.record_agent_execution(agent_type="supervisor", agent_name="RepoAnalysisAgent", duration=30.2)
    collector.record_tool_usage(tool_name="file_reader", duration=0.5)

    assert is_session_id(collector.session_id)
    session = collector.build_session()
    task = only(session, "task_123")
    assert task.status is TaskStatus.COMPLETED
    assert task.description == "分析代码仓库"
    assert task.end_time is not None and task.duration >= 0
    # The three records came after end_task: they are kept in the implicit task, not dropped.
    [implicit] = [t for t in session.tasks if t.implicit]
    assert implicit.llm_calls[0].model == "gpt-4"
    assert implicit.agents[0].agent_name == "RepoAnalysisAgent" and implicit.agents[0].duration == 30.2
    assert implicit.tools[0].tool_name == "file_reader"
    assert session.total_tokens.total_tokens == 150


def test_records_go_into_the_open_task_with_their_fields(collector):
    collector.start_task("t", "describe", sop_category="analysis")
    collector.record_llm_call("gpt-4", 150, 75, 3.2, agent_name="RepoAnalysisAgent")
    collector.record_llm_call("local", None, None, 1.0)
    collector.record_tool_usage("file_reader", 0.8, status=CallStatus.ERROR, error_type="OSError",
                                error_message="missing")
    collector.record_agent_execution("micro", "search", 4.0, status="failed")
    collector.end_task("t", "failed")

    task = only(collector.build_session(), "t")
    assert task.status is TaskStatus.FAILED and task.sop_category == "analysis"
    first, second = task.llm_calls
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (150, 75, 225)
    assert first.tokens_reported and first.duration == 3.2 and first.agent_name == "RepoAnalysisAgent"
    assert (first.end_time - first.start_time).total_seconds() == pytest.approx(3.2)
    assert second.tokens_reported is False and second.total_tokens is None
    assert task.token_usage.total_tokens == 225 and task.token_usage.unreported_calls == 1
    assert task.tools[0].status is CallStatus.ERROR and task.tools[0].error_message == "missing"
    assert task.agents[0].status is TaskStatus.FAILED
    assert [t for t in collector.build_session().tasks if t.implicit] == []


def test_nested_tasks_restore_the_outer_one(collector):
    collector.start_task("outer")
    collector.start_task("inner")
    collector.record_tool_usage("a", 0.1)
    collector.end_task("inner")
    collector.record_tool_usage("b", 0.1)
    collector.end_task("outer")
    session = collector.build_session()
    assert [t.tool_name for t in only(session, "inner").tools] == ["a"]
    assert [t.tool_name for t in only(session, "outer").tools] == ["b"]


def test_a_reused_task_id_keeps_both_tasks(collector):
    collector.start_task("t")
    collector.record_tool_usage("first", 0.1)
    collector.start_task("t")
    collector.record_tool_usage("second", 0.1)
    collector.end_task("t")
    collector.record_tool_usage("third", 0.1)
    collector.end_task("t")
    tasks = collector.build_session().tasks
    assert len(tasks) == 2
    assert all(t.status is TaskStatus.COMPLETED for t in tasks)
    assert [[x.tool_name for x in t.tools] for t in tasks] == [["first", "third"], ["second"]]
    assert collector.open_task_count() == 0


def test_ending_an_unknown_task_is_harmless(collector):
    collector.end_task("never-started", TaskStatus.COMPLETED)
    collector.end_task("x", "not-a-status")
    assert collector.task_count() == 0


def test_a_record_from_a_thread_outside_any_task_is_not_filed_under_another_threads_task(collector):
    collector.start_task("only")
    thread = threading.Thread(target=collector.record_tool_usage, args=("from_thread", 0.1))
    thread.start()
    thread.join()
    collector.end_task("only")
    session = collector.build_session()
    assert only(session, "only").tools == []
    [implicit] = [t for t in session.tasks if t.implicit]
    assert [t.tool_name for t in implicit.tools] == ["from_thread"]


def test_records_inside_an_agent_frame_name_the_agent(collector):
    task = collector.open_task("run", "agent run")
    agent = {"agent_name": "search", "agent_id": "a7"}
    token = current.set(Frame(task, agent))
    try:
        collector.record_llm_call("m", 1, 1, 0.1)
        collector.record_tool_usage("t", 0.1)
    finally:
        current.reset(token)
    collector.close_task(task, TaskStatus.COMPLETED)
    session_task = only(collector.build_session(), "run")
    assert (session_task.llm_calls[0].agent_name, session_task.llm_calls[0].agent_id) == ("search", "a7")
    assert session_task.tools[0].agent_name == "search"


def test_disabled_records_nothing(collector):
    switch.enabled = False
    collector.start_task("t")
    collector.record_llm_call("m", 1, 1, 0.1)
    collector.record_tool_usage("x", 0.1)
    collector.record_agent_execution("a", "b", 0.1)
    collector.end_task("t")
    assert not collector.has_records()
    assert collector.build_session().tasks == []


# -- memory caps ----------------------------------------------------------------------------------------------------
def test_records_over_the_cap_are_counted_and_their_tokens_kept():
    collector = TelemetryCollector(max_records_per_task=5)
    collector.start_task("t")
    for i in range(12):
        collector.record_llm_call("gpt-4" if i % 2 else "claude", 10, 5, 0.1)
    collector.record_llm_call("claude", None, None, 0.1)
    for _ in range(7):
        collector.record_tool_usage("x", 0.1)
    collector.end_task("t")
    session = collector.build_session()
    task = only(session, "t")
    assert len(task.llm_calls) == 5 and len(task.tools) == 5
    assert task.dropped_records == {"llm_calls": 8, "tools": 2}
    total = session.total_tokens
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (120, 60, 180)
    assert total.unreported_calls == 1
    assert total.model_breakdown["gpt-4"].total_tokens == 90
    assert total.model_breakdown["claude"].total_tokens == 90
    assert TelemetrySession.from_json(session.to_json()).total_tokens == total


def test_long_strings_are_truncated():
    collector = TelemetryCollector(max_string_length=50)
    collector.start_task("t", "d" * 10_000)
    collector.record_tool_usage("n" * 10_000, 0.1, error_message="e" * 10_000, error_type="E" * 10_000)
    collector.record_llm_call("m" * 10_000, 1, 1, 0.1)
    collector.record_agent_execution("a" * 10_000, "b" * 10_000, 0.1)
    collector.end_task("t", TaskStatus.FAILED, error_message="f" * 10_000)
    task = only(collector.build_session(), "t")
    texts = [task.description, task.error_message, task.tools[0].tool_name, task.tools[0].error_message,
             task.tools[0].error_type, task.llm_calls[0].model, task.agents[0].agent_type, task.agents[0].agent_name]
    assert all(len(text) <= 50 for text in texts), [len(t) for t in texts]
    assert task.description.startswith("ddd")


# -- never raising, never poisoning the session ---------------------------------------------------------------------
def test_bad_arguments_never_raise_and_never_poison_the_session(collector):
    collector.start_task("t")
    collector.record_llm_call("m", "many", object(), "slow")
    collector.record_llm_call("m", 10, 5, 0.1, status="bogus")
    collector.record_tool_usage("x", 0.1, start_time="yesterday")
    collector.record_agent_execution("a", "b", -3, steps="lots")
    collector.record_llm_call("ok", 1, 2, 0.1)
    collector.end_task("t")
    task = only(collector.build_session(), "t")
    assert [c.model for c in task.llm_calls] == ["ok"]
    assert task.tools == [] and task.agents == []
    assert get_error_handler().total_errors() >= 4


def test_token_counts_given_as_text_are_numbers(collector):
    collector.start_task("t")
    collector.record_llm_call("m", "100", "50", "0.5")
    collector.end_task("t")
    call = only(collector.build_session(), "t").llm_calls[0]
    assert (call.prompt_tokens, call.completion_tokens, call.total_tokens, call.duration) == (100, 50, 150, 0.5)


def test_a_failing_change_callback_does_not_lose_the_task():
    def broken(urgent):
        raise RuntimeError("writer could not start")

    collector = TelemetryCollector(on_change=broken)
    collector.start_task("t")
    collector.record_tool_usage("x", 0.1)
    collector.end_task("t")
    task = only(collector.build_session(), "t")
    assert task.status is TaskStatus.COMPLETED and [t.tool_name for t in task.tools] == ["x"]


# -- roll-over ------------------------------------------------------------------------------------------------------
def test_roll_over_waits_for_open_tasks_but_not_for_the_implicit_one(collector):
    collector.record_tool_usage("loose", 0.1)
    collector.start_task("t")
    old_id = collector.session_id
    assert collector.roll_over("20250101T000000_000000_00000001") is None
    collector.end_task("t")
    old = collector.roll_over("20250101T000000_000000_00000001")
    assert old is not None and old["session_id"] == old_id
    assert {t["task_id"] for t in old["tasks"]} == {"t", "untracked"}
    assert all(t["end_time"] is not None for t in old["tasks"])
    assert collector.session_id == "20250101T000000_000000_00000001" and not collector.has_records()
    collector.record_tool_usage("later", 0.1)
    [implicit] = collector.build_session().tasks
    assert implicit.implicit and [t.tool_name for t in implicit.tools] == ["later"]


# -- threads --------------------------------------------------------------------------------------------------------
def test_sixteen_threads_lose_nothing(manager):
    threads_n, calls_n = 16, 300
    collector = manager.get_collector()
    barrier = threading.Barrier(threads_n)
    errors = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            collector.start_task(f"task-{i}", f"thread {i}")
            for j in range(calls_n):
                collector.record_llm_call(f"model-{i % 3}", i + 1, j % 7, 0.001)
                if j % 3 == 0:
                    collector.record_tool_usage(f"tool-{i}", 0.001)
                if j % 50 == 0:
                    collector.record_agent_execution("micro", f"agent-{i}", 0.01)
            collector.end_task(f"task-{i}", TaskStatus.COMPLETED)
            # and some records outside any task, from every thread at once
            for _ in range(10):
                collector.record_llm_call("loose", 1, 1, 0.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert get_error_handler().total_errors() == 0

    path = manager.flush_data()
    data = json.loads(Path(path).read_bytes())
    session = TelemetrySession.model_validate(data)
    tasks = {t.task_id: t for t in session.tasks if not t.implicit}
    assert len(tasks) == threads_n
    for i in range(threads_n):
        task = tasks[f"task-{i}"]
        assert task.status is TaskStatus.COMPLETED
        assert len(task.llm_calls) == calls_n
        assert len(task.tools) == calls_n // 3
        assert len(task.agents) == calls_n // 50
        assert task.token_usage.prompt_tokens == (i + 1) * calls_n
        assert task.token_usage.completion_tokens == sum(j % 7 for j in range(calls_n))
    loose = [t for t in session.tasks if t.implicit]
    assert sum(len(t.llm_calls) for t in loose) == threads_n * 10
    expected_prompt = sum((i + 1) * calls_n for i in range(threads_n)) + threads_n * 10
    assert session.total_tokens.prompt_tokens == expected_prompt
    assert data["total_tokens"]["prompt_tokens"] == expected_prompt
    assert sum(u.total_tokens for u in session.total_tokens.model_breakdown.values()) == \
        session.total_tokens.total_tokens


def test_clip_escapes_lone_surrogates_and_keeps_the_limit() -> None:
    from sop_telemetry.collector import clip

    assert clip("caf\udce9", 500) == "caf\\udce9"
    assert clip("café ✓", 500) == "café ✓"  # (encodable text is left alone)
    clipped = clip("\udce9" * 100, 50)
    assert len(clipped) == 50 and clipped.endswith("…") and clipped.startswith("\\udce9")
    clipped.encode("utf-8")


def test_surprising_manual_calls_are_logged_once_each_and_handled_predictably(collector, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="sop_telemetry")
    for _ in range(2):
        collector.end_task("never-started")
        collector.start_task("t")
        collector.start_task("t")  # a second task with the same id while the first is open
        collector.end_task("t")
        collector.end_task("t")
        collector.record_tool_usage("outside", 0.1)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [
        ("WARNING", "sop_telemetry: end_task('never-started'): no open task has this id (never started, or already "
                    "ended); nothing was changed"),
        ("WARNING", "sop_telemetry: start_task('t'): a task with this id is still open; this one is recorded as "
                    f"{collector.build_session().tasks[1].task_id!r} and ended by end_task('t') in its context"),
        ("INFO", "sop_telemetry: a record was made outside any task (no start_task or agent run around it): such "
                 "records go to the task 'untracked'"),
    ]
    session = collector.build_session()
    assert [(t.task_id.split("#")[0], t.status) for t in session.tasks] == [
        ("t", TaskStatus.COMPLETED), ("t", TaskStatus.COMPLETED), ("untracked", TaskStatus.COMPLETED),
        ("t", TaskStatus.COMPLETED), ("t", TaskStatus.COMPLETED)]
    assert collector.open_task_count() == 1  # the implicit task takes later records; only in memory is it open


def test_records_outside_any_task_never_leave_a_running_task_in_the_file(manager):
    collector = manager.get_collector()
    collector.record_llm_call("gpt-4", 10, 5, 0.5)
    first = json.loads(Path(manager.flush_data()).read_text())["tasks"]
    collector.record_tool_usage("later", 0.1)
    second = json.loads(Path(manager.flush_data()).read_text())["tasks"]
    manager._at_exit()  # where the implicit task is closed: at its last record, as before
    third = json.loads(Path(manager.last_flush_path).read_text())["tasks"]
    for tasks, last in ((first, "llm_calls"), (second, "tools"), (third, "tools")):
        (untracked,) = tasks
        assert untracked["task_id"] == "untracked" and untracked["status"] == "completed"
        assert untracked["end_time"] == untracked[last][-1]["end_time"]
