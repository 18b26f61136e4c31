"""Analysis of stored sessions recorded from real (scripted-model) smolagents runs: exact token, cost, count and
duration figures, filters, streaming, corrupt files, and use without smolagents."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import statistics
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from genai_prices import Usage, calc_price
from recorded_sessions import failing_run, managed_run, new_manager, record, tool_calling_run

from sop_telemetry.analysis import (
    DurationStats,
    SessionsSummary,
    analyze_performance,
    analyze_token_usage,
    default_directory,
    load_sessions,
    parse_time,
    summarize_sessions,
    task_time_split,
)
from sop_telemetry.manager import TelemetryManager
from sop_telemetry.models import LLMCall, TaskExecution, ToolExecution


def price(model: str, prompt: int, completion: int) -> float:
    return float(calc_price(Usage(input_tokens=prompt, output_tokens=completion), model_ref=model).total_price)


MANAGED_COST = price("gpt-4o", 200, 20) + 2 * price("gpt-4o-mini", 50, 5)


@pytest.fixture
def two_sessions(manager, storage_dir):
    """Session A: tool_calling_run + managed_run; session B (written later): failing_run."""
    first = record(manager, tool_calling_run, managed_run)
    second = record(new_manager(storage_dir), failing_run)
    return first, second


def test_token_usage_has_exact_figures_per_model_agent_and_task(manager):
    session = record(manager, tool_calling_run, managed_run)
    report = analyze_token_usage(session)

    scripted, gpt4o, mini = (report.by_model[m] for m in ("scripted-model", "gpt-4o", "gpt-4o-mini"))
    assert (scripted.calls, scripted.prompt_tokens, scripted.completion_tokens) == (3, 300, 30)
    assert scripted.total_tokens == 330
    assert scripted.cost is None and scripted.unpriced_calls == 3  # unknown model: no made-up price
    assert (gpt4o.calls, gpt4o.total_tokens, gpt4o.unpriced_calls) == (1, 220, 0)
    assert gpt4o.cost == pytest.approx(price("gpt-4o", 200, 20), rel=1e-12)
    assert (mini.calls, mini.prompt_tokens, mini.completion_tokens) == (2, 100, 10)
    assert mini.cost == pytest.approx(2 * price("gpt-4o-mini", 50, 5), rel=1e-12)

    assert {name: f.total_tokens for name, f in report.by_agent.items()} == {
        "ToolCallingAgent": 330, "CodeAgent": 220, "adder": 110}
    assert [f.total_tokens for f in report.by_task.values()] == [330, 330]
    assert list(report.by_task) == [t.task_id for t in session.tasks]

    total = report.total
    assert (total.calls, total.prompt_tokens, total.completion_tokens, total.total_tokens) == (6, 600, 60, 660)
    assert total.total_tokens == session.total_tokens.total_tokens
    assert total.cost == pytest.approx(MANAGED_COST, rel=1e-12)
    assert total.unpriced_calls == 3

    text = str(report)
    assert text == report.render()
    for expected in ("Tokens per model", "Tokens per agent", "Tokens per task", "gpt-4o-mini", "660", "adder"):
        assert expected in text
    assert ">=$" in text  # a sum that leaves out unpriced calls says it is a lower bound


def test_unreported_usage_is_counted_apart_not_as_zero(manager):
    session = record(manager, failing_run)
    total = analyze_token_usage(session).total
    assert (total.calls, total.total_tokens, total.unreported_calls) == (2, 110, 1)
    assert total.cost is None


def test_performance_counts_and_statistics(manager):
    session = record(manager, tool_calling_run, managed_run)
    report = analyze_performance(session)

    assert {name: (s.count, s.errors) for name, s in report.tools.items()} == {
        "add": (2, 0), "explode": (1, 1), "final_answer": (3, 0)}
    assert report.tools["explode"].error_rate == 1.0
    assert {name: s.count for name, s in report.models.items()} == {"scripted-model": 3, "gpt-4o": 1, "gpt-4o-mini": 2}
    assert {name: s.count for name, s in report.agents.items()} == {"ToolCallingAgent": 1, "CodeAgent": 1, "adder": 1}

    add_durations = [t.duration for task in session.tasks for t in task.tools if t.tool_name == "add"]
    add = report.tools["add"]
    assert add.p50 == pytest.approx(statistics.median(add_durations))
    assert add.mean == pytest.approx(statistics.mean(add_durations))
    assert add.max == max(add_durations)
    assert add.total == pytest.approx(sum(add_durations))

    steps = sorted((s.duration for task in session.tasks for s in task.steps), reverse=True)
    assert len(steps) == 6
    assert [s.duration for s in report.slowest_steps] == steps[:5]
    assert report.slowest_steps[0].task_id in {t.task_id for t in session.tasks}

    assert [(t.task_id, t.status, t.steps, t.llm_calls, t.tool_calls) for t in report.tasks] == [
        (session.tasks[0].task_id, "completed", 3, 3, 3), (session.tasks[1].task_id, "completed", 3, 3, 3)]
    for task, timing in zip(session.tasks, report.tasks, strict=True):
        split = timing.split
        assert split.wall == task.duration
        assert split.model + split.tools + split.overhead == pytest.approx(split.wall)
        # Model calls run one after another here, so their union is their sum.
        assert split.model == pytest.approx(sum(c.duration for c in task.llm_calls))
        assert split.tools > 0 and split.overhead > 0
    assert report.split.wall == pytest.approx(sum(t.duration for t in session.tasks))
    assert report.total_duration == session.total_duration

    text = report.render()
    for expected in ("Performance of session", "Tool calls", "Slowest steps", "explode", "adder"):
        assert expected in text


def test_duration_statistics_interpolate_percentiles():
    stats = DurationStats.of([5.0, 1.0, 4.0, 2.0, 3.0], errors=1)
    assert (stats.count, stats.total, stats.mean, stats.p50, stats.max) == (5, 15.0, 3.0, 3.0, 5.0)
    assert stats.p95 == pytest.approx(4.8)
    assert stats.error_rate == pytest.approx(0.2)
    assert DurationStats.of([]).count == 0 and DurationStats.of([]).error_rate is None


def test_time_split_counts_parallel_tool_calls_once():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def at(seconds: float) -> datetime:
        return start + timedelta(seconds=seconds)

    task = TaskExecution(
        task_id="t", start_time=start, end_time=at(4), duration=4.0,
        llm_calls=[LLMCall(model="m", start_time=at(2), duration=1.0)],
        tools=[ToolExecution(tool_name="a", start_time=at(0), duration=1.0),
               ToolExecution(tool_name="b", start_time=at(0.5), duration=1.0)],  # in parallel with "a"
    )
    split = task_time_split(task)
    assert (split.wall, split.model, split.tools, split.overhead) == (4.0, 1.0, 1.5, 1.5)


def test_load_sessions_streams_oldest_first_and_unfiltered_equals_stored(two_sessions, storage_dir):
    first, second = two_sessions
    sessions = load_sessions(directory=storage_dir)
    assert inspect.isgenerator(sessions)
    assert next(sessions) == first
    # The second file is read only when asked for: remove it now and the stream just ends.
    os.unlink(storage_dir / f"{second.session_id}.json")
    assert list(sessions) == []


def test_load_sessions_filters_tasks(two_sessions, storage_dir):
    first, second = two_sessions
    code_task = first.tasks[1].task_id

    def found(**filters):
        return [(s.session_id, [t.task_id for t in s.tasks]) for s in load_sessions(directory=storage_dir, **filters)]

    everything = [(first.session_id, [t.task_id for t in first.tasks]),
                  (second.session_id, [t.task_id for t in second.tasks])]
    assert found() == everything
    assert found(agent="adder") == [(first.session_id, [code_task])]
    assert found(model="gpt-4o-mini") == [(first.session_id, [code_task])]  # called by the sub-agent only
    assert found(tool="explode") == [(first.session_id, [first.tasks[0].task_id])]
    assert found(status="failed") == [(second.session_id, [second.tasks[0].task_id])]
    assert found(status="completed") == everything[:1]
    # An agent filter matches the agent type too: "adder" is a ToolCallingAgent.
    assert found(agent="ToolCallingAgent", status="completed") == everything[:1]
    assert found(agent="CodeAgent", tool="explode") == []
    assert found(since=second.tasks[0].start_time) == everything[1:]
    assert found(until=second.tasks[0].start_time) == everything[:1]
    assert found(since="1h") == everything
    assert found(since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    assert found(until="2000-01-01") == []
    # A narrowed session recomputes its totals from the tasks it kept.
    only = next(load_sessions(directory=storage_dir, agent="adder"))
    assert only.total_tokens.total_tokens == 330
    with pytest.raises(ValueError):
        list(load_sessions(directory=storage_dir, status="exploded"))


def test_since_survives_coarse_file_times(two_sessions, storage_dir):
    # A file's mtime comes from the kernel's coarse clock: a session written a few ms after its task started can
    # carry an mtime from before that start. It must not be skipped as "last written before since".
    _, second = two_sessions
    early = second.tasks[0].start_time.timestamp() - 0.004
    os.utime(storage_dir / f"{second.session_id}.json", (early, early))
    found = [s.session_id for s in load_sessions(directory=storage_dir, since=second.tasks[0].start_time)]
    assert found == [second.session_id]


def test_corrupt_files_are_reported_and_skipped(two_sessions, storage_dir, caplog):
    first, second = two_sessions
    garbage = "20200101T000000_000000_0badf11e"
    (storage_dir / f"{garbage}.json").write_text("{not json")
    truncated = "20200101T000000_000001_0badf11e"
    data = (storage_dir / f"{first.session_id}.json").read_bytes()
    (storage_dir / f"{truncated}.json").write_bytes(data[: len(data) // 2])
    (storage_dir / "notes.txt").write_text("not a session")

    reported = []
    sessions = list(load_sessions(directory=storage_dir, on_error=lambda sid, msg: reported.append((sid, msg))))
    assert [s.session_id for s in sessions] == [first.session_id, second.session_id]
    assert [sid for sid, _ in reported] == [garbage, truncated]
    assert all("not a valid session file" in msg for _, msg in reported)

    with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
        assert len(list(load_sessions(directory=storage_dir))) == 2
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 2


def test_links_are_not_followed_out_of_the_directory(two_sessions, storage_dir, tmp_path):
    first, _ = two_sessions
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((storage_dir / f"{first.session_id}.json").read_bytes())
    link = "20300101T000000_000000_11111111"
    os.symlink(outside, storage_dir / f"{link}.json")
    assert link not in [s.session_id for s in load_sessions(directory=storage_dir)]


def test_missing_or_empty_directory_yields_nothing(tmp_path):
    assert list(load_sessions(directory=tmp_path / "missing")) == []
    assert list(load_sessions(directory=tmp_path)) == []
    assert summarize_sessions(load_sessions(directory=tmp_path)).sessions == 0


def test_summary_across_sessions(two_sessions, storage_dir):
    first, second = two_sessions
    summary = summarize_sessions(load_sessions(directory=storage_dir))
    assert summary == summarize_sessions([first, second])
    assert (summary.sessions, summary.tasks, summary.failed_tasks) == (2, 3, 1)
    assert summary.first_start == first.start_time
    total = summary.total
    assert (total.calls, total.total_tokens, total.unreported_calls, total.unpriced_calls) == (8, 770, 1, 4)
    assert total.cost == pytest.approx(MANAGED_COST, rel=1e-12)

    day = first.tasks[0].start_time.astimezone().date().isoformat()
    assert list(summary.by_day) == [day]
    today = summary.by_day[day]
    assert (today.tasks, today.failed_tasks, today.total_tokens) == (3, 1, 770)
    assert {m: f.total_tokens for m, f in summary.by_model.items()} == {
        "scripted-model": 330, "gpt-4o": 220, "gpt-4o-mini": 110, "local/qwen2:7b;#q4": 110}

    assert {name: (s.count, s.errors) for name, s in summary.tools.items()} == {
        "add": (3, 0), "explode": (1, 1), "final_answer": (3, 0)}
    assert summary.tools["explode"].error_rate == 1.0 and summary.tools["add"].error_rate == 0.0

    tca = summary.agents["ToolCallingAgent"]
    assert (tca.runs, tca.completed, tca.failed, tca.success_rate) == (2, 1, 1, 0.5)
    assert (tca.total_tokens, tca.tokens_per_run) == (440, 220.0)
    durations = [a.duration for s in (first, second) for t in s.tasks for a in t.agents
                 if a.agent_name == "ToolCallingAgent"]
    assert tca.mean_duration == pytest.approx(statistics.mean(durations))
    code = summary.agents["CodeAgent"]
    assert (code.runs, code.success_rate, code.tokens_per_run) == (1, 1.0, 220.0)
    assert code.cost == pytest.approx(price("gpt-4o", 200, 20), rel=1e-12)
    assert summary.agents["adder"].total_tokens == 110

    assert SessionsSummary.model_validate_json(summary.model_dump_json()) == summary
    text = str(summary)
    for expected in ("Per day", "Per model", "Tools", "Agents", "100%", "50%", day):
        assert expected in text


def test_parse_time_forms():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("24h", now=now) == now - timedelta(hours=24)
    assert parse_time("30m", now=now) == now - timedelta(minutes=30)
    assert parse_time("2w", now=now) == now - timedelta(weeks=2)
    assert parse_time("2026-01-05T10:00Z") == datetime(2026, 1, 5, 10, tzinfo=timezone.utc)
    assert parse_time("2026-01-05T10:00+02:00") == datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    assert parse_time("2026-01-05") == datetime(2026, 1, 5).astimezone()  # a bare date: local midnight
    assert parse_time(datetime(2026, 1, 5, 10)).tzinfo is not None
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    for bad in ("yesterday-ish", "7x", "", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_default_directory_follows_the_manager_then_the_environment(manager, storage_dir, tmp_path, monkeypatch):
    record(manager, tool_calling_run)
    assert default_directory() == storage_dir
    assert len(list(load_sessions())) == 1
    monkeypatch.setattr(TelemetryManager, "_instance", None)
    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(tmp_path / "elsewhere"))
    assert default_directory() == tmp_path / "elsewhere"


def test_lazy_public_names():
    import sop_telemetry

    assert sop_telemetry.load_sessions is load_sessions
    assert sop_telemetry.summarize_sessions is summarize_sessions
    assert {"load_sessions", "analyze_token_usage", "analyze_performance", "summarize_sessions"} <= set(
        sop_telemetry.__all__)


_WITHOUT_SMOLAGENTS = r"""
import json, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("smolagents", "rich", "genai_prices"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Block())
import sop_telemetry
assert "sop_telemetry.analysis" not in sys.modules  # importing the package stays cheap
from sop_telemetry import load_sessions, summarize_sessions, analyze_token_usage, analyze_performance
from sop_telemetry.exports import to_csv, to_mermaid, to_text_tree
sessions = list(load_sessions(directory=sys.argv[1]))
for s in sessions:
    str(analyze_token_usage(s)); str(analyze_performance(s)); to_csv(s, "llm_calls"); to_mermaid(s); to_text_tree(s)
