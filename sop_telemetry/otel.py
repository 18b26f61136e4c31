"""OpenTelemetry export: recorded tasks as OTLP traces, sent live as each task ends or as a backfill of stored sessions.

Usage::

    pip install 'sop-telemetry[otel]'

    # Live (opt-in): each task is sent when it ends, from a background thread.
    TelemetryManager.get_instance().initialize({"otlp_enabled": True, "otlp_endpoint": "http://collector:4318"})
    #   or, with no code change:  SOP_TELEMETRY_OTLP=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 python app.py
    TelemetryManager.get_instance().get_storage_stats()["otlp"]     # exported / failed / dropped counts

    # Backfill: stored sessions, e.g. from `sop-telemetry export ID --format otlp`.
    from sop_telemetry.otel import export_sessions_otlp
    result = export_sessions_otlp([session], endpoint="http://collector:4318")
    print(result.summary())

One task is one trace: the task is the root span; agent runs are `invoke_agent {name}` spans nested by
`parent_agent_id`; steps are spans under their agent run; model calls (`chat {model}`) and tool calls
(`execute_tool {name}`) sit under the step that made them (under the agent run when no step matches). Attributes
follow the OpenTelemetry GenAI semantic conventions, plus our ids and cost as `sop_telemetry.*`, and each span names
its OpenInference kind (`openinference.span.kind`: CHAIN for tasks and steps, AGENT, LLM, TOOL) for Phoenix.
Timestamps are the records' own. Trace and span ids are hashes of the session, task and record ids, so a session
sent twice (live, then backfilled) is the same trace with the same spans.

The spans are the SDK's own `ReadableSpan` objects, sent by the official OTLP/HTTP exporter. No TracerProvider is
created and the global one is never read or set: an application's own OpenTelemetry setup, or OpenInference, is left
exactly as it was, and nothing here emits through it. This module is imported only when OTLP export is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import socket
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

try:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import (
        TELEMETRY_SDK_LANGUAGE,
        TELEMETRY_SDK_NAME,
        TELEMETRY_SDK_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as exc:  # pragma: no cover - exercised by the "without the extra" test in a subprocess
    raise ImportError(
        f"OpenTelemetry export needs the otel extra: pip install 'sop-telemetry[otel]' ({exc})"
    ) from exc

from . import __version__
from .error_handler import get_error_handler, guard, report
from .models import AgentExecution, EnvironmentInfo, TaskExecution, TelemetrySession
from .status import CallStatus, TaskStatus

logger = logging.getLogger("sop_telemetry")

__all__ = [
    "LiveOtlpExporter",
    "OtlpDropped",
    "OtlpExportError",
    "OtlpExportResult",
    "export_sessions_otlp",
    "resolve_endpoint",
    "session_resource",
    "session_spans",
    "span_id_for",
    "task_spans",
    "trace_id_for",
]

DEFAULT_TIMEOUT = 10.0  # seconds per export request, retries included (the OTLP exporter's own default)
DEFAULT_MAX_QUEUE = 256  # ended tasks waiting for the live exporter; beyond this they are dropped and counted
DEFAULT_BATCH_SPANS = 512  # spans per request: keeps a huge task under receivers' request-size limits
EXIT_TIMEOUT = 5.0  # how long exit waits for queued tasks, unless the collector's last answer was a failure
TRACES_PATH = "/v1/traces"

_SCOPE = InstrumentationScope("sop_telemetry", __version__)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.common.http")


# -- ids -----------------------------------------------------------------------------------------------------------
def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(("sop_telemetry", *parts)).encode("utf-8", "surrogatepass")).digest()


def trace_id_for(session_id: str, task_id: str) -> int:
    """The trace id of a task: the same for the same session and task, wherever and however often it is sent."""
    return int.from_bytes(_digest(session_id, task_id)[:16], "big") or 1


def span_id_for(session_id: str, task_id: str, key: str) -> int:
    """The span id of one record of a task; `key` names the record (kind, position in its list, record id)."""
    return int.from_bytes(_digest(session_id, task_id, key)[:8], "big") or 1


# -- mapping -------------------------------------------------------------------------------------------------------
def _ns(moment: Optional[datetime]) -> Optional[int]:
    """Exact nanoseconds since the epoch (integer arithmetic: a float would lose the microseconds)."""
    if moment is None:
        return None
    return (moment - _EPOCH) // _MICROSECOND * 1000


def _span_times(rec: Any, fallback_end: int) -> Tuple[int, int]:
    start = _ns(rec.start_time) or 0
    end = _ns(rec.end_time)
    if end is None and rec.duration is not None:
        end = start + int(rec.duration * 1e9)
    if end is None:
        end = max(start, fallback_end)  # still running when the session was written
    return start, max(start, end)


def _clean(attributes: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


def _error(error_type: Optional[str], message: Optional[str], end: int) -> Tuple[Status, List[Event], Dict[str, Any]]:
    kind = error_type or "_OTHER"  # the semantic conventions' value for an unknown error type
    description = f"{kind}: {message}" if message else kind
    event_attributes = _clean({"exception.type": error_type, "exception.message": message})
    return (Status(StatusCode.ERROR, description), [Event("exception", event_attributes, timestamp=end)],
            {"error.type": kind})


class _TraceBuilder:
    def __init__(self, session_id: str, task: TaskExecution, resource: Resource) -> None:
        self.session_id = session_id
        self.task_id = task.task_id
        self.trace_id = trace_id_for(session_id, task.task_id)
        self.resource = resource
        self.spans: List[ReadableSpan] = []

    def context(self, key: str) -> SpanContext:
        return SpanContext(self.trace_id, span_id_for(self.session_id, self.task_id, key), is_remote=False,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def add(self, context: SpanContext, parent: Optional[SpanContext], name: str, times: Tuple[int, int],
            attributes: Mapping[str, Any], kind: SpanKind = SpanKind.INTERNAL,
            error: Optional[Tuple[Optional[str], Optional[str]]] = None) -> None:
        attrs = _clean(attributes)
        attrs["sop_telemetry.session_id"] = self.session_id
        status = Status(StatusCode.UNSET)
        events: List[Event] = []
        if error is not None:
            status, events, extra = _error(error[0], error[1], times[1])
            attrs.update(extra)
        self.spans.append(ReadableSpan(
            name=name, context=context, parent=parent, resource=self.resource, attributes=attrs, events=events,
            kind=kind, status=status, start_time=times[0], end_time=times[1], instrumentation_scope=_SCOPE,
        ))


def _failed(status: Any) -> bool:
    return status in (TaskStatus.FAILED, CallStatus.ERROR)


def _value(status: Any) -> Any:
    return getattr(status, "value", status)


def task_spans(session_id: str, task: TaskExecution, resource: Optional[Resource] = None) -> List[ReadableSpan]:
    """The spans of one task's trace, root first."""
    b = _TraceBuilder(session_id, task, resource if resource is not None else session_resource(session_id))
    ends = [_ns(r.end_time) or _ns(r.start_time) or 0
            for records in (task.agents, task.llm_calls, task.tools, task.steps) for r in records]
    last = max([_ns(task.start_time) or 0, *ends])
    task_times = _span_times(task, last)

    root = b.context("task")
    usage = task.token_usage
    dropped = {f"sop_telemetry.dropped.{kind}": count for kind, count in sorted(task.dropped_records.items())}
    b.add(root, None, "task", task_times, {
        "openinference.span.kind": "CHAIN",
        "sop_telemetry.task_id": task.task_id,
        "sop_telemetry.task.description": task.description or None,
        "sop_telemetry.status": _value(task.status),
        "sop_telemetry.stop_reason": task.stop_reason,
        "sop_telemetry.sop_category": task.sop_category,
        "sop_telemetry.implicit": task.implicit or None,
        "sop_telemetry.usage.input_tokens": usage.prompt_tokens,
        "sop_telemetry.usage.output_tokens": usage.completion_tokens,
        "sop_telemetry.usage.total_tokens": usage.total_tokens,
        "sop_telemetry.usage.unreported_calls": usage.unreported_calls or None,
        "sop_telemetry.cost_usd": usage.cost_estimate,
        "sop_telemetry.code.actions": task.code_changes.code_actions or None,
        "sop_telemetry.code.lines": task.code_changes.code_lines or None,
        **dropped,
    }, error=(task.error_type, task.error_message) if _failed(task.status) else None)

    # Span contexts first (they are only ids), so that a child can name a parent listed after it.
    agents: Dict[str, SpanContext] = {}
    agent_contexts = []
    for index, agent in enumerate(task.agents):
        ctx = b.context(f"agent/{index}/{agent.agent_id}")
        agent_contexts.append(ctx)
        if agent.agent_id:
            agents.setdefault(agent.agent_id, ctx)
    for agent, ctx in zip(task.agents, agent_contexts, strict=True):
        parent = agents.get(agent.parent_agent_id or "", root)
        if parent is ctx:
            parent = root
        _agent_span(b, agent, ctx, parent, last)

    steps: Dict[Tuple[Optional[str], Optional[int], str], SpanContext] = {}
    for index, step in enumerate(task.steps):
        ctx = b.context(f"step/{index}/{step.agent_id or ''}/{step.step_number}")
        steps.setdefault((step.agent_id, step.step_number, step.step_type), ctx)
        number = "" if step.step_number is None else f" {step.step_number}"
        b.add(ctx, agents.get(step.agent_id or "", root), f"{step.step_type} step{number}", _span_times(step, last), {
            "openinference.span.kind": "CHAIN",
            "sop_telemetry.step.type": step.step_type,
            "sop_telemetry.step_number": step.step_number,
            "sop_telemetry.agent_id": step.agent_id,
            "sop_telemetry.agent_name": step.agent_name,
            "sop_telemetry.step.llm_calls": step.llm_calls,
            "sop_telemetry.step.tool_calls": step.tool_calls,
            "sop_telemetry.step.input_tokens": step.prompt_tokens,
            "sop_telemetry.step.output_tokens": step.completion_tokens,
            "sop_telemetry.step.is_final_answer": step.is_final_answer or None,
        }, error=(step.error_type, step.error_message) if step.error_type else None)

    def parent_of(agent_id: Optional[str], step_number: Optional[int], step_type: str) -> SpanContext:
        return steps.get((agent_id, step_number, step_type)) or agents.get(agent_id or "", root)

    for index, call in enumerate(task.llm_calls):
        reported = call.tokens_reported
        b.add(b.context(f"llm/{index}/{call.call_id}"),
              parent_of(call.agent_id, call.step_number, call.purpose or "action"),
              f"chat {call.model}", _span_times(call, last), {
                  "openinference.span.kind": "LLM",
                  "gen_ai.operation.name": "chat",
                  "gen_ai.request.model": call.model,
                  "gen_ai.usage.input_tokens": call.prompt_tokens if reported else None,
                  "gen_ai.usage.output_tokens": call.completion_tokens if reported else None,
                  "sop_telemetry.call_id": call.call_id or None,
                  "sop_telemetry.agent_id": call.agent_id,
                  "sop_telemetry.agent_name": call.agent_name,
                  "sop_telemetry.step_number": call.step_number,
                  "sop_telemetry.llm.purpose": call.purpose,
                  "sop_telemetry.llm.streamed": call.streamed or None,
                  "sop_telemetry.llm.tokens_reported": None if reported else False,
                  "sop_telemetry.cost_usd": call.cost_estimate,
                  "sop_telemetry.llm.input_preview": call.input_preview,
                  "sop_telemetry.llm.output_preview": call.output_preview,
              }, kind=SpanKind.CLIENT,
              error=(call.error_type, call.error_message) if _failed(call.status) else None)

    for index, tool in enumerate(task.tools):
        b.add(b.context(f"tool/{index}/{tool.call_id}"), parent_of(tool.agent_id, tool.step_number, "action"),
              f"execute_tool {tool.tool_name}", _span_times(tool, last), {
                  "openinference.span.kind": "TOOL",
                  "gen_ai.operation.name": "execute_tool",
                  "gen_ai.tool.name": tool.tool_name,
                  "sop_telemetry.call_id": tool.call_id or None,
                  "sop_telemetry.agent_id": tool.agent_id,
                  "sop_telemetry.agent_name": tool.agent_name,
                  "sop_telemetry.step_number": tool.step_number,
                  "sop_telemetry.tool.arguments_preview": tool.arguments_preview,
                  "sop_telemetry.tool.output_preview": tool.output_preview,
              }, error=(tool.error_type, tool.error_message) if _failed(tool.status) else None)
    return b.spans


