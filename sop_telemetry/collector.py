"""The collector: where every record of the current session goes.

Usage::

    from sop_telemetry import TelemetryManager, TaskStatus
    collector = TelemetryManager.get_instance().get_collector()
    collector.start_task("custom_task", "A custom task")
    collector.record_llm_call(model="gpt-4", prompt_tokens=150, completion_tokens=75, duration=3.2)
    collector.record_tool_usage("file_reader", 0.8)
    collector.end_task("custom_task", TaskStatus.COMPLETED)

Records are kept as plain dicts and become the pydantic `TelemetrySession` only when a snapshot is taken for a flush
or a reader. The instrumentation does not even build the dicts on the agent's thread: it queues each finished call as
a tuple of what it observed (`pending`), and the records are built from those by `materialize()`, which every reader
calls first and the background writer runs after a task ends. The manual API above, which accepts any keyword, checks
each record against its model first, so that a bad value is refused alone. Which task and agent a record belongs to
comes from a context variable (`current`), so threads and asyncio tasks each see their own run.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from contextvars import ContextVar
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from .error_handler import guard, report, safe_telemetry_operation
from .status import TaskStatus
from .storage import new_session_id

if TYPE_CHECKING:
    from .models import TelemetrySession

logger = logging.getLogger("sop_telemetry")

# Defaults of the caps, shared with TelemetryConfig: recording starts with these before any config is validated.
DEFAULT_MAX_RECORDS_PER_TASK = 10_000
DEFAULT_MAX_STRING_LENGTH = 500
# The bounds of one session file (a part): a task that starts when the part holds this many tasks, or this many
# bytes on disk, starts the next part. See docs/long-running.md for how they were chosen.
DEFAULT_MAX_TASKS_PER_SESSION = 1_000
DEFAULT_MAX_SESSION_BYTES = 4_000_000
# Queued events are turned into records on the queuing thread once this many wait, so that memory stays bounded when
# nothing reads (one task with 100,000 calls); below it they wait for the writer, which runs when a task ends.
PENDING_LIMIT = 4096


def env_disabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """`SOP_TELEMETRY_DISABLED=1` (or true/yes/on): an operator's off switch that wins over code."""
    value = (os.environ if environ is None else environ).get("SOP_TELEMETRY_DISABLED", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


class _Switch:
    """The one flag every wrapper checks first: a class attribute read is the cheapest check Python has."""

    enabled = not env_disabled()


switch = _Switch


class Clock:
    """The clock of every call's start (its run's `Frame.epoch` plus a reading) and duration.

    A class attribute, not a module global: freezegun swaps each module global that is `time.perf_counter` for its
    frozen clock, while the wrappers keep the clock they were made with; an epoch taken with one and readings taken
    with the other put the calls of an agent run in a frozen-time test in 1970."""

    perf = staticmethod(time.perf_counter)


class Frame:
    """What a piece of running code records into: a task, and the agent run (if any) inside it."""

    __slots__ = ("task", "agent", "owner", "parent", "collector", "pending", "limit", "epoch", "calls", "tools",
                 "dropped", "framework", "step", "last_step", "stop_reason", "ext", "on_end")

    def __init__(self, task: Optional[dict], agent: Optional[dict] = None, owner: Any = None,
                 parent: Optional["Frame"] = None, collector: Optional["TelemetryCollector"] = None):
        # An agent run's frame is made with neither task nor agent: both are set when its first queued event is
        # built. `collector` is where the events of code running in this frame are queued.
        self.task = task
        self.agent = agent
        self.owner = owner
        self.parent = parent
        self.collector = collector
        # The collector's queue and its limit, for the wrappers' usual case: read from the frame they already hold
        # rather than from the collector, one object fewer to reach on every call. None when a call must take the
        # general path: content is captured (read when the frame is made: a change of `capture_content` applies
        # from the next run on), or there is no collector.
        self.pending: Optional[List[tuple]] = None
        self.limit = 0
        # Wall-clock time minus perf_counter: the usual call's event holds its two perf_counter readings (one clock
        # read fewer than a start time and a duration), and its record's times are these plus `epoch`.
        self.epoch = time.time() - Clock.perf()
        if collector is not None and not collector.capture_content:
            self.pending, self.limit = collector.pending, collector.pending_limit
        # A run's step records each take the call records made in it (recorder.record_step): these are the run's
        # call records no step has taken yet. Only records the task keeps are listed, so one step with 100,000 calls
        # stays within max_records_per_task; the dropped ones are only counted (per step number: kind, and their
        # tokens), so that the step's figures stay exact.
        self.calls: List[dict] = []
        self.tools: List[dict] = []
        self.dropped: Dict[Any, Dict[str, int]] = {}
        self.framework: Optional[str] = None
        # The step calls are made in when they name none (recorder.begin_step), and the last number given.
        self.step: Optional[int] = None
        self.last_step: Optional[int] = None
        # Why the run stopped, when a builder finds out before its end is built ("max_steps").
        self.stop_reason: Optional[str] = None
        # What the integration that began the run keeps with it: the core never reads it.
        self.ext: Any = None
        # The integration's builder `(collector, frame)` for what it read when the run ended (recorder.end_run).
        self.on_end: Optional[Callable[[Any, "Frame"], None]] = None


current: ContextVar[Optional[Frame]] = ContextVar("sop_telemetry_frame", default=None)

_ids = itertools.count(1)
_CURRENT: Any = object()  # `add`'s default frame: the current context's

_RECORD_KEYS = ("llm_calls", "tools", "agents", "steps")
# The model each manual record is checked against, by list name.
_RECORD_MODELS = {"llm_calls": "LLMCall", "tools": "ToolExecution", "agents": "AgentExecution"}
# Task fields start_task/end_task take as keywords (besides open_task's `start` and close_task's `end`, `error`).
_TASK_FIELDS = ("sop_category", "error_type", "error_message", "stop_reason")


def next_id(prefix: str) -> str:
    """A record id unique in this process: `prefix` and a counter (`c12` for a call, `a3` for an agent run)."""
    return f"{prefix}{next(_ids)}"


def clip(value: Any, limit: int) -> Optional[str]:
    """`str(value)` cut to `limit` characters; None when the value cannot be turned into text."""
    if value is None:
        return None
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - objects whose __str__ raises
        try:
            text = f"<{type(value).__name__}>"
        except Exception:  # noqa: BLE001
            return None
    if len(text) > limit:
        text = _cut(text, limit)
    if not text.isascii():
        text = encodable(text)
        if len(text) > limit:
            text = _cut(text, limit)
    return text


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with "…", credentials masked first: the mask at write replaces whole values,
    so a key cut in two would be kept; the beginning of one the cut goes through is masked too."""
    from .redaction import mask_cut_secret, mask_secrets, recent_secret_values

    secrets = recent_secret_values()
    if secrets:
        head = text[: limit + len(secrets[0])]  # the rest is cut away, and holds no secret that begins in the head
        masked = mask_secrets(head, secrets)
        if len(masked) <= limit and len(head) == len(text):
            return masked
        text = masked
    return mask_cut_secret(text[: max(0, limit - 1)], secrets) + "…"


def encodable(text: str) -> str:
    """`text` with any lone surrogate written out as an escape (`\\udce9`), so that it can go into UTF-8. They
    are what Python makes of undecodable bytes in file names and environment values (surrogateescape): a tool that
    fails with `f"cannot read {path}"` quotes one, and a single one anywhere in a session made every write of its
    file fail, finished tasks included."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _as_completed(task: dict) -> None:
    """The implicit task (or its copy) as a completed task spanning its records: it is a bucket, not a run, so it
    ends with its last record (and a manual record may start before it)."""
    records = [rec for key in _RECORD_KEYS for rec in task[key]]
    start = min([task["start_time"], *(rec["start_time"] for rec in records)])
    end = max([start, *(rec.get("end_time") or rec["start_time"] for rec in records)])
    task.update(start_time=start, end_time=end, duration=end - start, status=TaskStatus.COMPLETED.value)


class TelemetryCollector:
    """Holds the records of one session and takes manual ones. Get the process's own from the manager:

        collector = TelemetryManager.get_instance().get_collector()
        collector.start_task("nightly-report", "Summarize yesterday's tickets")
        collector.record_llm_call(model="gpt-4o", prompt_tokens=1200, completion_tokens=80, duration=2.5)
        collector.record_tool_usage("search", 0.4, status="error", error_type="TimeoutError")
        collector.end_task("nightly-report", TaskStatus.COMPLETED)

    Records made outside any task go into an implicit task. Keywords beyond the named parameters set the record's
    other fields (see `LLMCall`, `ToolExecution`, `AgentExecution`); a bad value is logged and that one record
    refused. Every call here is guarded: it never raises into the program. A collector made directly
    (`TelemetryCollector()`) is a scratch one; only the manager's is written to disk.
    """

    def __init__(
        self,
        session_id: Optional[str] = None,
        max_records_per_task: int = DEFAULT_MAX_RECORDS_PER_TASK,
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        on_change: Optional[Callable[[bool], None]] = None,
    ) -> None:
        # The spec makes a collector with no arguments; the manager's own collector is the one that is written.
        self.session_id = session_id or new_session_id()
        self.start_time = time.time()
        self.max_records_per_task = max_records_per_task
        self.max_string_length = max_string_length
        self._on_change = on_change
        # Told (session id, task record, (series id, part)) when a task ends; the manager sets it for live OTLP.
        self.on_task_end: Optional[Callable[[str, dict, Tuple[str, int]], None]] = None
        # Told when a part has ended (see open_task); the manager has it written at once.
        self.on_part_end: Optional[Callable[[bool], None]] = None
        # Prompts, outputs and tool arguments are kept (truncated) only when the user opts in.
        self.capture_content = False
        self._lock = threading.RLock()
        self._tasks: List[dict] = []
        self._open: Dict[str, dict] = {}
        self._implicit: Optional[dict] = None
        self.generation = 0  # bumped on every change, so a writer knows whether it has something new
        # Events queued by the instrumentation, oldest first: (operation, builder, *arguments); `materialize()`
        # calls builder(self, *arguments) under the guard named `operation`. Appended to without the lock (a list
        # append is atomic), drained under it.
        self.pending: List[tuple] = []
        self.pending_limit = PENDING_LIMIT
        # A long-lived process writes its session as a series of parts (see docs/long-running.md): every part has
        # the series id (the first part's id) and its number. A task that starts when the current part holds
        # `max_tasks_per_part` tasks, or about `max_part_bytes` bytes, opens the next part; the ended one waits in
        # `sealed` for the writer. 0 switches the bounds off (a standalone collector). The size is estimated here,
        # from the records of the part's ended tasks (`size_units`) and the bytes a unit took in the writer's last
        # write (`note_written`): the writer's own count arrives too late when it pauses while tasks end quickly.
        self.series_id = self.session_id
        self.part = 1
        self.max_tasks_per_part = 0
        self.max_part_bytes = 0
        self.part_units = 0
        self.bytes_per_unit = 400.0
        self.sealed: List[dict] = []
        # Tasks closed since the writer last took them (`take_for_write`): what its next append writes.
        self._finished: List[dict] = []
        self._said: Set[str] = set()  # see _said_once

    # -- the spec's API ----------------------------------------------------------------------------------------
    @safe_telemetry_operation("collector.start_task")
    def start_task(self, task_id: str, description: str = "", **extra: Any) -> None:
        """Opens a task; records made afterwards in this thread/context go into it until `end_task`."""
        if not switch.enabled:
            return
        task = self.open_task(clip(task_id, self.max_string_length) or "", description, **self._task_extra(extra))
        current.set(Frame(task, parent=current.get(), collector=self))

    @safe_telemetry_operation("collector.end_task")
    def end_task(self, task_id: str, status: TaskStatus | str = TaskStatus.COMPLETED, **extra: Any) -> None:
        """Closes the task opened as `task_id` with `status` (a `TaskStatus` or its value); `error_type` and
        `error_message` keywords describe a failure."""
        if not switch.enabled:
            return
        status = TaskStatus(status)
        extra = self._task_extra(extra)
        task_id = clip(task_id, self.max_string_length) or ""
        self.materialize()  # the agent runs around this context may not have their tasks yet
        frame = current.get()
        task = self._innermost_open(frame, task_id) or self._open.get(task_id)
        if task is None:
            self._said_once("end_task", f"end_task({task_id!r}): no open task has this id (never started, or "
                                        "already ended); nothing was changed")
            return
        if frame is not None and frame.task is task and frame.agent is None:
            current.set(frame.parent)
        self.close_task(task, status, **extra)

    def _said_once(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        """One log line for the first time each kind of surprising call happens, debug level after that."""
        first = kind not in self._said
        self._said.add(kind)
        logger.log(level if first else logging.DEBUG, "sop_telemetry: %s", message)

    def _innermost_open(self, frame: Optional[Frame], task_id: str) -> Optional[dict]:
        """The innermost task this context started as `task_id`: a reused id was opened as `task_id#n`, so the
        plain lookup alone would end the outer task and leave the inner one open."""
        while frame is not None:
            task = frame.task
            name = task["task_id"] if task is not None else None
            if name is not None and frame.agent is None and (name == task_id or name.startswith(task_id + "#")) \
                    and self._open.get(name) is task:
                return task
            frame = frame.parent
        return None

    def _task_extra(self, extra: Dict[str, Any]) -> Dict[str, Any]:
        for key, value in extra.items():
            if key in _TASK_FIELDS:
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"{key} must be a string, not {type(value).__name__}")
                extra[key] = clip(value, self.max_string_length)
            elif key not in ("start", "end", "error"):
                raise TypeError(f"unexpected keyword argument {key!r}")
        return extra

    @safe_telemetry_operation("collector.record_llm_call")
    def record_llm_call(
        self,
        model: str,
        prompt_tokens: Optional[int] = None,
        completion_tokens: Optional[int] = None,
        duration: float = 0.0,
        **extra: Any,
    ) -> None:
        """Records one finished model call. Pass `None` tokens when the model did not report usage."""
        if not switch.enabled:
            return
        # Zero on both sides reported nothing, as in the instrumentation (LiteLLM's "no usage" is Usage(0, 0, 0)).
        reported = extra.pop("tokens_reported", bool(prompt_tokens or completion_tokens))
        if not reported and not prompt_tokens and not completion_tokens:
            prompt_tokens = completion_tokens = None
        rec = self._manual_record(duration, extra)
        rec.update(model=clip(model, self.max_string_length), prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens, tokens_reported=bool(reported))
        rec.setdefault("call_id", next_id("c"))
        rec = self._validated("llm_calls", rec)
        if rec["tokens_reported"] and rec["total_tokens"] is None:
            rec["total_tokens"] = (rec["prompt_tokens"] or 0) + (rec["completion_tokens"] or 0)
        self.add("llm_calls", rec)

    @safe_telemetry_operation("collector.record_agent_execution")
    def record_agent_execution(self, agent_type: str, agent_name: str, duration: float = 0.0, **extra: Any) -> None:
        """Records one finished agent run of `duration` seconds (ending now) in the current task."""
        if not switch.enabled:
            return
        rec = self._manual_record(duration, extra)
        limit = self.max_string_length
        rec.update(agent_type=clip(agent_type, limit), agent_name=clip(agent_name, limit))
        rec.setdefault("agent_id", next_id("a"))
        rec.setdefault("status", TaskStatus.COMPLETED.value)
        self.add("agents", self._validated("agents", rec))

    @safe_telemetry_operation("collector.record_tool_usage")
    def record_tool_usage(self, tool_name: str, duration: float = 0.0, **extra: Any) -> None:
        """Records one finished tool call of `duration` seconds (ending now) in the current task."""
        if not switch.enabled:
            return
        rec = self._manual_record(duration, extra)
        rec["tool_name"] = clip(tool_name, self.max_string_length)
        rec.setdefault("call_id", next_id("c"))
        self.add("tools", self._validated("tools", rec))

    def _manual_record(self, duration: float, extra: Dict[str, Any]) -> dict:
        end = time.time()
        self.materialize()  # so that the agent run this is made in has its task and agent record
        duration = max(0.0, float(duration or 0.0))
        rec: dict = {"start_time": end - duration, "end_time": end, "duration": duration}
        limit = self.max_string_length
        rec.update({key: clip(value, limit) if isinstance(value, str) else value for key, value in extra.items()})
        frame = current.get()
        if frame is not None and frame.agent is not None:
            rec.setdefault("agent_name", frame.agent.get("agent_name"))
            rec.setdefault("agent_id", frame.agent.get("agent_id"))
        return rec

    def _validated(self, kind: str, rec: dict) -> dict:
        """The manual API takes any keyword: a bad value must fail here, in its own guarded call, and not when the
        whole session is validated for a write, where one bad record would stop every later write. Returns the
        record as the same plain data the instrumentation stores (epoch-second times, enum values)."""
        from . import models

        record = getattr(models, _RECORD_MODELS[kind]).model_validate(rec)
        plain = record.model_dump(mode="json")
        plain["start_time"] = record.start_time.timestamp()
        plain["end_time"] = record.end_time.timestamp() if record.end_time is not None else None
        return plain

    # -- the instrumentation's API (no guards: the wrappers guard their own bookkeeping) -----------------------
    def open_task(self, task_id: str, description: str = "", start: Optional[float] = None, notify: bool = True,
                  **extra: Any) -> dict:
        """A new open task. `notify=False` when building queued events: whoever queued them has already told the
        manager (which starts the writer), and the writer itself may be the one building them."""
        task = {
            "task_id": task_id,
            "description": clip(description, self.max_string_length) or "",
            "start_time": time.time() if start is None else start,
            "end_time": None,
            "duration": None,
            "status": TaskStatus.RUNNING.value,
            "error_type": None,
            "error_message": None,
            "stop_reason": None,
            "agents": [],
            "tools": [],
            "llm_calls": [],
            "steps": [],
            "code_changes": {"code_actions": 0, "code_lines": 0},
            "dropped_records": {},
            "dropped_token_usage": None,
        }
        task.update(extra)
        ended = False
        with self._lock:
            if not extra.get("implicit") and self._part_full():
                self.sealed.append(self._next_part(new_session_id(), time.time()))
                ended = True
            if task_id in self._open:
                # A reused id while the first is still open: keep both, tell them apart.
                task["task_id"] = renamed = f"{task_id}#{next_id('')}"
                self._said_once("start_task", f"start_task({task_id!r}): a task with this id is still open; this one "
                                              f"is recorded as {renamed!r} and ended by end_task({task_id!r}) in its "
                                              "context")
                task_id = renamed
            self._tasks.append(task)
            self._open[task_id] = task
        if ended and self.on_part_end is not None:
            # `behind`: an earlier part is still waiting for the writer, so tasks are ending faster than they can
            # be written; the caller (outside any lock of ours, unless it is building queued events) helps.
            guard("collector.on_part_end", self.on_part_end, notify and len(self.sealed) > 1)
        if notify:
            self.changed(False)
        else:
            self.generation += 1
        return task

    def close_task(
        self,
        task: dict,
        status: TaskStatus,
        error: Optional[BaseException] = None,
        end: Optional[float] = None,
        notify: bool = True,
        **extra: Any,
    ) -> None:
        """Ends a task. `notify=False` as for `open_task`: a task ended while building queued events must not
        wake the writer that is building them (it would write the file a second time for nothing)."""
        if task.get("implicit") and end is None and status is TaskStatus.COMPLETED:
            _as_completed(task)
        else:
            end = time.time() if end is None else end
            task["end_time"] = end
            task["duration"] = max(0.0, end - task["start_time"])
            task["status"] = status.value
        if error is not None:
            task["error_type"] = type(error).__name__
            task["error_message"] = clip(error, self.max_string_length)
        for key, value in extra.items():
            if key in ("error_message",):
                value = clip(value, self.max_string_length)
            task[key] = value
        with self._lock:
            # Read while the task is still open: an open task always belongs to the current part (a roll-over
            # moves it on), so this is the id of the file it is written in.
            session_id, series = self.session_id, (self.series_id, self.part)
            if self._open.pop(task["task_id"], None) is task:
                self._finished.append(task)
                self.part_units += size_units(task)
        if self.on_task_end is not None:
            guard("collector.on_task_end", self.on_task_end, session_id, task, series)
        if notify:
            self.changed(True)
        else:
            self.generation += 1

    def add(self, kind: str, rec: dict, frame: Any = _CURRENT) -> bool:
        """Appends a finished record to the task of `frame` (default: the current context's; None: outside any
        task, the implicit one), within the caps; returns False when the record was over the cap, so only counted.
        Records built from queued events name their frame: they may be built on another thread."""
        if frame is _CURRENT:
            frame = current.get()
        task = frame.task if frame is not None else None
        if task is None:
            task = self.open_fallback_task()  # outside any task (or in a run whose task could not be opened)
        records = task[kind]
        kept = len(records) < self.max_records_per_task
        if kept:
            records.append(rec)
        else:
            self._drop(task, kind, rec, frame)
        self.generation += 1
        return kept

    def _drop(self, task: dict, kind: str, rec: dict, frame: Optional[Frame] = None) -> None:
        with self._lock:
            dropped = task["dropped_records"]
            dropped[kind] = dropped.get(kind, 0) + 1
            if frame is not None and frame.agent is not None:
                step = frame.dropped.setdefault(rec.get("step_number"), {})
                step[kind] = step.get(kind, 0) + 1
                if kind == "llm_calls":
                    for key in ("prompt_tokens", "completion_tokens"):
                        step[key] = step.get(key, 0) + (rec.get(key) or 0)
            if kind == "llm_calls":
                usage = task["dropped_token_usage"]
                if usage is None:
                    usage = task["dropped_token_usage"] = {
                        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                        "unreported_calls": 0, "model_breakdown": {},
                    }
                per_model = usage["model_breakdown"].setdefault(
                    rec.get("model") or "unknown",
                    {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "unreported_calls": 0},
                )
                for bucket in (usage, per_model):
                    if rec.get("tokens_reported", True):
                        bucket["prompt_tokens"] += rec.get("prompt_tokens") or 0
                        bucket["completion_tokens"] += rec.get("completion_tokens") or 0
                        bucket["total_tokens"] += rec.get("total_tokens") or 0
                    else:
                        bucket["unreported_calls"] += 1

    def materialize(self) -> None:
        """Builds the records of every queued event, in the order they were queued. One event that fails costs only
        its own record (counted and logged under its operation)."""
        pending = self.pending
        if not pending:
            return
        with self._lock:
            count = len(pending)
            events = pending[:count]
            del pending[:count]  # (events queued meanwhile by other threads stay, after `count`)
            for event in events:
                try:
                    event[1](self, *event[2:])
                except Exception as exc:  # noqa: BLE001 - the guard (inline: this runs for every record)
                    report(event[0], exc)
            self.generation += 1

    def open_fallback_task(self) -> dict:
        """Where a record with no current context goes: the implicit task. Not "the only open task": with several
        threads that would file one thread's records under another thread's task (and the frameworks we
        instrument copy the context into their tool threads, the case that guess was for)."""
        with self._lock:
            implicit = self._implicit
            if implicit is None:
                # Kept before the manager is told (changed): if telling it fails, the next record must find this
                # task, not open a second one with the same id.
                implicit = self._implicit = self.open_task("untracked", "Records made outside any task",
                                                           notify=False, implicit=True)
                self._said_once("untracked", "a record was made outside any task (no start_task or agent run "
                                             "around it): such records go to the task 'untracked'", logging.INFO)
                self.changed(False)
            return implicit

    def changed(self, urgent: bool) -> None:
        """Marks the session changed and tells the manager (which starts its writer); `urgent` asks for a write now."""
        self.generation += 1
        if self._on_change is not None:
            # Guarded here (inline: this runs at every agent run's start and end): a failure to start the writer
            # (say, at interpreter shutdown) must not undo the change that has already been made.
            try:
                self._on_change(urgent)
            except Exception as exc:  # noqa: BLE001 - this is the guard
                report("collector.on_change", exc)

    # -- reading -----------------------------------------------------------------------------------------------
    def has_records(self) -> bool:
        """Whether the session has anything to write (tasks, or events waiting to be built)."""
        # Under the lock: while another thread builds queued events, they are in neither list (taken from `pending`,
        # their task not yet in `_tasks`). The writer, woken by a task's end, looked in that window, found nothing
        # to write and left the finished task unwritten until the next change.
        with self._lock:
            return bool(self._tasks) or bool(self.pending)

    def built_generation(self) -> int:
        """Builds the queued events (waiting for a build another thread has under way) and returns the generation
        the session is at with them: what a write of the session from now on contains at least."""
        with self._lock:
            self.materialize()
            return self.generation

    def open_task_count(self) -> int:
        """How many tasks are open (started, not yet ended)."""
        return len(self._open)

    def task_count(self) -> int:
        """How many tasks the session holds, open or ended."""
        return len(self._tasks)

    def snapshot(self, end_time: Optional[float] = None) -> dict:
        """A consistent plain-data copy of the session: lists are copied under the lock, records are shared
        (finished records are never changed; open ones only have values reassigned, never keys added)."""
        with self._lock:
            self.materialize()
            return {
                "session_id": self.session_id,
                "series_id": self.series_id,
                "part": self.part,
                "start_time": self.start_time,
                "end_time": end_time,
                "tasks": _copies(self._tasks),
            }

    def snapshot_with_open_ids(self, end_time: Optional[float] = None) -> Tuple[dict, Set[str]]:
        """`snapshot()` and the ids of the tasks open at that moment, under one lock. A task that is not open has
        every field final: `close_task` sets them all before the task leaves the open set (the writer relies on
        this to reuse a finished task's JSON from one write to the next)."""
        with self._lock:
            return self.snapshot(end_time), set(self._open)

    def roll_over(self, new_session_id: str) -> Optional[dict]:
        """Ends this session and goes on as `new_session_id` (a new series); returns the ended session's data, or
        None (and changes nothing) while a task is open. The implicit task is closed instead of waited for: it stays
        open for as long as records arrive outside any task."""
        with self._lock:
            self.materialize()
            if any(not task.get("implicit") for task in self._open.values()):
                return None
            old = self._next_part(new_session_id, time.time())
            self.series_id, self.part = new_session_id, 1
            old["tasks"] = _copies(old["tasks"])
            return old

    def take_for_write(self, with_open: bool = False) -> Tuple[List[dict], str, List[dict], List[dict]]:
        """What the writer writes next, taken at one moment: the parts ended since the last call (oldest first, each
        with a consistent copy of its tasks), the current part's id, the tasks closed in it since the last call, and
        (`with_open`) copies of its open tasks."""
        with self._lock:
            self.materialize()
            sealed, self.sealed = self.sealed, []
            for part in sealed:
                part["tasks"] = _copies(part["tasks"])
            finished, self._finished = _copies(self._finished), []
            still_open = _copies(list(self._open.values())) if with_open else []
            return sealed, self.session_id, finished, still_open

    def note_written(self, size: int, units: int) -> None:
        """The writer wrote `size` bytes for `units` size units (see `size_units`): the estimate of a part's size
        follows what the tasks of this process take."""
        if units > 0:
            self.bytes_per_unit = size / units

    def _part_full(self) -> bool:
        if not self.max_tasks_per_part or len(self._tasks) <= len(self._open):
            return False  # (a part with no finished task is never ended: its open tasks would only move on)
        return (len(self._tasks) >= self.max_tasks_per_part
                or 0 < self.max_part_bytes <= self.part_units * self.bytes_per_unit)

    def _next_part(self, new_session_id: str, now: float) -> dict:
        """Ends the current part at `now` and starts part n+1 as `new_session_id`; returns the ended part's data
        (its finished tasks). Tasks still open move on whole, so that every task is in exactly one file. Under the
        lock."""
        implicit = self._implicit
        if implicit is not None and self._open.get(implicit["task_id"]) is implicit:
            self.close_task(implicit, TaskStatus.COMPLETED, notify=False)
        moved: List[dict] = []
        finished: List[dict] = []
        for task in self._tasks:
            (moved if self._open.get(task["task_id"]) is task else finished).append(task)
        # The records themselves, not copies: events queued before the roll-over and built after it still reach
        # their task. The writer copies them when it writes the part (`take_for_write`).
        old = {"session_id": self.session_id, "series_id": self.series_id, "part": self.part,
               "start_time": self.start_time, "end_time": now, "tasks": finished}
        self._tasks = moved
        self._implicit = None
        self._finished = []
        self.session_id = new_session_id
        self.part += 1
        self.part_units = 0
        self.start_time = now
        self.generation += 1
        return old

    def build_session(self, environment: Any = None, end_time: Optional[float] = None) -> "TelemetrySession":
        """The records so far as a `TelemetrySession` (queued events built first); `environment` is an
        `EnvironmentInfo` to put in it."""
        from .models import TelemetrySession

        data = self.snapshot(end_time)
        if environment is not None:
            data["environment"] = environment
        return TelemetrySession.model_validate(data)


def size_units(task: dict) -> int:
    """What a task's size on disk goes with: the task itself and each of its records."""
    return 1 + sum(len(task[key]) for key in _RECORD_KEYS)


def _copies(tasks: List[dict]) -> List[dict]:
    """Plain-data copies of `tasks`: lists are copied, records are shared (finished records are never changed; open
    ones only have values reassigned, never keys added)."""
    copies = []
    for task in tasks:
        copy = dict(task)
        for key in _RECORD_KEYS:
            copy[key] = list(task[key])
        if task.get("implicit") and task["end_time"] is None:
            # Not a run that is still going: a bucket, complete up to its last record.
            _as_completed(copy)
        copy["dropped_records"] = dict(task["dropped_records"])
        if task["dropped_token_usage"] is not None:
            copy["dropped_token_usage"] = deepcopy(task["dropped_token_usage"])
        copies.append(copy)
    return copies
