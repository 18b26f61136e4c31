"""OpenTelemetry export (sop_telemetry/otel.py): span tree, attributes, timings and ids as an OTLP receiver sees them,
live export, a collector that is down, refusing or silent, and coexistence with an application's own OpenTelemetry.

Every export goes to a real OTLP/HTTP receiver on 127.0.0.1 (http.server + opentelemetry-proto): nothing of the SDK
or the exporter is mocked. The Phoenix test starts a real Arize Phoenix server (marked slow; skipped without it).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="needs the otel extra: pip install -e '.[otel]'")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter", reason="needs the otel extra")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2",
                                    reason="the test receiver needs opentelemetry-proto")

from fakes import ScriptedModel, add, call, explode, run_team, written_session  # noqa: E402
from smolagents import ToolCallingAgent  # noqa: E402
from smolagents.utils import AgentGenerationError  # noqa: E402

from sop_telemetry import otel  # noqa: E402
from sop_telemetry.config import ConfigError  # noqa: E402
from sop_telemetry.error_handler import get_error_handler  # noqa: E402
from sop_telemetry.models import TelemetrySession  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# -- an OTLP/HTTP receiver -----------------------------------------------------------------------------------------
def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, which) if which else None


def _attrs(key_values: Any) -> Dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


class Receiver:
    """Collects what an OTLP exporter POSTs to /v1/traces. `status` is the HTTP answer (200: accept)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.paths: List[str] = []
        self._spans: List[dict] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if receiver.status == 200:
                    request = trace_service.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver._add(self.path, request)
                    payload = trace_service.ExportTraceServiceResponse().SerializeToString()
                else:
                    payload = b""
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="otlp-receiver",
                                       daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, path: str, request: Any) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "attributes": _attrs(span.attributes),
                        "status": (span.status.code, span.status.message),
                        "events": [(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in span.events],
                        "resource": resource,
                        "scope": (scope_spans.scope.name, scope_spans.scope.version),
                    })
        with self._cond:
            self.paths.append(path)
            self._spans.extend(spans)
            self._cond.notify_all()

    def spans(self) -> List[dict]:
        with self._cond:
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()
            self.paths.clear()

    def wait_for(self, predicate: Callable[[List[dict]], bool], timeout: float = 10.0) -> List[dict]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self._spans), timeout), "the receiver did not get the spans"
            return list(self._spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def roots(spans: List[dict]) -> List[dict]:
    return [s for s in spans if s["parent"] is None]


# -- the agent run -------------------------------------------------------------------------------------------------
def run_small(task: str = "add") -> str:
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    return ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run(task)


PRICES = {"boss-model": {"input_per_million": 1.0, "output_per_million": 2.0}}

EXPECTED_TREE = """\
task
  invoke_agent boss
    action step 1
      chat boss-model
      execute_tool add
      execute_tool slow_echo
      execute_tool slow_echo
    action step 2 [ERROR]
      chat boss-model
      execute_tool explode [ERROR]
    action step 3
      chat boss-model
    invoke_agent calculator
      action step 1
        chat sub-model
        execute_tool add
      action step 2
        chat sub-model
        execute_tool final_answer
    action step 4
      chat boss-model
      execute_tool final_answer
"""


def tree(spans: List[dict]) -> str:
    """The span tree as indented names; siblings in start order, except that the calls of one step (which may run
    in parallel) are ordered by name."""
    children: Dict[Optional[str], List[dict]] = {}
    for span in spans:
        children.setdefault(span["parent"], []).append(span)

    def key(span: dict) -> tuple:
        tool = span["name"].startswith("execute_tool")
        return (tool, span["name"] if tool else "", span["start"])

    lines: List[str] = []

    def walk(parent: Optional[str], depth: int) -> None:
        for span in sorted(children.get(parent, []), key=key):
            error = " [ERROR]" if span["status"][0] == 2 else ""
            lines.append("  " * depth + span["name"] + error)
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines) + "\n"


def ns(iso: Optional[str]) -> Optional[int]:
    """An ISO time from the session file as nanoseconds since the epoch, computed independently of otel.py."""
    if iso is None:
        return None
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1) * 1000