def _agent_span(b: _TraceBuilder, agent: AgentExecution, ctx: SpanContext, parent: SpanContext, last: int) -> None:
    b.add(ctx, parent, f"invoke_agent {agent.agent_name}", _span_times(agent, last), {
        "openinference.span.kind": "AGENT",
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": agent.agent_name,
        "gen_ai.request.model": agent.model,
        "sop_telemetry.agent_id": agent.agent_id or None,
        "sop_telemetry.parent_agent_id": agent.parent_agent_id,
        "sop_telemetry.agent_type": agent.agent_type,
        "sop_telemetry.status": _value(agent.status),
        "sop_telemetry.agent.steps": agent.steps,
        "sop_telemetry.agent.max_steps_reached": agent.max_steps_reached or None,
    }, error=(agent.error_type, agent.error_message) if _failed(agent.status) else None)


@lru_cache(maxsize=1)
def _detected_resource() -> Resource:
    # Once per process: telemetry.sdk.*, and what OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say.
    try:
        return Resource.create()
    except RuntimeError:
        # Resource.create runs its detectors in a thread pool, which refuses work once the interpreter is exiting:
        # the standard detector's answer, read on this thread.
        from importlib.metadata import version

        sdk = Resource({TELEMETRY_SDK_LANGUAGE: "python", TELEMETRY_SDK_NAME: "opentelemetry",
                        TELEMETRY_SDK_VERSION: version("opentelemetry-sdk")})
        return sdk.merge(OTELResourceDetector().detect())


