"""Files of schema 1 (written before the recording core was framework-neutral) load everywhere: the model, the
analysis, the CLI and the OTLP backfill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recorded_sessions import managed_run, record, tool_calling_run
from test_otlp import Receiver

from sop_telemetry import otel
from sop_telemetry.analysis import analyze_token_usage, load_sessions
from sop_telemetry.models import SCHEMA_VERSION, TelemetrySession

NEW_CALL_FIELDS = ("cached_tokens", "reasoning_tokens")
NEW_TOOL_FIELDS = ("retry_requested", "error_returned_to_model")


def as_schema_1(data: dict) -> dict:
    """A session file as the previous version wrote it: schema 1, `smolagents_version`, no `framework`."""
    data = json.loads(json.dumps(data))
    data["schema_version"] = 1
    data["environment"]["smolagents_version"] = data["environment"].pop("frameworks")["smolagents"]
    for task in data["tasks"]:
        for agent in task["agents"]:
            del agent["framework"]
        for call in task["llm_calls"]:
            for key in NEW_CALL_FIELDS:
                del call[key]
        for tool in task["tools"]:
            for key in NEW_TOOL_FIELDS:
                del tool[key]
    return data


@pytest.fixture
def old_file(manager, storage_dir) -> Path:
    session = record(manager, tool_calling_run, managed_run)
    assert SCHEMA_VERSION == 2 and session.schema_version == 2
    assert "smolagents" in session.environment.frameworks  # (with any other framework a test imported before)
    assert {agent.framework for task in session.tasks for agent in task.agents} == {"smolagents"}
    path = storage_dir / f"{session.session_id}.json"
    path.write_text(json.dumps(as_schema_1(json.loads(path.read_text()))))
    return path


def test_the_model_reads_schema_1(old_file):
    import smolagents

    session = TelemetrySession.from_json(old_file.read_text())
    assert session.schema_version == 1
    assert session.environment.frameworks == {"smolagents": smolagents.__version__}
    assert {agent.framework for task in session.tasks for agent in task.agents} == {None}
    assert session.total_tokens.total_tokens == 660


def test_the_analysis_reads_schema_1(old_file, storage_dir):
    (session,) = load_sessions(directory=storage_dir, agent="adder")  # (a filter reads every task)
    assert analyze_token_usage(session).total.total_tokens == 330


def test_the_cli_reads_schema_1(old_file, storage_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY")}
    for command in (["show", "latest"], ["report"], ["export", "latest", "--format", "csv"]):
        result = subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(storage_dir), *command],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0 and result.stderr == "", (command, result.stderr)
    shown = subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(storage_dir), "show", "latest"],
                           capture_output=True, text=True, env=env, timeout=120).stdout
    assert "smolagents" in shown


def test_the_otlp_backfill_reads_schema_1(old_file):
    import smolagents

    receiver = Receiver()
    try:
        session = TelemetrySession.from_json(old_file.read_text())
        result = otel.export_sessions_otlp([session], endpoint=receiver.endpoint)
        assert result.ok, result.summary()
        spans = receiver.spans()
    finally:
        receiver.close()
    assert len(spans) > 0
    assert spans[0]["resource"]["sop_telemetry.framework.smolagents.version"] == smolagents.__version__