def backfill(manager: Any, receiver: Receiver) -> tuple:
    """Writes the session file, loads it back as any reader would and sends it; returns (file JSON, spans)."""
    data = written_session(manager)
    session = TelemetrySession.model_validate(data)
    result = otel.export_sessions_otlp([session], endpoint=receiver.endpoint)
    assert result.ok, result.summary()
    return data, receiver.spans()


# -- mapping -------------------------------------------------------------------------------------------------------
def test_a_task_is_one_trace_with_the_exact_tree_attributes_and_timings(manager, receiver):
    manager.initialize({"prices": PRICES})
    assert run_team() == "done"
    data, spans = backfill(manager, receiver)
    (task,) = data["tasks"]
    sid, tid = data["session_id"], task["task_id"]

    assert tree(spans) == EXPECTED_TREE
    assert receiver.paths == ["/v1/traces"]
    assert {s["trace_id"] for s in spans} == {f"{otel.trace_id_for(sid, tid):032x}"}
    assert len({s["span_id"] for s in spans}) == len(spans) == 22
    assert {s["scope"] for s in spans} == {("sop_telemetry", "0.1.0")}
    resource = spans[0]["resource"]
    assert (resource["service.name"], resource["service.instance.id"]) == ("sop_telemetry", sid)
    assert (resource["host.name"], resource["process.pid"]) == (data["environment"]["hostname"],
                                                                data["environment"]["pid"])

    # Every span carries its record's own start and end, to the microsecond the file holds.
    by_name = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
        assert span["attributes"]["sop_telemetry.session_id"] == sid
    (root,) = roots(spans)
    assert (root["start"], root["end"]) == (ns(task["start_time"]), ns(task["end_time"]))
    records = {("agent", a["agent_id"]): a for a in task["agents"]}
    records.update({("call", c["call_id"]): c for c in task["llm_calls"] + task["tools"]})
    records.update({("step", s["agent_id"], s["step_number"], s["step_type"]): s for s in task["steps"]})
    for span in spans:
        a = span["attributes"]
        if span["name"].startswith("invoke_agent"):
            rec = records[("agent", a["sop_telemetry.agent_id"])]
        elif "sop_telemetry.call_id" in a:
            rec = records[("call", a["sop_telemetry.call_id"])]
        elif "sop_telemetry.step.type" in a:
            rec = records[("step", a["sop_telemetry.agent_id"], a["sop_telemetry.step_number"],
                           a["sop_telemetry.step.type"])]
        else:
            rec = task
        assert (span["start"], span["end"]) == (ns(rec["start_time"]), ns(rec["end_time"])), span["name"]
        assert span["start"] <= span["end"]

    boss_rec, sub_rec = task["agents"]
    assert root["attributes"] == {
        "openinference.span.kind": "CHAIN",
        "sop_telemetry.session_id": sid,
        "sop_telemetry.task_id": tid,
        "sop_telemetry.task.description": "delegate",
        "sop_telemetry.status": "completed",
        "sop_telemetry.usage.input_tokens": 4 * 200 + 2 * 10,
        "sop_telemetry.usage.output_tokens": 4 * 20 + 2 * 1,
        "sop_telemetry.usage.total_tokens": 4 * 220 + 2 * 11,
        "sop_telemetry.cost_usd": pytest.approx(4 * (200 * 1.0 + 20 * 2.0) / 1e6),
    }
    assert root["status"] == (0, "")
    (boss,) = by_name["invoke_agent boss"]
    (calc,) = by_name["invoke_agent calculator"]
    assert boss["parent"] == root["span_id"] and calc["parent"] == boss["span_id"]
    assert boss["attributes"] == {
        "openinference.span.kind": "AGENT",
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "boss",
        "gen_ai.request.model": "boss-model",
        "sop_telemetry.agent_id": boss_rec["agent_id"],
        "sop_telemetry.agent_type": "ToolCallingAgent",
        "sop_telemetry.status": "completed",
        "sop_telemetry.agent.steps": 4,
        "sop_telemetry.session_id": sid,
    }
    assert calc["attributes"]["sop_telemetry.parent_agent_id"] == boss_rec["agent_id"]
    assert calc["attributes"]["gen_ai.agent.name"] == "calculator"

    first_chat = min(by_name["chat boss-model"], key=lambda s: s["start"])
    call_rec = records[("call", first_chat["attributes"]["sop_telemetry.call_id"])]
    assert first_chat["kind"] == 3  # SPAN_KIND_CLIENT
    assert first_chat["attributes"] == {
        "openinference.span.kind": "LLM",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "boss-model",
        "gen_ai.usage.input_tokens": 200,
        "gen_ai.usage.output_tokens": 20,
        "sop_telemetry.call_id": call_rec["call_id"],
        "sop_telemetry.agent_id": boss_rec["agent_id"],
        "sop_telemetry.agent_name": "boss",
        "sop_telemetry.step_number": 1,
        "sop_telemetry.llm.purpose": "action",
        "sop_telemetry.cost_usd": pytest.approx(240 / 1e6),
        "sop_telemetry.session_id": sid,
    }
    for chat in by_name["chat sub-model"]:
        a = chat["attributes"]
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (10, 1)
        assert "sop_telemetry.cost_usd" not in a  # no price known for it: unknown, not zero

    (boom,) = by_name["execute_tool explode"]
    assert boom["status"][0] == 2 and boom["status"][1].startswith("ValueError: ")
    assert "exploded: boom" in boom["status"][1]
    assert boom["attributes"]["error.type"] == "ValueError"
    assert boom["attributes"]["gen_ai.tool.name"] == "explode"
    assert boom["attributes"]["gen_ai.operation.name"] == "execute_tool"
    ((event_name, event_time, event_attrs),) = boom["events"]
    assert (event_name, event_time, event_attrs["exception.type"]) == ("exception", boom["end"], "ValueError")
    (step2,) = [s for s in spans if s["name"] == "action step 2" and s["parent"] == boss["span_id"]]
    assert step2["attributes"]["error.type"] == "AgentToolExecutionError"

    # The parallel calls overlap in time, and each sits under its own step.
    echoes = by_name["execute_tool slow_echo"]
    assert max(e["start"] for e in echoes) < min(e["end"] for e in echoes)
    (step1,) = [s for s in spans if s["name"] == "action step 1" and s["parent"] == boss["span_id"]]
    assert {e["parent"] for e in echoes} == {step1["span_id"]}
    assert step1["attributes"]["sop_telemetry.step.tool_calls"] == 3