def session_resource(session_id: str, environment: Optional[EnvironmentInfo] = None,
                     series: Optional[Tuple[Optional[str], Optional[int]]] = None) -> Resource:
    """What produced the session: `service.name` (sop_telemetry unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
    name one), the process's series of sessions as `service.instance.id` (for a process with one session file, its
    id), the part (`series`: (series id, part number)), and the host and process it ran in."""
    detected = _detected_resource()
    env = environment
    series_id, part = series if series is not None else (None, None)
    ours: Dict[str, Any] = {
        "service.instance.id": series_id or session_id,
        "sop_telemetry.part": part if part is not None and part > 1 else None,
        "host.name": env.hostname if env is not None else None,
        "process.pid": env.pid if env is not None else None,
        "os.type": env.os_type.lower() if env is not None and env.os_type else None,
        "process.runtime.version": env.python_version if env is not None and env.python_version else None,
        "sop_telemetry.version": (env.telemetry_version if env is not None else None) or __version__,
    }
    for name, version in (env.frameworks if env is not None else {}).items():
        ours[f"sop_telemetry.framework.{name}.version"] = version
    if str(detected.attributes.get("service.name", "unknown_service")).startswith("unknown_service"):
        ours["service.name"] = "sop_telemetry"
    return detected.merge(Resource(_clean(ours)))