summary = summarize_sessions(sessions)
print(json.dumps({"sessions": summary.sessions, "tokens": summary.total.total_tokens,
                  "loaded": sorted(m for m in ("smolagents", "rich", "genai_prices") if m in sys.modules)}))
"""


def test_analysis_and_exports_work_without_smolagents(two_sessions, storage_dir):
    result = subprocess.run([sys.executable, "-c", _WITHOUT_SMOLAGENTS, str(storage_dir)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sessions": 2, "tokens": 770, "loaded": []}


def test_rendered_numbers_are_finite(two_sessions):
    for session in two_sessions:
        report = analyze_performance(session)
        for stats in [*report.tools.values(), *report.models.values(), *report.agents.values()]:
            assert all(math.isfinite(v) for v in (stats.mean, stats.p50, stats.p95, stats.max))


def test_a_cost_that_leaves_out_unpriced_calls_is_a_lower_bound_everywhere(manager):
    from sop_telemetry.exports import to_text_tree

    collector = manager.get_collector()
    collector.start_task("mixed")
    collector.record_agent_execution("ToolCallingAgent", "writer", 1.0)
    collector.record_llm_call("gpt-4o", 1000, 100, 0.5, agent_name="writer")
    collector.record_llm_call("a-model-with-no-known-price", 1000, 100, 0.5, agent_name="writer")
    collector.end_task("mixed")
    session = manager.get_session_data()
    assert "cost >=$" in to_text_tree(session).splitlines()[0]
    (agents,) = [t for t in summarize_sessions([session]).tables() if t.title == "Agents"]
    (row,) = agents.rows
    assert row[0] == "writer" and row[-1].startswith(">=$")


def test_the_time_split_calls_the_rest_the_agents_own_work(manager):
    session = record(manager, tool_calling_run)
    text = analyze_performance(session).render()
    assert "agent's own work" in text and "overhead" not in text
    assert "(from telemetry's start in the process to the end of its last task)" in text