def test_every_span_names_its_openinference_kind(manager, receiver):
    assert run_team() == "done"
    _, spans = backfill(manager, receiver)
    kinds = {(s["name"].split()[0], s["attributes"]["openinference.span.kind"]) for s in spans}
    assert kinds == {("task", "CHAIN"), ("invoke_agent", "AGENT"), ("action", "CHAIN"), ("chat", "LLM"),
                     ("execute_tool", "TOOL")}


def test_failed_task_and_unreported_tokens(manager, receiver):
    model = ScriptedModel([call("add", a=1, b=2), RuntimeError("provider down")], usage=None)
    with pytest.raises(AgentGenerationError, match="provider down"):
        ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("fail")
    data, spans = backfill(manager, receiver)
    (root,) = roots(spans)
    assert root["status"][0] == 2
    assert root["attributes"]["sop_telemetry.status"] == "failed"
    assert root["attributes"]["error.type"] == data["tasks"][0]["error_type"]
    chats = [s for s in spans if s["name"].startswith("chat")]
    assert len(chats) == 2
    for chat in chats:
        # No usage reported: no token attributes at all (unknown is not zero).
        assert "gen_ai.usage.input_tokens" not in chat["attributes"]
        assert chat["attributes"]["sop_telemetry.llm.tokens_reported"] is False
    failed = [c for c in chats if c["status"][0] == 2]
    assert len(failed) == 1 and failed[0]["attributes"]["error.type"] == "RuntimeError"


def test_manual_records_and_a_still_open_task(manager, receiver):
    collector = manager.get_collector()
    collector.start_task("custom_task", "A custom task")
    collector.record_llm_call(model="gpt-4", prompt_tokens=150, completion_tokens=75, duration=3.2)
    collector.record_tool_usage("file_reader", 0.8)
    collector.end_task("custom_task")
    collector.start_task("still_open", "not finished")
    collector.record_llm_call(model="gpt-4", prompt_tokens=1, completion_tokens=1, duration=0.1)
    try:
        data, spans = backfill(manager, receiver)
    finally:
        collector.end_task("still_open")  # the open task is this context's current one until it ends
    assert sorted(tree(spans).splitlines()) == sorted(
        ["task", "  chat gpt-4", "  execute_tool file_reader", "task", "  chat gpt-4"])
    assert len({s["trace_id"] for s in spans}) == 2
    open_root = next(r for r in roots(spans) if r["attributes"]["sop_telemetry.task_id"] == "still_open")
    assert open_root["attributes"]["sop_telemetry.status"] == "running"
    assert open_root["end"] >= max(s["end"] for s in spans if s["trace_id"] == open_root["trace_id"])