def _this_process() -> EnvironmentInfo:
    """The resource facts of this process for live export (the same sources `environment.py` records)."""
    return EnvironmentInfo(os_type=platform.system(), python_version=platform.python_version(),
                           hostname=socket.gethostname(), pid=os.getpid(), telemetry_version=__version__)


def session_spans(session: TelemetrySession) -> Iterator[ReadableSpan]:
    """Every task of a stored session as spans, task after task."""
    resource = session_resource(session.session_id, session.environment, (session.series_id, session.part))
    for task in session.tasks:
        yield from task_spans(session.session_id, task, resource)


# -- sending -------------------------------------------------------------------------------------------------------
def resolve_endpoint(endpoint: Optional[str]) -> Optional[str]:
    """The traces URL for `endpoint`: a base URL (`http://collector:4318`) gets `/v1/traces`, a URL with a path is
    used as given. None stays None: the OTLP exporter then reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or
    OTEL_EXPORTER_OTLP_ENDPOINT plus `/v1/traces`, or uses http://localhost:4318/v1/traces."""
    if endpoint is None or not endpoint.strip():
        return None
    endpoint = endpoint.strip()
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


class _Quiet(logging.Filter):
    """The OTLP exporter logs every failed attempt and retry at warning level. On threads that are sending for us,
    those records are kept as the failure's reason instead of flooding the host's log (our error handler logs the
    first failure once); on every other thread, e.g. the application's own exporter, nothing changes."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        captured = getattr(self.local, "captured", None)
        if captured is None:
            return True
        try:
            captured.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a log record that cannot be formatted
            captured.append(record.msg if isinstance(record.msg, str) else "unknown error")
        return False


_quiet = _Quiet()
for _name in _EXPORTER_LOGGERS:
    logging.getLogger(_name).addFilter(_quiet)


def _send(exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]) -> Optional[str]:
    """Sends one batch; None on success, else why it failed."""
    captured: List[str] = []
    _quiet.local.captured = captured
    try:
        result = exporter.export(spans)
    except Exception as exc:  # noqa: BLE001 - the exporter is not supposed to raise; if it does, it is a failure
        return f"{type(exc).__name__}: {exc}"
    finally:
        _quiet.local.captured = None
    if result is SpanExportResult.SUCCESS:
        return None
    if not captured:
        return "export failed"
    # The first message names the cause (connection refused, HTTP 400, ...); the last one, how the exporter gave up.
    return captured[0] if len(captured) == 1 else f"{captured[-1]} First attempt: {captured[0]}"


def _batches(spans: Iterable[ReadableSpan], size: int) -> Iterator[List[ReadableSpan]]:
    batch: List[ReadableSpan] = []
    for span in spans:
        batch.append(span)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class OtlpExportResult:
    """What a backfill sent: counts, and one line per failed batch."""

    endpoint: str
    sessions: int = 0
    tasks: int = 0
    spans: int = 0
    failed_spans: int = 0
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every span was accepted."""
        return not self.errors

    def summary(self) -> str:
        """One line: what was sent where, and the first error if any."""
        text = f"sent {self.spans} spans ({self.tasks} tasks, {self.sessions} sessions) to {self.endpoint}"
        if self.errors:
            text += f"; {self.failed_spans} spans failed: {self.errors[0]}"
            if len(self.errors) > 1:
                text += f" (and {len(self.errors) - 1} more failed batches)"
        return text


