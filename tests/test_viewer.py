"""The viewer's data, findings, comparison and page, without a browser (tests/test_viewer_browser.py draws them):
figures equal the session file's, every record placed once in the tree, each finding names its records, the page
is self-contained, older and newer files render, and the `view` / `export --format html` commands."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import test_cli
from recorded_sessions import (
    failing_run,
    managed_run,
    new_manager,
    planned_managed_run,
    record,
    synthetic_session,
    tool_calling_run,
)

from sop_telemetry.models import TelemetrySession
from sop_telemetry.storage import parse_session
from sop_telemetry.viewer import comparison_html, session_data, session_html
from sop_telemetry.viewer._findings import findings

main = test_cli.main  # the in-process `sop-telemetry` fixture, for the commands' tests below


def embedded(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="sop-data">(.*?)</script>', html, re.DOTALL)
    assert match is not None
    return json.loads(match.group(1))


@pytest.fixture
def planned(manager) -> TelemetrySession:
    return record(manager, planned_managed_run)


def test_header_figures_are_the_session_files(planned, storage_dir):
    raw = json.loads((storage_dir / f"{planned.session_id}.json").read_text())
    header = session_data(planned)["header"]
    task = raw["tasks"][0]
    assert header["model_calls"] == len(task["llm_calls"]) == 7
    assert header["tool_calls"] == len(task["tools"]) == 5
    assert header["agent_runs"] == 2
    assert header["total_tokens"] == raw["total_tokens"]["total_tokens"] == 300 + 40 + 420 + 30 + 650 + 25 + \
        120 + 8 + 180 + 9 + 260 + 7 + 340 + 6
    assert header["prompt_tokens"] == raw["total_tokens"]["prompt_tokens"]
    assert header["cost"] == pytest.approx(raw["total_tokens"]["cost_estimate"])
    assert header["duration"] == pytest.approx(raw["total_duration"])
    assert header["status"] == "completed" and header["tasks"] == 1


def test_every_record_appears_once_in_tree_order(planned):
    task = session_data(planned)["tasks"][0]
    records = task["records"]
    source = planned.tasks[0]
    assert len(records) == len(source.agents) + len(source.steps) + len(source.llm_calls) + len(source.tools)
    assert sorted(r["fields"].get("call_id", "") for r in records if r["kind"] in ("model", "tool")) == \
        sorted([c.call_id for c in source.llm_calls] + [t.call_id for t in source.tools])
    for position, item in enumerate(records):
        assert item["parent"] is None or item["parent"] < position  # parents come first
    by_name = {r["name"]: i for i, r in enumerate(records) if r["kind"] == "agent"}
    adder, boss = by_name["adder (ToolCallingAgent)"], by_name["CodeAgent"]
    # The managed agent hangs from the boss's step that ran it, its failing tool calls from adder's steps.
    assert records[records[adder]["parent"]]["kind"] == "step"
    assert records[records[adder]["parent"]]["parent"] == boss
    explodes = [r for r in records if r["name"] == "explode"]
    assert [r["status"] for r in explodes] == ["error", "error"]
    assert all(records[records[r["parent"]]["parent"]]["name"] == "adder (ToolCallingAgent)" for r in explodes)
    # The planning call sits in the planning step, not in the action step that shares its number.
    planning = [r for r in records if r["kind"] == "model" and r["fields"].get("purpose") == "planning"]
    assert [records[r["parent"]]["name"] for r in planning] == ["planning 1"]


def test_context_growth_has_one_point_per_step(planned):
    task = session_data(planned)["tasks"][0]
    series = {line["name"]: [p["tokens"] for p in line["points"]] for line in task["context"]}
    assert series == {"CodeAgent": [300, 420, 650], "adder (ToolCallingAgent)": [120, 180, 260, 340]}


def test_a_finding_names_the_failing_tool_and_its_records(planned):
    found = [f for f in findings(planned) if f.rule == "tool_failing"]
    assert len(found) == 1
    finding = found[0]
    assert finding.title == "Tool explode failed 2 of 2 calls"
    failing = [t for t in planned.tasks[0].tools if t.tool_name == "explode"]
    assert [r for _i, r in finding.records] == failing
    for call in failing:
        assert f"{call.call_id} (adder, step {call.step_number})" in finding.text
    data = session_data(planned)
    refs = [f["refs"] for f in data["findings"] if f["rule"] == "tool_failing"][0]
    assert [data["tasks"][t]["records"][i]["fields"]["call_id"] for t, i in refs] == [c.call_id for c in failing]


def test_findings_context_growth_max_steps_unreported_and_dominance():
    session = synthetic_session(steps=5, growth=1500)
    task = session.tasks[0]
    task.agents[0].max_steps_reached = True
    task.llm_calls[0].tokens_reported = False
    task.llm_calls[1].model = "other"
    task.llm_calls[1].cost_estimate = 0.0001
    rules = {f.rule: f for f in findings(session)}
    growth = rules["context_growth"]
    assert growth.title == "Input tokens grew 3.4x in worker"  # 2500 at step 1 to 8500 at step 5
    assert "From 2,500 at worker, step 1 to 8,500 at worker, step 5" in growth.text
    assert [r.step_number for _i, r in growth.records] == [1, 2, 5]
    assert rules["max_steps"].records == [(0, task.agents[0])]
    assert rules["usage_unreported"].records == [(0, task.llm_calls[0])]
    assert "c1_0 (worker, step 1)" in rules["usage_unreported"].text
    dominant = [f.title for f in findings(session) if f.rule == "dominant_model"]
    assert dominant == ["m takes 98% of the cost", "m takes 80% of the model time"]  # $0.004 of $0.0041; 4 of 5
    assert "context_growth" not in {f.rule for f in findings(synthetic_session(steps=5, growth=100))}
    task.steps[2].duration, task.duration = 3.0, 4.0
    step = [f for f in findings(session) if f.rule == "dominant_step"]
    assert [(f.title, f.records) for f in step] == [("One step takes 75% of task big", [(0, task.steps[2])])]
    assert "action step at worker, step 3 ran 3.00 s of the task's 4.00 s" in step[0].text


def test_a_failed_task_and_a_failing_model(manager):
    session = record(manager, failing_run)
    rules = {f.rule: f for f in findings(session)}
    assert rules["task_failed"].level == "error"
    assert "model is down" in rules["task_failed"].text
    assert rules["model_failing"].title == "Model local/qwen2:7b;#q4 failed 1 of 2 calls"


def test_page_is_self_contained(planned):
    html = session_html(planned)
    assert embedded(html)["session"]["id"] == planned.session_id
    # Nothing to fetch: no external reference, and a policy that forbids any request.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html and "connect-src" not in html
    assert html.count("<script") == 2  # the data and the inline script


def test_embedded_text_cannot_close_the_script(manager):
    session = record(manager, tool_calling_run)
    session.tasks[0].description = "</script><script>alert(1)</script><!--"
    html = session_html(session)
    assert html.count("</script>") == 2
    assert embedded(html)["session"]["tasks"][0]["description"] == session.tasks[0].description


def test_older_and_newer_files_render():
    older = {  # the first schema's shape: no ids, purposes, call ids, caps, environment beyond the basics
        "session_id": "20250101T000000_000000_00000001", "start_time": "2025-01-01T00:00:00Z",
        "environment": {"python_version": "3.10.0", "smolagents_version": "1.10.0"},
        "tasks": [{"task_id": "t", "start_time": "2025-01-01T00:00:00Z", "end_time": "2025-01-01T00:00:01Z",
                   "duration": 1.0, "status": "completed",
                   "agents": [{"agent_type": "CodeAgent", "agent_name": "CodeAgent",
                               "start_time": "2025-01-01T00:00:00Z", "duration": 1.0}],
                   "llm_calls": [{"model": "gpt-4o", "start_time": "2025-01-01T00:00:00.1Z", "duration": 0.5,
                                  "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                                  "agent_name": "CodeAgent", "step_number": 1}],
                   "tools": [{"tool_name": "search", "start_time": "2025-01-01T00:00:00.7Z", "status": "error"}],
                   "steps": [{"step_number": 1, "start_time": "2025-01-01T00:00:00Z", "prompt_tokens": 10}]}]}
    newer = json.loads(json.dumps(older))
    newer["environment"] = {"python_version": "3.13.0", "framework_versions": {"pydantic-ai": "2.0"}}
    newer["tasks"][0]["agents"][0].update(framework="pydantic-ai", agent_id="r1")
    newer["tasks"][0]["tools"][0].update(server="mcp://files", retries=2)
    for raw in (older, newer):
        session = parse_session(json.dumps(raw))
        data = embedded(session_html(session))["session"]
        assert data["header"]["model_calls"] == 1 and data["header"]["total_tokens"] == 12
        assert len(data["tasks"][0]["records"]) == 4
        tool = [r for r in data["tasks"][0]["records"] if r["kind"] == "tool"][0]
        assert tool["status"] == "error"
        assert [f["rule"] for f in data["findings"]] == ["tool_failing"]


def test_comparison_aligns_tasks_and_steps(manager, storage_dir):
    first = record(manager, tool_calling_run, managed_run)
    second = record(new_manager(storage_dir), tool_calling_run, failing_run)
    data = embedded(comparison_html(first, second))
    assert data["a"]["id"] == first.session_id and data["b"]["id"] == second.session_id
    pairs = data["comparison"]["pairs"]
    assert len(pairs) == 2
    same = pairs[0]["rows"]
    assert all(row["a"] == {**row["b"], "time": row["a"]["time"]} for row in same)  # the same run twice
    whole = same[0]
    assert whole["label"] == "whole task" and whole["a"]["tokens"] == whole["b"]["tokens"] == 330
    different = {row["label"]: row for row in pairs[1]["rows"]}
    assert different["whole task"]["a"]["tokens"] == 220 + 110 and different["whole task"]["b"]["tokens"] == 110
    assert different["whole task"]["b"]["failed"] is True
    # adder ran only in the first session: present on one side only.
    assert different["adder"]["b"] is None and different["adder"]["a"]["tokens"] == 110
    one = embedded(comparison_html(first, first, first.tasks[0].task_id, first.tasks[1].task_id))
    assert [(p["task_a"], p["task_b"]) for p in one["comparison"]["pairs"]] == \
        [(first.tasks[0].task_id, first.tasks[1].task_id)]
    with pytest.raises(KeyError, match="no task 'nope'"):
        comparison_html(first, second, "nope")


def test_ten_thousand_calls_build_in_a_few_seconds():
    session = synthetic_session(steps=5000, calls_per_step=2)
    started = time.perf_counter()
    html = session_html(session)
    elapsed = time.perf_counter() - started
    data = embedded(html)["session"]
    assert len(data["tasks"][0]["records"]) == 1 + 5000 + 10000
    assert elapsed < 20, elapsed  # a generous bound for a loaded CI machine; measured in docs/viewer.md


# -- the commands --------------------------------------------------------------------------------------------------
def test_view_writes_a_private_page_and_export_html(main, planned, storage_dir, tmp_path):
    target = tmp_path / "page.html"
    result = main("--dir", str(storage_dir), "view", "latest", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote {target}\n"
    assert embedded(target.read_text())["session"]["id"] == planned.session_id
    assert os.stat(target).st_mode & 0o077 == 0
    by_path = tmp_path / "by-path.html"
    assert main("view", str(storage_dir / f"{planned.session_id}.json"), "-o", str(by_path)).returncode == 0
    assert embedded(by_path.read_text())["session"]["id"] == planned.session_id
    exported = main("--dir", str(storage_dir), "export", planned.session_id[:20], "--format", "html")
    assert exported.returncode == 0 and embedded(exported.stdout)["session"]["id"] == planned.session_id


def test_view_default_place_and_comparison(main, planned, storage_dir):
    result = main("--dir", str(storage_dir), "--json", "view")
    written = Path(json.loads(result.stdout)["written"][0])
    assert written.name == f"{planned.session_id}.html" and written.parent.stat().st_mode & 0o077 == 0
    result = main("--dir", str(storage_dir), "--json", "view", "latest", "latest", "--task",
                  planned.tasks[0].task_id)
    page = embedded(Path(json.loads(result.stdout)["written"][0]).read_text())
    assert page["kind"] == "compare" and len(page["comparison"]["pairs"]) == 1


@pytest.mark.parametrize("args, fragment", [
    (["view", "a", "b", "c"], "one session, or two"),
    (["view", "latest", "--task", "x"], "give two sessions"),
    (["view", "latest", "latest", "--task", "nope"], "no task 'nope'"),
    (["view", "nothing-like-this"], "no session"),
])
def test_view_user_errors(main, planned, storage_dir, args, fragment):
    result = main("--dir", str(storage_dir), *args)
    assert result.returncode == 1 and fragment in result.stderr, result.stderr


def test_a_session_still_running():
    session = synthetic_session(steps=2)
    task = session.tasks[0]
    session.end_time = task.end_time = task.duration = None
    task.status = task.agents[0].status = "running"
    task.agents[0].end_time = task.agents[0].duration = None
    last = task.tools[-1]
    last.status, last.end_time, last.duration = "running", None, None
    data = session_data(session)
    assert data["header"]["status"] == "running" and data["end"] is None
    statuses = {(r["kind"], r["fields"].get("call_id")): r["status"] for r in data["tasks"][0]["records"]}
    assert statuses[("agent", None)] == "running" and statuses[("tool", last.call_id)] == "running"
    assert data["tasks"][0]["split"]["wall"] == 0  # no time split until the task ends