# -- determinism ---------------------------------------------------------------------------------------------------
def _identity(spans: List[dict]) -> List[tuple]:
    return sorted((s["trace_id"], s["span_id"], s["parent"], s["name"], s["start"], s["end"],
                   json.dumps(s["attributes"], sort_keys=True), s["status"]) for s in spans)


def test_the_same_session_sent_twice_is_the_same_trace(manager, receiver):
    run_small("one")
    run_small("two")
    data, first = backfill(manager, receiver)
    receiver.clear()
    _, second = backfill(manager, receiver)
    assert _identity(first) == _identity(second)
    assert len({s["trace_id"] for s in first}) == 2  # one trace per task
    # Ids are derived from the session and task ids, not from the machine or the moment that sends them.
    expected = {f"{otel.trace_id_for(data['session_id'], t['task_id']):032x}" for t in data["tasks"]}
    assert {s["trace_id"] for s in first} == expected


def test_live_export_and_a_later_backfill_send_the_same_spans(manager, receiver):
    manager.initialize({"otlp_enabled": True, "otlp_endpoint": receiver.endpoint, "prices": PRICES})
    assert run_team() == "done"
    live = receiver.wait_for(lambda spans: len(spans) == 22)
    receiver.clear()
    _, backfilled = backfill(manager, receiver)
    assert _identity(live) == _identity(backfilled)
    assert tree(live) == EXPECTED_TREE