def _exporter(endpoint: Optional[str], headers: Optional[Mapping[str, str]], timeout: Optional[float]
              ) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=resolve_endpoint(endpoint), headers=dict(headers) if headers else None,
                            timeout=timeout)


def _endpoint_of(exporter: OTLPSpanExporter, fallback: Optional[str]) -> str:
    return str(getattr(exporter, "_endpoint", None) or fallback or "")


def export_sessions_otlp(
    sessions: Iterable[TelemetrySession],
    endpoint: Optional[str] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
    batch_spans: int = DEFAULT_BATCH_SPANS,
) -> OtlpExportResult:
    """Sends stored sessions to an OTLP/HTTP endpoint (backfill); never raises for a collector that is down.

    `endpoint`: base URL or full traces URL; None follows the OTEL_EXPORTER_OTLP_* variables (see `resolve_endpoint`).
    `headers`: e.g. an API key; None follows OTEL_EXPORTER_OTLP_(TRACES_)HEADERS. `timeout`: seconds per request,
    retries included. Sending the same session again sends the same trace and span ids.
    """
    exporter = _exporter(endpoint, headers, timeout)
    result = OtlpExportResult(endpoint=_endpoint_of(exporter, endpoint))
    try:
        for session in sessions:
            result.sessions += 1
            result.tasks += len(session.tasks)
            for batch in _batches(session_spans(session), max(1, batch_spans)):
                error = _send(exporter, batch)
                if error is None:
                    result.spans += len(batch)
                else:
                    result.failed_spans += len(batch)
                    result.errors.append(error)
    finally:
        exporter.shutdown()
    return result


