"""The recorder API: what every framework integration reports through, whatever its hook style.

Usage::

    from sop_telemetry import recorder

    run = recorder.begin_run("myframework", "MyAgent", "planner", task="Plan a trip", model="gpt-4o")
    with recorder.activate(run):                      # code under it (same thread / asyncio task) sees this run
        t0 = recorder.clock()
        reply = call_the_model()
        recorder.model_call("gpt-4o", reply.usage, t0, recorder.clock(), purpose="step")
        t0 = recorder.clock()
        result = call_a_tool()
        recorder.tool_call("search", t0, recorder.clock())
    recorder.end_run(run)                              # or error=exc, stop_reason="max_steps"

A handle (`Run`) is cheap and may be handed to other threads and asyncio tasks: every function that records takes
`run=` explicitly, or records into the current context's run when it is not given. Nothing here raises: a failure is
counted and logged once by the one guard (error_handler), and with telemetry disabled `begin_run` returns
`DISABLED`, which every function accepts and ignores.

Nothing is built on the calling thread: each call queues a tuple of what was observed on the collector's queue, and
the records (clipping, token normalisation, matching calls to their step, the task) are built later by
`TelemetryCollector.materialize()`, in the order the events were queued, usually on the writer thread. The guide,
docs/integrations.md, gives the semantics in full.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from contextvars import Token
from typing import Any, Callable, Iterator, Optional, Tuple, Union

from .collector import Clock, Frame, clip, current, next_id, switch
from .error_handler import report
from .manager import TelemetryManager  # (at import, not at a first call: an integration imports this at install)
from .status import CallStatus, TaskStatus

__all__ = [
    "Run", "Usage", "DISABLED", "CURRENT", "clock", "begin_run", "end_run", "activate", "enter", "leave",
    "current_run", "model_call", "tool_call", "model_returned", "tool_returned", "record_step", "begin_step",
    "end_step", "defer", "capturing", "remember_secret", "error_of", "usage_of", "attr", "int_or_none", "open_run",
    "close_run", "call_record", "add_model_call", "add_tool_call", "add_step", "take_calls", "Step",
]

Run = Frame  # the handle of an agent run


def clock() -> float:
    """The clock of the `start` / `end` arguments (unless `wall=True`): `time.perf_counter`, read through the
    collector's `Clock` so that freezegun's patching of module globals leaves it one clock with the runs' epochs."""
    return Clock.perf()

ErrorArg = Union[BaseException, Tuple[str, Optional[str]], str, None]
Error = Optional[Tuple[str, Optional[str]]]

_SUCCESS = CallStatus.SUCCESS.value
_ERROR = CallStatus.ERROR.value
_RUNNING = TaskStatus.RUNNING.value
_COMPLETED = TaskStatus.COMPLETED
_MODEL_NAME_LIMIT = 200


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"recorder.{self.name}"


CURRENT: Any = _Marker("CURRENT")  # begin_run's default parent: the current context's run (top-level if none)
_AUTO: Any = _Marker("AUTO")  # a call's default step: the run's current step (see begin_step)

DISABLED = Frame(None)  # what begin_run returns while telemetry is disabled; every function ignores it


class Usage:
    """Token usage as a model reported it. `input_tokens` includes `cached_tokens`; `output_tokens` includes
    `reasoning_tokens`; `total_tokens` None means input + output."""

    __slots__ = ("input_tokens", "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")

    def __init__(self, input_tokens: Optional[int] = None, output_tokens: Optional[int] = None,
                 total_tokens: Optional[int] = None, cached_tokens: Optional[int] = None,
                 reasoning_tokens: Optional[int] = None) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.total_tokens = total_tokens
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens

    def __repr__(self) -> str:
        return (f"Usage(input_tokens={self.input_tokens}, output_tokens={self.output_tokens}, "
                f"total_tokens={self.total_tokens}, cached_tokens={self.cached_tokens}, "
                f"reasoning_tokens={self.reasoning_tokens})")


def _collector() -> Any:
    return TelemetryManager.get_instance().get_collector()