# -- live export ---------------------------------------------------------------------------------------------------
def test_live_export_by_environment_sends_each_task_as_it_ends(manager, receiver, monkeypatch):
    monkeypatch.setenv("SOP_TELEMETRY_OTLP", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    manager.initialize({})
    assert run_small("first") == "3"
    spans = receiver.wait_for(lambda spans: len(roots(spans)) == 1)
    assert roots(spans)[0]["attributes"]["sop_telemetry.task.description"] == "first"
    assert run_small("second") == "3"
    spans = receiver.wait_for(lambda spans: len(roots(spans)) == 2)
    assert manager._otlp.flush(5)
    stats = manager.get_storage_stats()["otlp"]
    assert stats["endpoint"] == receiver.endpoint + "/v1/traces"
    assert (stats["exported_tasks"], stats["exported_spans"], stats["failed_tasks"], stats["dropped_tasks"]) == (
        2, len(spans), 0, 0)
    assert receiver.paths == ["/v1/traces", "/v1/traces"]
    # The JSON file is still written: it is the source of truth.
    assert [t["description"] for t in written_session(manager)["tasks"]] == ["first", "second"]


def test_live_export_masks_credentials_as_the_session_file_does(manager, receiver, monkeypatch):
    secret = "sk-live-0123456789abcdef"
    monkeypatch.setenv("MY_SERVICE_API_KEY", secret)
    manager.initialize({"otlp_enabled": True, "otlp_endpoint": receiver.endpoint})
    model = ScriptedModel([call("explode", reason=f"bad key {secret}"), call("final_answer", answer="ok")])
    assert ToolCallingAgent(tools=[explode], model=model, verbosity_level=0).run(f"use {secret}") == "ok"
    spans = receiver.wait_for(lambda spans: len(roots(spans)) == 1)
    sent = json.dumps(spans)
    assert secret not in sent and "***" in sent
    (boom,) = [s for s in spans if s["name"] == "execute_tool explode"]
    assert boom["status"][1] == "ValueError: exploded: bad key ***"
    assert secret not in json.dumps(written_session(manager))


def test_live_export_never_sends_a_key_that_a_clip_cut_through(manager, receiver, monkeypatch):
    key = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("PROVIDER_API_KEY", key)
    manager.initialize({"otlp_enabled": True, "otlp_endpoint": receiver.endpoint})
    near_the_clip = "x" * 485 + key
    model = ScriptedModel([call("explode", reason=near_the_clip), call("final_answer", answer="ok")])
    assert ToolCallingAgent(tools=[explode], model=model, verbosity_level=0).run(near_the_clip) == "ok"
    spans = receiver.wait_for(lambda spans: len(roots(spans)) == 1)
    assert key[:4] not in json.dumps(spans)
    assert roots(spans)[0]["attributes"]["sop_telemetry.task.description"] == "x" * 485 + "***"


def test_live_export_is_off_unless_asked_for(manager, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)  # set for some other program
    manager.initialize({})
    run_small()
    assert manager.get_storage_stats()["otlp"] == {"enabled": False}
    monkeypatch.setenv("SOP_TELEMETRY_OTLP", "0")  # the operator's "no" wins over code
    manager.initialize({"otlp_enabled": True})
    assert manager.get_storage_stats()["otlp"] == {"enabled": False}
    manager.flush_data()
    assert receiver.spans() == []


def test_config_keys_are_validated(manager):
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        manager.initialize({"otlp_endpoint": "collector:4318"})
    assert otel.resolve_endpoint("http://c:4318") == "http://c:4318/v1/traces"
    assert otel.resolve_endpoint("http://c:4318/") == "http://c:4318/v1/traces"
    assert otel.resolve_endpoint("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    assert otel.resolve_endpoint(None) is None


# -- a collector that is down, refusing or silent ------------------------------------------------------------------
def _closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("failure", ["down", "refusing", "unavailable"])
def test_a_failing_collector_costs_the_agent_nothing_and_is_counted(manager, failure, caplog):
    server = None
    if failure == "down":
        endpoint = _closed_port()
    else:
        server = Receiver(status=400 if failure == "refusing" else 503)
        endpoint = server.endpoint
    try:
        manager._otlp = otel.LiveOtlpExporter(endpoint=endpoint, timeout=0.5, max_queue=1)
        manager._otlp.collect = manager._materialize
        for i in range(3):
            started = time.perf_counter()
            assert run_small(f"run {i}") == "3"
            assert time.perf_counter() - started < 1.0
        assert manager._otlp.flush(10)
        stats = manager.get_storage_stats()["otlp"]
        assert stats["exported_tasks"] == 0
        assert stats["failed_tasks"] >= 1 and stats["failed_tasks"] + stats["dropped_tasks"] == 3
        assert stats["last_error"]
        summary = get_error_handler().get_error_summary()
        assert summary["otlp.export"]["count"] == stats["failed_tasks"]
        assert summary["otlp.export"]["last_error_type"] == "OtlpExportError"
        assert summary.get("otlp.queue", {}).get("count", 0) == stats["dropped_tasks"]
        assert len(written_session(manager)["tasks"]) == 3
        # The exporter's per-attempt warnings are kept out of the host's log; ours is said once.
        assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
        assert len([r for r in caplog.records if "otlp.export failed" in r.getMessage()]) == 1
    finally:
        if server is not None:
            server.close()


def test_a_silent_collector_never_blocks_the_agent_and_overflow_is_dropped(manager, silent_collector):
    manager._otlp = otel.LiveOtlpExporter(endpoint=silent_collector, timeout=5.0, max_queue=1)
    for i in range(3):
        started = time.perf_counter()
        assert run_small(f"run {i}") == "3"
        assert time.perf_counter() - started < 1.0  # one export hangs for 5 s on the exporter's thread
    manager.get_collector().materialize()  # every ended task submitted (the writer may not have got to them yet)
    stats = manager.get_storage_stats()["otlp"]
    assert stats["dropped_tasks"] >= 1 and stats["exported_tasks"] == 0
    assert get_error_handler().get_error_summary()["otlp.queue"]["count"] == stats["dropped_tasks"]
    # Exit does not wait for a collector that does not answer longer than the bounded exit wait.
    started = time.perf_counter()
    manager._otlp.shutdown(timeout=0.2)
    assert time.perf_counter() - started < 1.0
    assert len(written_session(manager)["tasks"]) == 3


def test_live_export_through_config_to_a_dead_collector(manager, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")  # seconds, as the Python SDK reads it
    manager.initialize({"otlp_enabled": True, "otlp_endpoint": _closed_port()})
    assert run_small() == "3"
    assert manager._otlp.flush(10)
    stats = manager.get_storage_stats()
    assert (stats["otlp"]["failed_tasks"], stats["otlp"]["exported_tasks"]) == (1, 0)
    assert stats["telemetry_errors"] >= 1
    # A collector that failed last time does not hold up the program's exit.
    started = time.perf_counter()
    manager.shutdown()
    assert time.perf_counter() - started < 2.0


# -- a program's exit ---------------------------------------------------------------------------------------------
_TEAM_PROGRAM = """
import sys
import sop_telemetry
from fakes import run_team
answer = run_team("exit")
if sys.argv[1] == "later":
    print("answer:", answer, flush=True)
    sys.stdin.read()  # the test closes it once the receiver has the task: export did not wait for the exit
"""


@pytest.mark.parametrize("when", ["at_once", "later"])
def test_a_program_that_exits_right_after_its_run_has_sent_the_whole_tree(receiver, tmp_path, when):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SOP_TELEMETRY_"))}
    env.update(SOP_TELEMETRY_OTLP="1", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
               SOP_TELEMETRY_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    child = subprocess.Popen([sys.executable, "-c", _TEAM_PROGRAM, when], env=env, cwd=str(ROOT), text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if when == "later":
            assert "answer: done\n" in iter(child.stdout.readline, "")
            receiver.wait_for(lambda spans: len(spans) == 22, timeout=30)
        _out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "otlp" not in err and "Traceback" not in err, err

    spans = receiver.spans()  # everything arrived before the process ended
    assert tree(spans) == EXPECTED_TREE and len(spans) == 22
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    (task,) = data["tasks"]
    (root,) = roots(spans)
    usage = data["total_tokens"]
    assert (root["attributes"]["sop_telemetry.usage.input_tokens"],
            root["attributes"]["sop_telemetry.usage.output_tokens"]) == (4 * 200 + 2 * 10, 4 * 20 + 2 * 1) == (
        usage["prompt_tokens"], usage["completion_tokens"])
    chats = sorted((s["attributes"]["sop_telemetry.call_id"], s["attributes"]["gen_ai.usage.input_tokens"],
                    s["attributes"]["gen_ai.usage.output_tokens"]) for s in spans if s["name"].startswith("chat "))
    assert chats == sorted((c["call_id"], c["prompt_tokens"], c["completion_tokens"]) for c in task["llm_calls"])
    assert {s["trace_id"] for s in spans} == {f"{otel.trace_id_for(data['session_id'], task['task_id']):032x}"}


# -- without the extra, and next to an application's own OpenTelemetry ---------------------------------------------
def _python(*pieces: str, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> dict:
    """Runs the code pieces (each dedented) in a fresh interpreter; returns the JSON its last line prints."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "SOP_TELEMETRY_"))}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    code = "\n".join(textwrap.dedent(piece) for piece in pieces)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_RUN = """
    from smolagents import ToolCallingAgent
    from fakes import ScriptedModel, add, call
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    answer = ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add")
"""


def test_nothing_of_opentelemetry_is_imported_unless_export_is_on(tmp_path):
    out = _python("""
        import json, sys
        import sop_telemetry
        from sop_telemetry import TelemetryManager
        manager = TelemetryManager.get_instance()
        manager.initialize({"storage_dir": %r})
    """ % str(tmp_path), _RUN, """
        path = manager.flush_data()
        print(json.dumps({"answer": answer, "written": path is not None, "otlp": manager.get_storage_stats()["otlp"],
                          "modules": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
    """, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert out == {"answer": "3", "written": True, "otlp": {"enabled": False}, "modules": []}


def test_without_the_otel_extra_export_on_is_a_warning_not_a_failure(tmp_path):
    out = _python("""
        import json, sys
        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, NoOpenTelemetry())
        import sop_telemetry
        from sop_telemetry import TelemetryManager, get_error_handler
        manager = TelemetryManager.get_instance()
        manager.initialize({"storage_dir": %r, "otlp_enabled": True})
    """ % str(tmp_path), _RUN, """
        path = manager.flush_data()
        setup = get_error_handler().get_error_summary().get("otlp.setup", {})
        print(json.dumps({"answer": answer, "written": path is not None, "otlp": manager.get_storage_stats()["otlp"],
                          "error": setup.get("last_error", "")}))
    """)
    assert (out["answer"], out["written"], out["otlp"]) == ("3", True, {"enabled": False})
    assert "pip install 'sop-telemetry[otel]'" in out["error"]


def test_an_application_tracer_provider_and_openinference_are_left_alone(tmp_path, receiver):
    pytest.importorskip("openinference.instrumentation.smolagents", reason="needs openinference (bench extra)")
    out = _python("""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from openinference.instrumentation.smolagents import SmolagentsInstrumentor
        app_spans = InMemorySpanExporter()
        app_provider = TracerProvider()
        app_provider.add_span_processor(SimpleSpanProcessor(app_spans))
        trace.set_tracer_provider(app_provider)
        SmolagentsInstrumentor().instrument()
        import sop_telemetry
        from sop_telemetry import TelemetryManager
        manager = TelemetryManager.get_instance()
        manager.initialize({"storage_dir": %r})
    """ % str(tmp_path), _RUN, """
        assert manager._otlp.flush(10)
        print(json.dumps({"answer": answer, "same_provider": trace.get_tracer_provider() is app_provider,
                          "app_scopes": sorted({s.instrumentation_scope.name for s in app_spans.get_finished_spans()}),
                          "otlp": manager.get_storage_stats()["otlp"]}))
    """, env={"SOP_TELEMETRY_OTLP": "1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint + "/v1/traces"})
    assert out["answer"] == "3" and out["same_provider"] is True
    assert out["app_scopes"] and "sop_telemetry" not in out["app_scopes"]  # OpenInference's spans, not ours
    spans = receiver.spans()
    assert out["otlp"]["exported_spans"] == len(spans) > 0
    assert {s["scope"][0] for s in spans} == {"sop_telemetry"}  # none of the app's spans came our way
    assert len({s["span_id"] for s in spans}) == len(spans)


# -- a real backend ------------------------------------------------------------------------------------------------
# Arize Phoenix is large (~850 MB with its dependencies) and registers a pytest plugin that adds seconds to every
# pytest start and imports OpenTelemetry into the test process, so it is best kept in its own virtualenv:
#     python3 -m venv /work/phoenix-venv && /work/phoenix-venv/bin/pip install arize-phoenix
#     SOP_TELEMETRY_PHOENIX_PYTHON=/work/phoenix-venv/bin/python python -m pytest -m slow tests/test_otlp.py
# The server runs on that interpreter; this one sends the spans and reads them back through Phoenix's REST API.
def _phoenix_python() -> str:
    configured = os.environ.get("SOP_TELEMETRY_PHOENIX_PYTHON", "").strip()
    if configured:
        return configured
    import importlib.util

    if importlib.util.find_spec("phoenix") is not None and importlib.util.find_spec("phoenix.server") is not None:
        return sys.executable
    pytest.skip("arize-phoenix is not installed: set SOP_TELEMETRY_PHOENIX_PYTHON to a python that has it "
                "(pip install arize-phoenix)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def phoenix(tmp_path) -> Iterator[str]:
    python = _phoenix_python()
    port, grpc_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_", "PYTHON"))}
    env.update({
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
        # Nothing leaves the machine: no telemetry pixels, no fonts or downloads, no assistant, no MCP server.
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
        "PHOENIX_ENABLE_MCP_SERVER": "false",
    })
    log_path = tmp_path / "phoenix.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([python, "-m", "phoenix.server.main", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.skip(f"Phoenix exited at start (code {proc.returncode}): {log_path.read_text()[-500:]}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("Phoenix did not answer /healthz within 90 s")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _phoenix_spans(base: str, expected: int) -> List[dict]:
    """The spans of Phoenix's default project through its REST API, once it has ingested `expected` of them."""
    import urllib.request

    deadline = time.monotonic() + 30
    while True:  # Phoenix ingests asynchronously
        with urllib.request.urlopen(f"{base}/v1/projects/default/spans?limit=1000", timeout=10) as answer:
            spans = json.load(answer)["data"]
        if len(spans) >= expected or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


@pytest.mark.slow
def test_phoenix_receives_a_backfilled_session_with_its_token_counts(manager, phoenix):
    base = phoenix
    assert run_team() == "done"
    session = TelemetrySession.model_validate(written_session(manager))
    result = otel.export_sessions_otlp([session], endpoint=base)
    assert result.ok and result.spans == 22, result.summary()

    rows = _phoenix_spans(base, 22)
    assert len(rows) == 22
    chats = [r for r in rows if r["name"].startswith("chat ")]
    # Phoenix reads the GenAI attributes into its own (OpenInference) token counts and span kinds.
    got = sorted((r["name"], r["attributes"]["llm.token_count.prompt"], r["attributes"]["llm.token_count.completion"])
                 for r in chats)
    assert got == [("chat boss-model", 200, 20)] * 4 + [("chat sub-model", 10, 1)] * 2
    assert {r["span_kind"] for r in chats} == {"LLM"}
    task = session.tasks[0]
    assert {r["context"]["trace_id"] for r in rows} == {f"{otel.trace_id_for(session.session_id, task.task_id):032x}"}
    assert [r["status_code"] for r in rows if r["name"] == "execute_tool explode"] == ["ERROR"]
    (root,) = [r for r in rows if r["name"] == "task"]
    assert datetime.fromisoformat(root["start_time"]) == task.start_time
    assert datetime.fromisoformat(root["end_time"]) == task.end_time


# -- the command line --------------------------------------------------------------------------------------------
def _cli(*args: str, directory: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_backfill_by_id_and_by_time_range_sends_the_same_trace(manager, receiver, storage_dir):
    run_small("cli one")
    data = written_session(manager)

    by_id = _cli("--json", "export", "latest", "--format", "otlp", "--endpoint", receiver.endpoint,
                 directory=storage_dir)
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout)["ok"] is True
    first = receiver.spans()
    assert {s["trace_id"] for s in first} == {
        f"{otel.trace_id_for(data['session_id'], t['task_id']):032x}" for t in data["tasks"]}

    receiver.clear()
    by_range = _cli("export", "--format", "otlp", "--since", "1d", "--endpoint", receiver.endpoint,
                    directory=storage_dir)
    assert by_range.returncode == 0, by_range.stderr
    assert by_range.stdout.startswith(f"sent {len(first)} spans (1 tasks, 1 sessions)")
    assert _identity(receiver.spans()) == _identity(first)


def test_cli_backfill_errors_are_one_line_and_status_one(manager, storage_dir):
    run_small("cli")
    written_session(manager)
    missing = _cli("export", "--format", "otlp", directory=storage_dir)
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert "give a session ID or --since/--until" in missing.stderr
    bad_header = _cli("export", "latest", "--format", "otlp", "--header", "nokey", directory=storage_dir)
    assert bad_header.returncode == 1 and "KEY=VALUE" in bad_header.stderr
    dead = _cli("export", "latest", "--format", "otlp", "--endpoint", _closed_port(), "--timeout", "2",
                directory=storage_dir)
    assert dead.returncode == 1 and "failed" in dead.stdout and "Traceback" not in dead.stderr


def test_cli_backfill_exits_1_when_anything_was_not_sent(manager, receiver, storage_dir):
    run_small("cli")
    written_session(manager)
    refusing = Receiver(status=400)
    try:
        for extra in ([], ["--json"]):
            refused = _cli(*extra, "export", "latest", "--format", "otlp", "--endpoint", refusing.endpoint,
                           directory=storage_dir)
            assert refused.returncode == 1, refused.stdout
            assert "8 spans failed" in refused.stdout or '"failed_spans": 8' in refused.stdout
    finally:
        refusing.close()
    # Every span accepted, but one session in the range could not be read: not sent, so not a success either.
    (storage_dir / "20990101T000000_000000_0badf11e.json").write_text('{"session_id": "trunc')
    partial = _cli("export", "--format", "otlp", "--since", "1d", "--endpoint", receiver.endpoint,
                   directory=storage_dir)
    assert partial.returncode == 1
    assert partial.stdout.startswith("sent 8 spans (1 tasks, 1 sessions)")
    assert partial.stdout.rstrip().endswith("; 1 unreadable session file(s) not sent")
    assert "skipped 20990101T000000_000000_0badf11e" in partial.stderr
    as_json = json.loads(_cli("--json", "export", "--format", "otlp", "--since", "1d", "--endpoint", receiver.endpoint,
                              directory=storage_dir).stdout)
    assert (as_json["ok"], as_json["unreadable_sessions"]) == (False, ["20990101T000000_000000_0badf11e"])