class LiveOtlpExporter:
    """Sends each ended task from one background thread. `submit` is all the agent's thread does: a short append
    under a lock, or, when `max_queue` tasks are already waiting (a slow or dead collector), a counted drop."""

    def __init__(
        self,
        endpoint: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        cost: Optional[Callable[[str, Optional[int], Optional[int]], Optional[float]]] = None,
        batch_spans: int = DEFAULT_BATCH_SPANS,
    ) -> None:
        self.configured_endpoint = endpoint
        self._args = (endpoint, headers, timeout)
        self._exporter = _exporter(endpoint, headers, timeout)
        self.endpoint = _endpoint_of(self._exporter, endpoint)
        self.max_queue = max(1, max_queue)
        self._cost = cost
        self._batch_spans = max(1, batch_spans)
        self._environment = _this_process()
        # Called by `flush` first: a run's task ends (and is submitted here) when the collector builds the records
        # of its queued events (sop_telemetry.collector), usually on the writer thread; the manager points this at
        # that step, so that a flush also covers runs that have returned but are still queued.
        self.collect: Optional[Callable[[], None]] = None
        self._init_state()
        _live.add(self)
        with self._cond:
            self._start()  # at once: the thread detects the resource while the interpreter still lends it threads

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: Deque[Tuple[str, dict, Optional[Tuple[str, int]]]] = deque()
        self._busy = False
        self._closed = False
        self._exporter_closed = False
        self._thread: Optional[threading.Thread] = None
        self.exported_tasks = 0
        self.exported_spans = 0
        self.failed_tasks = 0
        self.dropped_tasks = 0
        self.last_error: Optional[str] = None
        self.last_export_time: Optional[float] = None
        self._last_ok = True

    # -- the agent's side ------------------------------------------------------------------------------------------
    def submit(self, session_id: str, task: dict, series: Optional[Tuple[str, int]] = None) -> bool:
        """Queues an ended task (the collector's record dict, read later on the exporter's thread) of session
        `session_id`, part `series` (series id, part number) of its process's series."""
        with self._cond:
            accepted = not self._closed and len(self._queue) < self.max_queue
            if accepted:
                self._queue.append((session_id, task, series))
                if self._thread is None:
                    self._start()
                self._cond.notify_all()
            else:
                self.dropped_tasks += 1
                dropped, closed = self.dropped_tasks, self._closed
        if not accepted:
            why = "the exporter is shut down" if closed else f"{self.max_queue} tasks are already waiting"
            report(
                "otlp.queue", OtlpDropped(f"task not sent to {self.endpoint}: {why} ({dropped} dropped so far)"))
        return accepted

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="sop_telemetry-otlp", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # the interpreter is exiting: `shutdown` sends what is queued on its own thread
            return
        self._thread = thread

    # -- the exporter's thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        guard("otlp.setup", _detected_resource)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    break
                session_id, task, series = self._queue.popleft()
                self._busy = True
            try:
                self._export_one(session_id, task, series)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self._close_exporter()

    def _export_one(self, session_id: str, task: dict, series: Optional[Tuple[str, int]] = None) -> None:
        try:
            self._export(session_id, task, series)
        except Exception as exc:  # noqa: BLE001 - a mapping bug must not kill the thread
            self._count(0, f"{type(exc).__name__}: {exc}", exc)

    def _export(self, session_id: str, task: dict, series: Optional[Tuple[str, int]] = None) -> None:
        record = dict(task)
        for key in ("agents", "tools", "llm_calls", "steps"):
            record[key] = list(task.get(key) or ())
        record["dropped_records"] = dict(task.get("dropped_records") or {})
        execution = TaskExecution.model_validate(record)
        if self._cost is not None:
            for call in execution.llm_calls:
                if call.cost_estimate is None and call.tokens_reported:
                    call.cost_estimate = self._cost(call.model, call.prompt_tokens, call.completion_tokens)
        # Credentials are masked as in the session file (an error message or a task text may quote a key); a
        # stored session being backfilled was masked when it was written.
        from .environment import redact_json, secret_values

        text = execution.model_dump_json()
        masked = redact_json(text, secret_values())
        if masked is not text:
            execution = TaskExecution.model_validate_json(masked)
        resource = session_resource(session_id, self._environment, series)
        sent = 0
        for batch in _batches(task_spans(session_id, execution, resource), self._batch_spans):
            error = _send(self._exporter, batch)
            if error is not None:
                self._count(sent, error, OtlpExportError(f"sending a task to {self.endpoint} failed: {error}"))
                return
            sent += len(batch)
        self._count(sent, None, None)

    def _count(self, spans: int, error: Optional[str], exc: Optional[BaseException]) -> None:
        with self._cond:
            self.exported_spans += spans
            self._last_ok = error is None
            if error is None:
                self.exported_tasks += 1
                self.last_export_time = time.time()
            else:
                self.failed_tasks += 1
                self.last_error = error
        if exc is None:
            get_error_handler().record_success("otlp.export")
        else:
            report("otlp.export", exc)

    def _close_exporter(self) -> None:
        with self._cond:
            if self._exporter_closed:
                return
            self._exporter_closed = True
        try:
            self._exporter.shutdown()
        except Exception as exc:  # noqa: BLE001
            report("otlp.shutdown", exc)

    # -- control ---------------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the exporter has been shut down."""
        return self._closed

    def flush(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds until every queued task has been sent (or has failed)."""
        if self.collect is not None:
            self.collect()
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Stops taking tasks and waits up to `timeout` seconds for the queued ones; what is still queued then is
        dropped (counted). None: `EXIT_TIMEOUT`, or no wait at all when the collector's last answer was a failure,
        so a dead collector cannot hold up the program's exit. Returns True if nothing was left behind."""
        with self._cond:
            if timeout is None:
                timeout = EXIT_TIMEOUT if self._last_ok else 0.0
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        deadline = time.monotonic() + timeout
        if thread is not None and timeout > 0:
            thread.join(timeout)
        done = thread is None or not thread.is_alive()
        if done:
            # Tasks that ended as the interpreter exits, when no thread could be started: sent from this one.
            self._drain(deadline)
        with self._cond:
            unsent = len(self._queue)
            self._queue.clear()
            self.dropped_tasks += unsent
        if unsent:
            report(
                "otlp.queue", OtlpDropped(f"{unsent} task(s) not sent to {self.endpoint} before shutdown"))
        # Ends a retry back-off at once; a request already on the wire runs out its own timeout on the daemon thread.
        self._close_exporter()
        return done and not unsent

    def _drain(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    return
                session_id, task, series = self._queue.popleft()
            self._export_one(session_id, task, series)

    def stats(self) -> Dict[str, Any]:
        """Counters of the live export: queued, exported and failed tasks and spans, drops, the last error."""
        with self._cond:
            return {
                "enabled": True,
                "endpoint": self.endpoint,
                "queued": len(self._queue) + (1 if self._busy else 0),
                "max_queue": self.max_queue,
                "exported_tasks": self.exported_tasks,
                "exported_spans": self.exported_spans,
                "failed_tasks": self.failed_tasks,
                "dropped_tasks": self.dropped_tasks,
                "last_error": self.last_error,
                "last_export_time": self.last_export_time,
            }

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist in the child and its lock may be held: start over, empty.
        self._init_state()
        self._exporter = _exporter(*self._args)
        self._environment = _this_process()


class OtlpExportError(RuntimeError):
    """A task could not be sent (collector down, refusing, too slow); the reason is in the message."""


class OtlpDropped(RuntimeError):
    """A task was not sent because the queue was full or the exporter was shut down."""


_live: "weakref.WeakSet[LiveOtlpExporter]" = weakref.WeakSet()


def _after_fork() -> None:
    for exporter in list(_live):
        exporter._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
