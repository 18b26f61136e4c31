"""Exports of sessions recorded from real (scripted-model) smolagents runs: JSON round trip, CSV tables parsed
back, a Mermaid gantt checked against the gantt grammar, and the text tree's nesting."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
from recorded_sessions import check_mermaid_gantt, failing_run, managed_run, record, tool_calling_run

from sop_telemetry.exports import (
    CSV_TABLES,
    csv_columns,
    select_tasks,
    to_csv,
    to_json,
    to_mermaid,
    to_text_tree,
    write_csv,
)
from sop_telemetry.models import TelemetrySession


@pytest.fixture
def session(manager):
    return record(manager, tool_calling_run, managed_run, failing_run)


def test_json_round_trips_to_an_equal_session(session, storage_dir):
    text = to_json(session)
    assert TelemetrySession.from_json(text) == session
    assert json.loads(text) == json.loads((storage_dir / f"{session.session_id}.json").read_text())
    assert TelemetrySession.from_json(to_json(session, indent=None)) == session


def test_csv_tables_parse_back_with_ids_and_exact_figures(session, tmp_path):
    paths = write_csv(session, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == sorted(f"{t}.csv" for t in CSV_TABLES)

    tables = {}
    for name, path in paths.items():
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == csv_columns(name)
            assert reader.fieldnames[:2] == ["session_id", "task_id"]
            tables[name] = list(reader)
        assert path.read_text(encoding="utf-8") == to_csv(session, name)
    task_ids = [t.task_id for t in session.tasks]
    for name, rows in tables.items():
        assert {r["session_id"] for r in rows} == {session.session_id}, name
        assert {r["task_id"] for r in rows} <= set(task_ids), name

    tasks = tables["tasks"]
    assert [r["task_id"] for r in tasks] == task_ids
    assert [r["status"] for r in tasks] == ["completed", "completed", "failed"]
    assert [int(r["total_tokens"]) for r in tasks] == [330, 330, 110]
    assert [int(r["llm_calls"]) for r in tasks] == [3, 3, 2]
    assert tasks[2]["error_type"] == "AgentGenerationError"
    assert float(tasks[1]["cost_estimate"]) == pytest.approx(session.tasks[1].token_usage.cost_estimate)
    assert tasks[0]["cost_estimate"] == ""  # unknown price: empty, not 0

    calls = tables["llm_calls"]
    assert len(calls) == 8
    assert sum(int(r["total_tokens"] or 0) for r in calls) == 770
    assert [r["tokens_reported"] for r in calls].count("false") == 1
    by_id = {c.call_id: c for t in session.tasks for c in t.llm_calls}
    for row in calls:
        record_ = by_id[row["call_id"]]
        assert row["model"] == record_.model
        assert float(row["duration"]) == record_.duration
        assert row["start_time"] == record_.start_time.isoformat()
        assert (float(row["cost_estimate"]) if row["cost_estimate"] else None) == record_.cost_estimate

    assert [r["tool_name"] for r in tables["tools"]] == [
        "add", "explode", "final_answer", "add", "final_answer", "final_answer", "add"]
    assert [r["status"] for r in tables["tools"]].count("error") == 1

    agents = {r["agent_name"]: r for r in tables["agents"]}
    assert agents["adder"]["parent_agent_id"] == agents["CodeAgent"]["agent_id"]
    assert agents["CodeAgent"]["parent_agent_id"] == ""

    steps = tables["steps"]
    assert len(steps) == 3 + 1 + 2 + 2
    # Error messages with newlines and quotes survive the round trip.
    failing_step = next(s for t in session.tasks for s in t.steps if s.error_message)
    assert "\n" in failing_step.error_message
    assert failing_step.error_message in [r["error_message"] for r in steps]


def test_csv_to_text_and_unknown_table(session):
    rows = list(csv.reader(io.StringIO(to_csv(session, "agents"))))
    assert rows[0] == csv_columns("agents") and len(rows) == 1 + 4
    with pytest.raises(ValueError, match="unknown table"):
        to_csv(session, "bogus")


def test_mermaid_gantt_of_one_task_is_valid_and_complete(session):
    managed = session.tasks[1]
    text = to_mermaid(session, managed.task_id)
    bars = check_mermaid_gantt(text)
    assert [b["section"] for b in bars if b["name"].startswith("agent ")] == ["CodeAgent", "adder"]
    assert len(bars) == len(managed.agents) + len(managed.llm_calls) + len(managed.tools)
    assert sum(b["name"].startswith("model ") for b in bars) == 3
    assert sum(b["name"].startswith("tool ") for b in bars) == 3
    # Real times: each bar starts at its record's start, in epoch milliseconds, and is at least 1 ms long.
    starts = sorted([managed.agents[0].start_time, managed.agents[1].start_time,
                     *(c.start_time for c in managed.llm_calls), *(t.start_time for t in managed.tools)])
    assert sorted(b["start"] for b in bars) == [math.floor(s.timestamp() * 1000) for s in starts]
    adder_bars = [b for b in bars if b["section"] == "adder"]
    assert [b["name"].split()[0] for b in adder_bars] == ["agent", "model", "tool", "model", "tool"]


def test_mermaid_gantt_of_a_session_escapes_names_and_marks_failures(session):
    bars = check_mermaid_gantt(to_mermaid(session))
    assert [b["section"] for b in bars if b["name"].startswith("agent ")] == [
        "T1 ToolCallingAgent", "T2 CodeAgent", "T2 adder", "T3 ToolCallingAgent"]
    failed = [b["name"].split()[:2] for b in bars if "crit" in b["tags"]]
    # The failing tool, the failing model call, and the agent run that failed.
    assert failed == [["tool", "explode"], ["agent", "ToolCallingAgent"], ["model", "local/qwen2\u22367b,\uff03q4"]]
    assert len(bars) == sum(len(t.agents) + len(t.llm_calls) + len(t.tools) for t in session.tasks)


def test_mermaid_escapes_every_breaking_character():
    from sop_telemetry.exports import _mermaid_text

    name = _mermaid_text("a:b;c#d%%e\nf\rg\x00h")
    assert not set(name) & set(":;#%\n\r\x00")
    assert _mermaid_text("") == "unnamed" and _mermaid_text(" : ") == "\u2236"
    assert len(_mermaid_text("x" * 500)) == 80


def test_text_tree_nests_managed_agents_under_the_calling_step(session):
    managed = session.tasks[1]
    text = to_text_tree(session, managed.task_id)
    lines = text.rstrip("\n").split("\n")
    assert lines[0].startswith(f"task {managed.task_id}  completed")
    assert "330 tokens" in lines[0]
    assert lines[1] == "  'delegate the sum'"
    tree = []
    for line in lines[2:]:
        match = re.match(r"\A((?:│   |    )*)(├── |└── )(.*)\Z", line)
        assert match is not None, line
        tree.append((len(match.group(1)) // 4, match.group(3).split("  ")[0]))
    assert tree == [
        (0, "agent CodeAgent [CodeAgent, gpt-4o]"),
        (1, "step 1 action"),
        (2, "model gpt-4o"),
        (2, "agent adder [ToolCallingAgent, gpt-4o-mini]"),
        (3, "step 1 action"),
        (4, "model gpt-4o-mini"),
        (4, "tool add"),
        (3, "step 2 action"),
        (4, "model gpt-4o-mini"),
        (4, "tool final_answer"),
        (2, "tool final_answer"),
    ]
    assert "200+20=220 tokens" in text and "50+5=55 tokens" in text
    assert "$" in next(line for line in lines if "model gpt-4o " in line + " ")


def test_text_tree_shows_errors_and_unknown_usage(session):
    text = to_text_tree(session)
    assert text.count("\ntask ") == 2 and text.startswith("task ")
    assert "tool explode" in text and "error ValueError: exploded: boom" in text
    assert "failed" in text and "error AgentGenerationError" in text
    assert "tokens not reported" in text
    assert "error RuntimeError: model is down" in text


def test_select_tasks_by_id_or_unique_prefix(session):
    assert select_tasks(session) == session.tasks
    assert select_tasks(session, session.tasks[1].task_id) == [session.tasks[1]]
    assert select_tasks(session, "CodeAgent") == [session.tasks[1]]
    with pytest.raises(KeyError, match="several"):
        select_tasks(session, "ToolCallingAgent")
    with pytest.raises(KeyError, match="not a task"):
        to_mermaid(session, "nope")


def test_bars_shorter_than_a_millisecond_still_have_length(session):
    durations = [c.duration for t in session.tasks for c in t.llm_calls]
    assert min(durations) < 0.001  # scripted calls take microseconds
    for bar in check_mermaid_gantt(to_mermaid(session)):
        assert bar["end"] - bar["start"] >= 1


def test_write_csv_creates_the_directory(session, tmp_path):
    target = tmp_path / "a" / "b"
    paths = write_csv(session, target, tables=("tasks",))
    assert list(paths) == ["tasks"] and Path(paths["tasks"]).exists()
