"""The session data model: exact JSON round trips, aware datetimes, totals derived from the records."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from sop_telemetry import (
    AgentExecution,
    CallStatus,
    CodeMetrics,
    EnvironmentInfo,
    LLMCall,
    StepExecution,
    TaskExecution,
    TaskStatus,
    TelemetrySession,
    TokenUsage,
    ToolExecution,
)
from sop_telemetry.models import SCHEMA_VERSION

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
IST = timezone(timedelta(hours=5, minutes=30))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def llm(model: str = "gpt-4", prompt: int | None = 100, completion: int | None = 50, **kw) -> LLMCall:
    reported = prompt is not None or completion is not None
    return LLMCall(
        model=model, start_time=at(1), end_time=at(2.5), duration=1.5, prompt_tokens=prompt,
        completion_tokens=completion, total_tokens=(prompt or 0) + (completion or 0) if reported else None,
        tokens_reported=reported, **kw,
    )


def full_session() -> TelemetrySession:
    """A session with every model and every optional field filled in, including non-ASCII text and a non-UTC zone."""
    task = TaskExecution(
        task_id="task_123", description="分析代码仓库", start_time=at(0), end_time=at(40), duration=40.0,
        status=TaskStatus.FAILED, sop_category="analysis", error_type="ValueError", error_message="bad ✗",
        stop_reason="max_steps",
        agents=[AgentExecution(agent_id="a1", agent_type="supervisor", agent_name="RepoAnalysisAgent",
                               parent_agent_id=None, model="gpt-4", start_time=at(0), end_time=at(30.2),
                               duration=30.2, status=TaskStatus.FAILED, error_type="ValueError",
                               error_message="bad", steps=3, max_steps_reached=True),
                AgentExecution(agent_id="a2", agent_type="micro", agent_name="search", parent_agent_id="a1",
                               start_time=at(1), end_time=None, duration=None, status=TaskStatus.RUNNING)],
        tools=[ToolExecution(call_id="c1", tool_name="file_reader", start_time=at(3), end_time=at(3.5),
                             duration=0.5, agent_name="search", agent_id="a2", step_number=2,
                             status=CallStatus.ERROR, error_type="OSError", error_message="no such file",
                             arguments_preview="{'path': 'x'}", output_preview=None)],
        llm_calls=[
            llm(call_id="c2", agent_name="RepoAnalysisAgent", agent_id="a1", step_number=1, purpose="action",
                streamed=True, cost_estimate=0.0075, input_preview="hi", output_preview="ho"),
            llm("claude", None, None, call_id="c3", status=CallStatus.ERROR, error_type="TimeoutError",
                error_message="timed out"),
        ],
        steps=[StepExecution(step_type="planning", step_number=1, agent_name="RepoAnalysisAgent", agent_id="a1",
                             start_time=at(1), end_time=at(2), duration=1.0, prompt_tokens=100,
                             completion_tokens=50, llm_calls=1, tool_calls=1, error_type="E", error_message="m",
                             is_final_answer=True)],
        code_changes=CodeMetrics(code_actions=2, code_lines=7, files_modified=1, lines_added=5, lines_removed=2),
        dropped_records={"llm_calls": 2, "tools": 1},
        dropped_token_usage=TokenUsage(prompt_tokens=20, completion_tokens=10, total_tokens=30, unreported_calls=1,
                                       model_breakdown={"gpt-4": TokenUsage(prompt_tokens=20, completion_tokens=10,
                                                                            total_tokens=30)}),
    )
    implicit = TaskExecution(task_id="untracked", start_time=at(41).astimezone(IST), implicit=True,
                             llm_calls=[llm("gpt-4", 1, 2)])
    env = EnvironmentInfo(os_type="Linux", os_version="6.1", python_version="3.11.7", working_directory="/w",
                          project_root="/w", user_name="ü", timezone="UTC", environment_variables={"CI": "1"},
                          hostname="h", pid=42, telemetry_version="0.1.0", frameworks={"smolagents": "1.26.0"})
    return TelemetrySession(session_id="20250301T120000_123456_deadbeef", start_time=T0, end_time=at(50),
                            environment=env, tasks=[task, implicit])


MODELS = {
    "TokenUsage": lambda: TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_estimate=0.5,
                                     unreported_calls=4, model_breakdown={"m": TokenUsage(prompt_tokens=1)}),
    "LLMCall": lambda: full_session().tasks[0].llm_calls[0],
    "LLMCall-unreported": lambda: full_session().tasks[0].llm_calls[1],
    "ToolExecution": lambda: full_session().tasks[0].tools[0],
    "AgentExecution": lambda: full_session().tasks[0].agents[0],
    "StepExecution": lambda: full_session().tasks[0].steps[0],
    "CodeMetrics": lambda: full_session().tasks[0].code_changes,
    "EnvironmentInfo": lambda: full_session().environment,
    "TaskExecution": lambda: full_session().tasks[0],
    "TelemetrySession": full_session,
    "TelemetrySession-empty": lambda: TelemetrySession(session_id="s", start_time=T0),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_round_trips_exactly(name):
    original = MODELS[name]()
    text = original.model_dump_json()
    loaded = type(original).model_validate_json(text)
    assert loaded == original
    assert loaded.model_dump() == original.model_dump()
    assert loaded.model_dump_json() == text


def test_session_to_json_from_json_is_exact():
    session = full_session()
    text = session.to_json()
    loaded = TelemetrySession.from_json(text)
    assert loaded == session
    assert loaded.to_json() == text
    assert TelemetrySession.from_json(text.encode("utf-8")) == session
    assert TelemetrySession.from_json(session.to_json(indent=2)) == session


def test_file_carries_schema_version_iso_datetimes_and_status_values():
    data = json.loads(full_session().to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["start_time"] == "2025-03-01T12:00:00.123456Z"
    assert datetime.fromisoformat(data["tasks"][1]["start_time"]).utcoffset() == timedelta(hours=5, minutes=30)
    assert data["tasks"][0]["status"] == "failed"
    assert data["tasks"][0]["tools"][0]["status"] == "error"


def test_naive_datetimes_are_refused():
    with pytest.raises(ValidationError):
        TelemetrySession(session_id="s", start_time=datetime(2025, 1, 1))


def test_epoch_seconds_become_aware_utc_datetimes():
    task = TaskExecution(task_id="t", start_time=1_700_000_000.25)
    assert task.start_time == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=timezone.utc)


def test_newer_schema_is_refused_with_a_clear_message():
    data = json.loads(full_session().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValidationError, match="newer than this sop_telemetry understands"):
        TelemetrySession.from_json(json.dumps(data))


def test_task_status_has_the_spec_values():
    assert {s.value for s in TaskStatus} >= {"pending", "running", "completed", "failed", "cancelled"}


# -- totals ---------------------------------------------------------------------------------------------------------
def test_totals_are_sums_of_the_records_including_dropped_ones():
    session = full_session()
    total = session.total_tokens
    # 100+50 (c2) + unreported c3 + dropped 20+10 (+1 unreported) + implicit 1+2
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (121, 62, 183)
    assert total.unreported_calls == 2
    assert total.model_breakdown["gpt-4"].total_tokens == 183
    assert total.model_breakdown["claude"].total_tokens == 0
    assert total.model_breakdown["claude"].unreported_calls == 1
    assert total.cost_estimate == pytest.approx(0.0075)
    assert session.total_duration == 50.0
    assert session.tasks[0].token_usage.total_tokens == 180


def test_unreported_tokens_are_not_zero_tokens():
    call = llm("m", None, None)
    assert call.tokens_reported is False and call.prompt_tokens is None
    task = TaskExecution(task_id="t", start_time=T0, llm_calls=[call])
    assert task.token_usage.unreported_calls == 1 and task.token_usage.total_tokens == 0


def test_mutating_a_record_changes_the_totals():
    session = full_session()
    before = session.total_tokens.prompt_tokens
    session.tasks[0].llm_calls[0].prompt_tokens = 1000
    session.tasks[0].llm_calls[0].total_tokens = 1050
    assert session.total_tokens.prompt_tokens == before + 900
    assert session.total_tokens.total_tokens == 183 + 900
    session.tasks.pop()
    assert session.total_tokens.total_tokens == 180 + 900


def test_computed_totals_in_a_file_are_ignored_on_load():
    data = json.loads(full_session().to_json())
    data["total_tokens"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 999_999}
    data["total_duration"] = 12345.0
    data["tasks"][0]["token_usage"] = {"total_tokens": -5}
    loaded = TelemetrySession.from_json(json.dumps(data))
    assert loaded.total_tokens.total_tokens == 183
    assert loaded.total_duration == 50.0
    assert loaded.tasks[0].token_usage.total_tokens == 180
    assert loaded == full_session()


def test_open_session_duration_runs_to_its_last_record():
    session = TelemetrySession(session_id="s", start_time=T0, tasks=[
        TaskExecution(task_id="a", start_time=at(1), end_time=at(5)),
        TaskExecution(task_id="b", start_time=at(7)),
    ])
    assert session.total_duration == 7.0
    assert TelemetrySession(session_id="s", start_time=T0).total_duration == 0.0