def _queue(collector: Any, event: tuple) -> None:
    pending = collector.pending
    pending.append(event)
    if len(pending) >= collector.pending_limit:
        collector.materialize()  # the queue's bound: build now, on this thread


# -- reading what a framework hands over ---------------------------------------------------------------------------
def attr(obj: Any, name: str) -> Any:
    """`getattr(obj, name, None)` that also survives a property raising: one odd attribute costs that value only."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def int_or_none(value: Any) -> Optional[int]:
    if value.__class__ is int:
        return value  # the usual case; bool (an int subclass) is not a count and takes the path below
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - NaN, a str that is not a number, an __int__ that raises
        return None


def _field(usage: Any, *paths: Tuple[str, ...]) -> Any:
    """The first of `paths` present on `usage` (an object or a mapping); a path of two reads a nested value."""
    for path in paths:
        value = usage
        for part in path:
            value = value.get(part) if isinstance(value, dict) else attr(value, part)
            if value is None:
                break
        if value is not None:
            return value
    return None


_INPUT = (("input_tokens",), ("prompt_tokens",))
_OUTPUT = (("output_tokens",), ("completion_tokens",))
_TOTAL = (("total_tokens",),)
_CACHED = (("cache_read_tokens",), ("cached_tokens",), ("input_token_details", "cache_read"),
           ("prompt_tokens_details", "cached_tokens"))
_REASONING = (("reasoning_tokens",), ("output_token_details", "reasoning"),
              ("completion_tokens_details", "reasoning_tokens"), ("details", "reasoning_tokens"))


def usage_of(usage: Any) -> Tuple[Optional[int], Optional[int], Optional[int], bool, Optional[int], Optional[int]]:
    """(prompt, completion, total, reported, cached, reasoning) from a usage as a framework reports it: `Usage`,
    smolagents' TokenUsage, pydantic-ai's RequestUsage, LangChain's usage_metadata dict, OpenAI's usage. Not
    reported (None, None, None, False, None, None) when it has neither input nor output tokens, or zero of both."""
    if usage is None:
        return None, None, None, False, None, None
    if usage.__class__ is Usage:
        prompt, completion = int_or_none(usage.input_tokens), int_or_none(usage.output_tokens)
        total, cached, reasoning = usage.total_tokens, usage.cached_tokens, usage.reasoning_tokens
    else:
        prompt = int_or_none(_field(usage, *_INPUT))
        completion = int_or_none(_field(usage, *_OUTPUT))
        if not prompt and not completion:
            return None, None, None, False, None, None
        total = _field(usage, *_TOTAL)
        cached = _field(usage, *_CACHED)
        reasoning = _field(usage, *_REASONING)
    if not prompt and not completion:
        # None or zero on both sides: a client's way of saying "no usage" (LiteLLM answers Usage(0, 0, 0)).
        return None, None, None, False, None, None
    total = int_or_none(total)
    if total is None:
        total = (prompt or 0) + (completion or 0)
    return prompt, completion, total, True, int_or_none(cached), int_or_none(reasoning)


def error_of(exc: ErrorArg, limit: int) -> Error:
    """(type name, message cut to `limit`) of an error as the API takes it: an exception, a (type, message) pair,
    or a message alone (type "Error"). Taken on the calling thread: an exception holds its traceback."""
    if exc is None:
        return None
    if isinstance(exc, BaseException):
        return type(exc).__name__, clip(exc, limit)
    if isinstance(exc, tuple):
        return clip(exc[0], limit) or "Error", clip(exc[1] if len(exc) > 1 else None, limit)
    return "Error", clip(exc, limit)


# -- agent runs ----------------------------------------------------------------------------------------------------
def begin_run(framework: str, agent_type: str, agent_name: Optional[str] = None, *, task: Any = "",
              model: Optional[str] = None, parent: Any = CURRENT, owner: Any = None,
              start: Optional[float] = None) -> Run:
    """Begins an agent run and returns its handle. With no parent run (`parent=None`, or `CURRENT` outside any run)
    it is a task of its own; under a parent it is an AgentExecution nested in the parent's task. `task` (the
    task's description) is clipped, and masked when written; `start` is epoch seconds (default: now). `owner` is
    kept on the handle for the integration (`run.owner`), as is anything it puts in `run.ext`."""
    if not switch.enabled:
        return DISABLED
    try:
        if parent is CURRENT:
            parent = current.get()
        if parent is DISABLED:
            return DISABLED
        collector = parent.collector if parent is not None and parent.collector is not None else _collector()
        run = Frame(None, None, owner=owner, parent=parent, collector=collector)
        run.framework = framework
        _queue(collector, ("recorder.run", _begin, run, framework, agent_type, agent_name, model, task,
                           time.time() if start is None else start))
        if parent is None:
            collector.changed(False)  # a task is starting: the writer runs (every flush_interval) and exit is hooked
        return run
    except Exception as exc:  # noqa: BLE001 - the guard (inline: this runs at every run's start)
        report("recorder.begin_run", exc)
        return DISABLED


_CANCELLING = ("KeyboardInterrupt", "CancelledError")


def end_run(run: Run, *, status: Union[TaskStatus, str, None] = None, error: ErrorArg = None,
            stop_reason: Optional[str] = None, end: Optional[float] = None) -> None:
    """Ends a run. `status` defaults from `error`: none -> completed; KeyboardInterrupt, asyncio.CancelledError ->
    cancelled; GeneratorExit -> cancelled, with no error recorded; anything else -> failed. `stop_reason` (e.g.
    "max_steps") is the run's, and its task's when top-level. `end` is epoch seconds (default: now).
    Where records are built, `run.on_end(collector, run)` runs first if the integration set it: its builder for what
    it read as the run ended (smolagents' steps), at no cost of an event of its own on the agent's thread."""
    if run is DISABLED or run is None:
        return
    try:
        collector = run.collector
        if collector is None:
            return
        if error is None and status is None:
            err, status = None, _COMPLETED  # (the usual end: nothing to read)
        else:
            if isinstance(error, GeneratorExit):
                error, status = None, status or TaskStatus.CANCELLED
            err = error_of(error, collector.max_string_length)
            if status is None:
                status = TaskStatus.COMPLETED if err is None else (
                    TaskStatus.CANCELLED if err[0] in _CANCELLING else TaskStatus.FAILED)
            elif not isinstance(status, TaskStatus):
                status = TaskStatus(status)
        _queue(collector, ("recorder.run", _end, run, time.time() if end is None else end, status, err,
                           stop_reason))
        if run.parent is None:
            collector.changed(True)  # the task is over: the writer builds its records and writes the file now
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.end_run", exc)


def current_run() -> Optional[Run]:
    """The run of the current context (thread or asyncio task), or None."""
    return current.get()


def enter(run: Run) -> Token:
    """Makes `run` the current context's run; `leave(token)` (in the same context) undoes it."""
    return current.set(run)


def leave(token: Token) -> None:
    try:
        current.reset(token)
    except Exception as exc:  # noqa: BLE001 - a token from another context: the guard
        report("recorder.leave", exc)


@contextmanager
def activate(run: Run) -> Iterator[Run]:
    """`with activate(run):` — code in the block (and asyncio tasks it creates) records into `run`."""
    token = current.set(run)
    try:
        yield run
    finally:
        current.reset(token)


def defer(run: Optional[Run], operation: str, builder: Callable[..., None], *args: Any) -> None:
    """Queues an integration's own work to run where records are built, after everything queued before it:
    `builder(collector, run, *args)`, guarded under `operation`. For framework state read cheaply now and turned
    into records later (steps read from an agent's memory when its run ends)."""
    if run is DISABLED or not switch.enabled:
        return
    try:
        collector = run.collector if run is not None and run.collector is not None else _collector()
        _queue(collector, (operation, builder, run, *args))
    except Exception as exc:  # noqa: BLE001 - the guard
        report(operation, exc)


# -- calls ---------------------------------------------------------------------------------------------------------
def _where(run: Optional[Run]) -> Tuple[Optional[Run], Any]:
    """The run a call records into (None: outside any run, the implicit task) and its collector."""
    if run is None:
        run = current.get()
    if run is not None and run.collector is not None:
        return run, run.collector
    collector = _collector()
    collector.open_fallback_task()  # (opened now, on the caller's thread: it starts the writer and hooks exit)
    return None, collector


def _epoch(run: Optional[Run], wall: bool) -> float:
    """What turns a `clock()` reading into epoch seconds: the run's (taken when it began), or now's."""
    if wall:
        return 0.0
    return run.epoch if run is not None else time.time() - Clock.perf()


def capturing() -> bool:
    """Whether content (prompts, outputs, tool arguments) is being kept: read it only then."""
    try:
        return bool(_collector().capture_content)
    except Exception:  # noqa: BLE001
        return False


def _call_context(run: Optional[Run], step: Any, given: Any, output: Any) -> Tuple[Optional[Run], Any, Any, Any]:
    """A call's run, collector, step number, and previews (clipped, and only with content capture on)."""
    run, collector = _where(run)
    if step is _AUTO:
        step = run.step if run is not None else None
    previews = None
    if collector.capture_content and (given is not None or output is not None):
        previews = (clip(given, collector.max_string_length), clip(output, collector.max_string_length))
    return run, collector, step, previews


def model_call(model: Optional[str], usage: Any, start: float, end: float, *, run: Optional[Run] = None,
               streamed: bool = False, purpose: Optional[str] = None, error: ErrorArg = None,
               status: Union[CallStatus, str, None] = None, step: Any = _AUTO, wall: bool = False,
               input: Any = None, output: Any = None) -> None:
    """Records one model call. `usage`: as the model reported it (see usage_of), or None for not reported; pass
    `Usage(...)` if the object may change after this call. `start` / `end`: `clock()` readings (or epoch seconds
    with `wall=True`). `purpose`: open vocabulary ("step", "planning", "final_answer", "retry", ...); None takes
    the type of the step that owns the call. `step`: the step number (default: the run's current step).
    `input` / `output` are kept (clipped) only with capture_content on."""
    if not switch.enabled or run is DISABLED:
        return
    try:
        run, collector, step, previews = _call_context(run, step, input, output)
        _queue(collector, ("recorder.model_call", _model_call, run, model, usage, step, start, end,
                           _epoch(run, wall), error_of(error, collector.max_string_length), status, streamed,
                           purpose, previews))
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.model_call", exc)


def tool_call(name: Optional[str], start: float, end: float, *, run: Optional[Run] = None, error: ErrorArg = None,
              status: Union[CallStatus, str, None] = None, step: Any = _AUTO, retry_requested: bool = False,
              error_returned_to_model: bool = False, wall: bool = False, arguments: Any = None,
              output: Any = None) -> None:
    """Records one tool call. `retry_requested`: the tool asked the model to try again (pydantic-ai's
    ModelRetry); `error_returned_to_model`: its error was handed back to the model as the tool's result instead
    of stopping the run (LangChain's ToolNode handle_tool_errors). Times, `step` and previews as for model_call."""
    if not switch.enabled or run is DISABLED:
        return
    try:
        run, collector, step, previews = _call_context(run, step, arguments, output)
        _queue(collector, ("recorder.tool_call", _tool_call, run, name, step, start, end, _epoch(run, wall),
                           error_of(error, collector.max_string_length), status, retry_requested,
                           error_returned_to_model, previews))
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.tool_call", exc)


def model_returned(run: Optional[Run], model: Optional[str], usage: Any, step: Optional[int], start: float,
                   end: float) -> bool:
    """The fast form of `model_call` for what a wrapper sees dozens of times a run: a call that returned, in `run`
    (a handle, not None), with `clock()` times. Returns False, recording nothing, when it cannot take it (no run,
    content capture on): call `model_call` then."""
    if run is None or run.pending is None:
        return False
    pending = run.pending
    pending.append(("recorder.model_call", _returned, run, model, usage, step, start, end))
    if len(pending) >= run.limit:
        _build_now(run)
    return True


def tool_returned(run: Optional[Run], name: Optional[str], step: Optional[int], start: float, end: float) -> bool:
    """The fast form of `tool_call`, as model_returned is of model_call."""
    if run is None or run.pending is None:
        return False
    pending = run.pending
    pending.append(("recorder.tool_call", _tool_returned, run, name, step, start, end))
    if len(pending) >= run.limit:
        _build_now(run)
    return True


def _build_now(run: Run) -> None:
    """The queue reached its limit: its events are built now, on this thread (what bounds the queue's memory)."""
    try:
        if run.collector is not None:
            run.collector.materialize()
    except Exception as exc:  # noqa: BLE001 - the guard
        report("collector.materialize", exc)


# -- steps ---------------------------------------------------------------------------------------------------------
class Step:
    """An open step of a run (begin_step); `end_step(step)` records it."""

    __slots__ = ("run", "number", "step_type", "start", "previous")

    def __init__(self, run: Optional[Run], number: Optional[int], step_type: str, start: float,
                 previous: Any) -> None:
        self.run, self.number, self.step_type, self.start, self.previous = run, number, step_type, start, previous


_NO_STEP = Step(None, None, "", 0.0, None)


def begin_step(step_type: str = "action", number: Optional[int] = None, *, run: Optional[Run] = None) -> Step:
    """Opens a step of `run` (default: the current run): calls recorded in that run with no explicit `step` are
    its calls until end_step. `number` defaults to the run's last step number + 1 (the first is 1)."""
    try:
        if run is None:
            run = current.get()
        if run is None or run is DISABLED or not switch.enabled:
            return _NO_STEP
        if number is None:
            number = (run.last_step or 0) + 1
        run.last_step = number
        step = Step(run, number, step_type, Clock.perf(), run.step)
        run.step = number
        return step
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.step", exc)
        return _NO_STEP


def end_step(step: Step, *, error: ErrorArg = None, is_final_answer: bool = False, code: Optional[str] = None,
             step_type: Optional[str] = None) -> None:
    """Records a step opened by begin_step, with the calls made in it; the run's current step goes back to what it
    was before."""
    run = step.run
    if run is None:
        return
    try:
        run.step = step.previous
        record_step(step.number, step_type or step.step_type, step.start, Clock.perf(), run=run, error=error,
                    is_final_answer=is_final_answer, code=code)
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.step", exc)


def record_step(number: Optional[int], step_type: str, start: float, end: float, *, run: Optional[Run] = None,
                error: ErrorArg = None, is_final_answer: bool = False, code: Optional[str] = None,
                wall: bool = False) -> None:
    """Records a finished step of `run` (default: the current run). It owns the run's calls recorded so far with
    the same step number that no step has taken yet. `step_type`: open vocabulary ("action", "planning",
    "final_answer", "node", ...). `code`: the code the step ran, counted into the task's code metrics."""
    if not switch.enabled or run is DISABLED:
        return
    try:
        if run is None:
            run = current.get()
        if run is None or run.collector is None:
            return  # a step belongs to a run
        collector = run.collector
        epoch = _epoch(run, wall)
        _queue(collector, ("recorder.step", _step, run, number, step_type, start + epoch, end + epoch,
                           error_of(error, collector.max_string_length), is_final_answer, code))
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.step", exc)


def remember_secret(value: Any) -> None:
    """Masks `value` (an API key, a token) wherever it appears in session files and exports."""
    try:
        from .environment import remember_secret as remember

        remember(value)
    except Exception as exc:  # noqa: BLE001 - the guard
        report("recorder.secret", exc)


# -- builders (run by TelemetryCollector.materialize, in queue order, under the collector's lock) ------------------
def _begin(collector: Any, run: Run, framework: str, agent_type: Any, agent_name: Any, model: Any, description: Any,
           start: float) -> None:
    open_run(collector, run, framework, agent_type, agent_name, model, description, start)


def open_run(collector: Any, run: Run, framework: Optional[str], agent_type: Any, agent_name: Any, model: Any,
             description: Any, start: float) -> dict:
    """Gives `run` its task (a new one when top-level) and its agent record; returns the record."""
    limit = collector.max_string_length
    agent_type = clip(agent_type, limit) or "Agent"
    agent_name = clip(agent_name, limit) if isinstance(agent_name, str) and agent_name else agent_type
    parent = run.parent
    if parent is None:
        # Unique, not secret: the Mersenne Twister (reseeded in forked children) costs no system call per run.
        task = collector.open_task(f"{agent_name}-{random.getrandbits(48):012x}", description, start=start,
                                   notify=False)
    else:
        task = parent.task if parent.task is not None else collector.open_fallback_task()
    parent_agent = parent.agent if parent is not None else None
    rec = {
        "agent_id": next_id("a"),
        "agent_type": agent_type,
        "agent_name": agent_name,
        "framework": framework,
        "parent_agent_id": parent_agent["agent_id"] if parent_agent is not None else None,
        "model": clip(model, _MODEL_NAME_LIMIT) if model is not None else None,
        "start_time": start,
        "end_time": None,
        "duration": None,
        "status": _RUNNING,
        "error_type": None,
        "error_message": None,
        "steps": 0,
        "max_steps_reached": False,
    }
    run.task = task
    run.agent = rec
    collector.add("agents", rec, run)
    return rec


def _end(collector: Any, run: Run, end: float, status: TaskStatus, error: Error, stop_reason: Optional[str]) -> None:
    if run.on_end is not None:
        try:
            run.on_end(collector, run)
        except Exception as exc:  # noqa: BLE001 - the guard: the run is closed all the same
            report("recorder.end_run", exc)
    close_run(collector, run, end, status, error, stop_reason)


def close_run(collector: Any, run: Run, end: float, status: TaskStatus, error: Error,
              stop_reason: Optional[str]) -> None:
    rec = run.agent
    if rec is None:
        return  # its begin failed (counted then): nothing to end
    stop_reason = stop_reason or run.stop_reason
    rec["end_time"] = end
    rec["duration"] = max(0.0, end - rec["start_time"])
    rec["status"] = status.value
    rec["max_steps_reached"] = stop_reason == "max_steps"
    run.calls, run.tools = [], []  # (calls no step took stay in the task: the run lets go of them)
    if error is not None:
        rec["error_type"], rec["error_message"] = error
    if run.parent is None:
        extra: dict = {"stop_reason": stop_reason} if stop_reason else {}
        if error is not None:
            extra["error_type"], extra["error_message"] = error
        collector.close_task(run.task, status, end=end, notify=False, **extra)


def call_record(run: Optional[Run], step_number: Any, start: float, duration: float, error: Error,
                status: Any) -> dict:
    """The fields a model call and a tool call share; `start` in epoch seconds."""
    agent = run.agent if run is not None else None
    if status is None:
        status = _SUCCESS if error is None else _ERROR
    elif isinstance(status, CallStatus):
        status = status.value
    else:
        status = CallStatus(status).value
    return {
        "call_id": next_id("c"),
        "start_time": start,
        "end_time": start + duration,
        "duration": duration,
        "status": status,
        "error_type": error[0] if error is not None else None,
        "error_message": error[1] if error is not None else None,
        "agent_name": agent["agent_name"] if agent is not None else None,
        "agent_id": agent["agent_id"] if agent is not None else None,
        "step_number": step_number if step_number.__class__ is int else None,
    }


def add_model_call(collector: Any, run: Optional[Run], rec: dict, model: Any, usage: Any, streamed: bool,
                   purpose: Optional[str]) -> None:
    """Completes a model call's record (`rec` from call_record) and adds it to its run."""
    prompt, completion, total, reported, cached, reasoning = usage_of(usage)
    rec.update(model=clip(model, _MODEL_NAME_LIMIT) or "unknown", prompt_tokens=prompt,
               completion_tokens=completion, total_tokens=total, tokens_reported=reported, streamed=streamed,
               purpose=purpose)
    if cached is not None:
        rec["cached_tokens"] = cached
    if reasoning is not None:
        rec["reasoning_tokens"] = reasoning
    if collector.add("llm_calls", rec, run) and run is not None and run.agent is not None:
        run.calls.append(rec)


def add_tool_call(collector: Any, run: Optional[Run], rec: dict, name: Any) -> None:
    rec["tool_name"] = clip(name, collector.max_string_length) or "unknown"
    if collector.add("tools", rec, run) and run is not None and run.agent is not None:
        run.tools.append(rec)


def _model_call(collector: Any, run: Optional[Run], model: Any, usage: Any, step: Any, start: float, end: float,
                epoch: float, error: Error, status: Any, streamed: bool, purpose: Optional[str],
                previews: Optional[tuple]) -> None:
    rec = call_record(run, step, start + epoch, max(0.0, end - start), error, status)
    if previews is not None:
        rec["input_preview"], rec["output_preview"] = previews
    add_model_call(collector, run, rec, model, usage, streamed, purpose)


def _returned(collector: Any, run: Run, model: Any, usage: Any, step: Any, start: float, end: float) -> None:
    add_model_call(collector, run, call_record(run, step, start + run.epoch, end - start, None, None), model, usage,
                   False, None)


def _tool_call(collector: Any, run: Optional[Run], name: Any, step: Any, start: float, end: float, epoch: float,
               error: Error, status: Any, retry_requested: bool, returned: bool, previews: Optional[tuple]) -> None:
    rec = call_record(run, step, start + epoch, max(0.0, end - start), error, status)
    if previews is not None:
        rec["arguments_preview"], rec["output_preview"] = previews
    if retry_requested:
        rec["retry_requested"] = True
    if returned:
        rec["error_returned_to_model"] = True
    add_tool_call(collector, run, rec, name)


def _tool_returned(collector: Any, run: Run, name: Any, step: Any, start: float, end: float) -> None:
    add_tool_call(collector, run, call_record(run, step, start + run.epoch, end - start, None, None), name)


def take_calls(run: Run, number: Any) -> Tuple[list, list, dict]:
    """The run's calls and tools no step has taken that were made at step `number`, and its dropped counts."""
    calls = [rec for rec in run.calls if rec["step_number"] == number]
    tools = [rec for rec in run.tools if rec["step_number"] == number]
    if calls:
        run.calls = [rec for rec in run.calls if rec["step_number"] != number]
    if tools:
        run.tools = [rec for rec in run.tools if rec["step_number"] != number]
    return calls, tools, run.dropped.pop(number, {})


def _step(collector: Any, run: Run, number: Any, step_type: str, start: float, end: float, error: Error,
          is_final: bool, code: Any) -> None:
    if run.agent is None:
        return  # its begin failed (counted then): nothing to add to
    if number.__class__ is not int:
        number = None
    calls, tools, dropped = take_calls(run, number)
    add_step(collector, run, step_type, number, start, end, calls, tools, dropped, error, is_final, code)


def add_step(collector: Any, run: Run, step_type: str, number: Optional[int], start: Any, end: Any, calls: list,
             tools: list, dropped: dict, error: Error, is_final: Any, code: Any) -> None:
    """A step record owning `calls` and `tools` (and the counts of its dropped ones): its calls with no purpose
    take the step's type as theirs, and all take its number."""
    agent, task = run.agent, run.task
    if agent is None or task is None:
        return  # its run's begin failed (counted then): nothing to add to
    prompt, completion = dropped.get("prompt_tokens", 0), dropped.get("completion_tokens", 0)
    for call in calls:
        if call["purpose"] is None:
            call["purpose"] = step_type
        call["step_number"] = number
        prompt += call["prompt_tokens"] or 0
        completion += call["completion_tokens"] or 0
    for tool in tools:
        tool["step_number"] = number
    if not isinstance(start, (int, float)):
        start = agent["start_time"]  # a step without timing: placed at the run's start
    if not isinstance(end, (int, float)):
        end = start
    rec = {
        "step_type": step_type,
        "step_number": number,
        "agent_name": agent["agent_name"],
        "agent_id": agent["agent_id"],
        "start_time": start,
        "end_time": end,
        "duration": max(0.0, end - start),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "llm_calls": len(calls) + dropped.get("llm_calls", 0),
        "tool_calls": len(tools) + dropped.get("tools", 0),
        "error_type": error[0] if error is not None else None,
        "error_message": error[1] if error is not None else None,
        "is_final_answer": bool(is_final),
    }
    collector.add("steps", rec, run)
    agent["steps"] += 1
    if isinstance(code, str) and code:
        metrics = task["code_changes"]
        metrics["code_actions"] += 1
        metrics["code_lines"] += code.count("\n") + 1
