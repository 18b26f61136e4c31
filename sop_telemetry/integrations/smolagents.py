"""smolagents instrumentation: agent runs, model calls, tool calls and steps, with no change to user code.

Usage::

    import sop_telemetry                       # installs this through a post-import hook
    from sop_telemetry.integrations import smolagents as integration
    integration.uninstall()                    # every patched attribute back to the original object
    integration.install()

What is patched (all undone by `uninstall()`):
- `run` of MultiStepAgent and of every subclass that defines its own: a top-level run is a task, a run inside
  another run (a managed agent) is an AgentExecution nested under its parent. `run(stream=True)` returns a proxy of
  the generator that ends the task when the generator is exhausted, closed, raises or is dropped.
- `_generate_planning_step` of MultiStepAgent (only planning agents call it): its generator is passed through item
  for item, and the PlanningStep it yields last marks where that planning step's calls end. Steps are otherwise not
  hooked: they are read from the agent's memory when the run ends (smolagents appends each finished step to
  `agent.memory.steps`, with its timing, number, error and code); what the memory will not tell of a failing run (an
  error a step died of that is not on the step object, a step whose callback raised and so never reached the
  memory) is read off the run's exception when it ends.
- `generate` / `generate_stream` of Model and of every subclass that defines them, including subclasses created
  later (an `__init_subclass__` hook) and model classes first seen on an agent. A per-thread flag makes a call that
  delegates to another patched method (super().generate, generate_stream -> generate) count once.
- `__call__` of Tool and of every subclass that defines it (a subclass's that calls super() counts once).
- `local_python_executor.timeout` (smolagents >= 1.24): it runs CodeAgent code on a fresh thread without copying
  the context; the patch runs that code in a copy of the caller's context, so tools and managed agents called from
  code know their task, agent and step.

Why plain functions and not `wrapt.FunctionWrapper`: a FunctionWrapper in a class builds a bound wrapper object at
every attribute access and calls through it, which costs a short run measurably (docs/design.md, "Patch shapes").
Each patch here is a function closing over the original, marked as ours, with `functools.update_wrapper` (so
`__wrapped__`, the name and the signature are the original's); `uninstall()` restores by identity as before. The one
called on every step (generate) is generated with the original's own parameters (`_signatures`), which saves packing
and unpacking the arguments at every call. wrapt is still what proxies the generator of `run(stream=True)`.

Every wrapper checks `switch.enabled` first and then calls the original. What it records is queued, not built: a
tuple of timestamps and the objects at hand goes on the collector's queue, and the record dicts are built later by
`_smolagents_records` (see TelemetryCollector.materialize). The queuing is guarded (counted, logged once, never
raised); the original's result and exception pass through untouched.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from contextvars import ContextVar, copy_context
from types import FunctionType, GeneratorType
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from ..collector import Clock, Frame, clip, current, switch
from ..error_handler import get_error_handler
from ..error_handler import guard as _safe
from ..manager import TelemetryManager
from ..status import TaskStatus
from . import _signatures
from . import _smolagents_records as records

logger = logging.getLogger("sop_telemetry")

SUPPORTED_VERSIONS = ((1, 23), (1, 27))  # >= 1.23 (copies context into tool threads), < 1.27 (tested up to 1.26)


class _ModelCall:
    """Set while this thread is inside a recorded model call, so that one that delegates to another patched method
    (super().generate, generate_stream -> generate, a model wrapping a model) counts once. Per thread rather than
    a context variable: setting a ContextVar allocates a new context each time, and model calls are synchronous, so a
    thread is exactly one chain of them."""

    __slots__ = ("busy",)

    def __init__(self) -> None:
        self.busy = False


class _PerThread(threading.local):
    """Each thread's own `_ModelCall`. The flag is read and set on an object of its own rather than on the
    thread-local: each attribute access on a threading.local looks the thread's dict up first (several times a slot
    access), and a model call reads the flag once and sets it twice."""

    def __init__(self) -> None:
        self.model_call = _ModelCall()


_per_thread = _PerThread()

_lock = threading.RLock()
_installed = False
_warned_version = False
# (owner, attribute, what was in owner.__dict__ before (the original object, or _ABSENT), what we put there)
_patched: List[Tuple[Any, str, Any, Any]] = []
_seen_model_classes: set = set()
_ABSENT = object()
_MARK = "__sop_telemetry_wrapper__"
_now = time.time
# Wall-clock time minus perf_counter: a call's start is its perf_counter reading plus this (one clock read a call
# instead of two). Taken again when a top-level run begins and for every call outside a run, so that a change of
# the system clock reaches the records within a run. (The usual call inside a run uses its run's `Frame.epoch`,
# taken when the run began, in the builder.)
_epoch = _now() - Clock.perf()
_COMPLETED, _CANCELLED, _FAILED = TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED


# -- queuing -------------------------------------------------------------------------------------------------------
# Each model and tool wrapper queues one event per call. For a model reply or a tool result (what an agent does
# dozens of times a run) the wrapper does it in its own body, reading only what cannot wait and reaching the queue
# through the frame it already holds; anything unusual there (no run, content capture, a reply with no
# `token_usage` attribute, an error) raises or is told apart and goes to the general path (`_queue_call`). Steps
# queue nothing as they go (see the steps section); a run queues its steps once, when it ends. Inside a run,
# smolagents' own work between calls evicts our code and data from the CPU caches, so what a call costs is mostly how
# many objects and code objects it reaches: on a cache-cold call (benchmarks/, section 2b) a helper function and the
# collector's attributes, which this body no longer reaches, were a large part of the model wrapper's cost.
def _collector() -> Any:
    return TelemetryManager.get_instance().get_collector()


def _outside(frame: Optional[Frame]) -> Any:
    """The collector for a call made in no agent run's frame; with no task at all, the implicit task is opened now
    (inside a task that happened when the task was opened), which also starts the writer and hooks exit."""
    global _epoch
    _epoch = _now() - Clock.perf()
    collector = _collector()
    if frame is None:
        collector.open_fallback_task()
    return collector


def _materialize(frame: Frame) -> None:
    """The queue reached its limit: its events are built now, on this thread (what bounds the queue's memory)."""
    try:
        frame.collector.materialize()  # type: ignore[union-attr]
    except Exception as error:  # noqa: BLE001 - this is the guard
        _failed("collector.materialize", error)


def _queue(collector: Any, event: tuple) -> None:
    pending = collector.pending
    pending.append(event)
    if len(pending) >= collector.pending_limit:
        collector.materialize()


def _failed(operation: str, exc: Exception) -> None:
    get_error_handler().record_error(operation, exc)


def _error(exc: BaseException, collector: Any) -> Tuple[str, Optional[str]]:
    # Taken at once rather than the exception queued: it holds its traceback (and every frame's locals).
    return records.error_of(exc, collector.max_string_length)


# -- model calls ---------------------------------------------------------------------------------------------------
def _queue_call(operation: str, builder: Callable[..., None], label: str, previews_of: Callable[..., tuple],
                obj: Any, frame: Optional[Frame], start: float, duration: float, exc: Optional[BaseException],
                content: Any, *extra: Any) -> None:
    """The general path for a model or tool call (errors, streams, content capture): queues `builder`'s event with
    the call's object and its `label` attribute (model_id, name), the agent's step, times, error and previews."""
    try:
        collector = frame.collector if frame is not None else None
        if collector is None:
            collector = _outside(frame)
        try:
            name = getattr(obj, label)
        except Exception:  # noqa: BLE001 - duck-typed models and odd tools may have none (read as the type's name)
            name = None
        try:
            # The agent's step counter now: it moves on as the run goes, so it cannot be read later.
            step = frame.owner.step_number  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - no frame, no agent, or a user's agent class that makes this anything
            step = None
        previews = None
        if content is not None and collector.capture_content:
            previews = previews_of(content, collector.max_string_length)
        _queue(collector, (operation, builder, frame, obj, name, step, start, duration,
                           None if exc is None else _error(exc, collector), previews, *extra))
    except Exception as error:  # noqa: BLE001 - this is the guard
        _failed(operation, error)


def _queue_llm(model: Any, frame: Optional[Frame], start: float, duration: float, usage: Any,
               exc: Optional[BaseException], streamed: bool, content: Any = None) -> None:
    _queue_call("smolagents.model", records.record_llm, "model_id", _llm_previews, model, frame, start, duration,
                exc, content, usage, streamed)


def _llm_previews(content: Any, limit: int) -> Tuple[Optional[str], Optional[str]]:
    # (args, kwargs, reply) of the call, read only with capture on, and at once (the messages are the agent's).
    args, kwargs, reply = content
    messages = args[0] if args else kwargs.get("messages")
    last = messages[-1] if isinstance(messages, (list, tuple)) and messages else None
    return clip(getattr(last, "content", last), limit), clip(records.attr(reply, "content"), limit)


# generate runs on every step, so its wrapper takes the original's own parameters
# (`_signatures`: no packing and unpacking of the arguments, the cheapest call through a wrapper in Python).
_GENERATE = """
def make(original):
    enabled, per_thread, perf, frame_var = switch, _per_thread, Clock.perf, current  # (closure cells: faster to read)

    def generate(PARAMS):
        if not enabled.enabled:
            return original(CALL)
        model_call = per_thread.model_call
        if model_call.busy:
            return original(CALL)
        model_call.busy = True
        t0 = perf()
        try:
            result = original(CALL)
        except BaseException as exc:
            _llm_failed(SELF, t0, exc)
            raise
        finally:
            model_call.busy = False
        t1 = perf()
        try:
            frame = frame_var.get()
            pending = frame.pending
            # (The usage is taken now, not the reply kept: it holds the content and the raw response.) The agent's
            # step counter is read now: it moves on as the run goes, and it tells which step the call was in.
            pending.append(("smolagents.model", records.record_reply, frame, SELF, result.token_usage,
                            frame.owner.step_number, t0, t1))
        except Exception:  # no run, content capture, an odd reply or agent: the general path
            _llm_returned(SELF, t0, t1 - t0, result, ARGS, KWARGS)
            return result
        if len(pending) >= frame.limit:
            _materialize(frame)
        return result
    return generate
"""


def _llm_returned(model: Any, t0: float, duration: float, result: Any, args: tuple, kwargs: dict) -> None:
    _queue_llm(model, current.get(), t0 + _epoch, duration, _usage_of(result), None, False, (args, kwargs, result))


def _llm_failed(model: Any, t0: float, exc: BaseException) -> None:
    _queue_llm(model, current.get(), t0 + _epoch, Clock.perf() - t0, None, exc, False)


def _usage_of(result: Any) -> Any:
    try:
        return result.token_usage
    except Exception:  # noqa: BLE001 - a reply without usage (or whose property raises): not reported
        return None


_generate_wrapper = _signatures.factory(_GENERATE, globals())


class _Usage:
    """Token usage summed over stream deltas: smolagents' deltas carry increments (API models send one final
    delta with the whole usage, local models one per delta), so the sum is what the model reported, once."""

    __slots__ = ("input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None

    def add(self, usage: Any) -> None:
        inp = records.int_or_none(records.attr(usage, "input_tokens"))
        out = records.int_or_none(records.attr(usage, "output_tokens"))
        if inp is not None:
            self.input_tokens = (self.input_tokens or 0) + inp
        if out is not None:
            self.output_tokens = (self.output_tokens or 0) + out

    def reported(self) -> Optional["_Usage"]:
        return self if self.input_tokens is not None or self.output_tokens is not None else None


def _traced_stream(iterator: Any, model: Any, frame: Optional[Frame], start: float, t0: float) -> Any:
    """A generator over the model's stream that sums usage and records the call once, however the stream ends."""
    usage = _Usage()
    exc: Optional[BaseException] = None
    try:
        while True:
            # Flagged while the model produces a delta, so that a generate_stream built on generate counts once.
            model_call = _per_thread.model_call
            was, model_call.busy = model_call.busy, True
            try:
                delta = next(iterator)
            except StopIteration:
                return
            finally:
                model_call.busy = was
            delta_usage = records.attr(delta, "token_usage")
            if delta_usage is not None:
                _safe("smolagents.model_stream", usage.add, delta_usage)
            yield delta
    except BaseException as error:
        exc = error
        if isinstance(error, GeneratorExit):
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        raise
    finally:
        _queue_llm(model, frame, start, Clock.perf() - t0, usage.reported(), exc, True)


def _generate_stream_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def generate_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not switch.enabled:
            return original(self, *args, **kwargs)
        model_call = _per_thread.model_call
        if model_call.busy:
            return original(self, *args, **kwargs)
        model_call.busy = True
        start = _now()
        t0 = Clock.perf()
        try:
            stream = original(self, *args, **kwargs)
        except BaseException as exc:
            _queue_llm(self, current.get(), start, Clock.perf() - t0, None, exc, True)
            raise
        finally:
            model_call.busy = False
        if not hasattr(stream, "__next__"):
            # Not an iterator (a list of deltas, say): count it now and hand back the very same object.
            def count_now() -> None:
                usage = _Usage()
                for delta in stream:
                    delta_usage = records.attr(delta, "token_usage")
                    if delta_usage is not None:
                        usage.add(delta_usage)
                _queue_llm(self, current.get(), start, Clock.perf() - t0, usage.reported(), None, True)

            _safe("smolagents.model_stream", count_now)
            return stream
        return _traced_stream(stream, self, current.get(), start, t0)

    return generate_stream


# -- tool calls ----------------------------------------------------------------------------------------------------
def _queue_tool(tool: Any, frame: Optional[Frame], start: float, duration: float, exc: Optional[BaseException],
                content: Any = None) -> None:
    _queue_call("smolagents.tool", records.record_tool, "name", _tool_previews, tool, frame, start, duration, exc,
                content)


def _tool_previews(content: Any, limit: int) -> Tuple[Optional[str], Optional[str]]:
    args, kwargs, result = content
    kwargs = {k: v for k, v in kwargs.items() if k != "sanitize_inputs_outputs"}
    return clip(kwargs if not args else (args, kwargs), limit), clip(result, limit)


def _tool_call_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    # (Not generated from a template like generate: Tool.__call__ takes *args and **kwargs itself, so a wrapper
    # with its parameters passes them on no faster.)
    enabled, perf = switch, Clock.perf  # (closure cells: faster to read than module globals)
    # A None frame (no run) or queue (content capture) fails inside the `try` below and takes the general path, as
    # in generate: cheaper than testing for them on every call.
    frame_var: ContextVar[Any] = current

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not enabled.enabled:
            return original(self, *args, **kwargs)
        # A subclass's __call__ that calls super().__call__ is one call, not two: the wrapper Python looks up on the
        # tool's class records it, and ours further up the chain pass it through. (A type check, not a context
        # flag: no state to set and reset per call.)
        outer = type(self).__call__
        if outer is not __call__ and _is_ours(outer):
            return original(self, *args, **kwargs)
        t0 = perf()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _queue_tool(self, current.get(), t0 + _epoch, perf() - t0, exc)
            raise
        t1 = perf()
        try:
            frame = frame_var.get()
            pending = frame.pending
            pending.append(("smolagents.tool", records.record_result, frame, self, None, frame.owner.step_number, t0,
                            t1))
        except Exception:  # no run, content capture, an odd agent: the general path (see generate)
            _queue_tool(self, current.get(), t0 + _epoch, t1 - t0, None, (args, kwargs, result))
            return result
        if len(pending) >= frame.limit:
            _materialize(frame)
        return result

    return __call__


# -- steps ---------------------------------------------------------------------------------------------------------
# Steps queue nothing as they go: a run's step records are built from the agent's memory when it ends (_end_run),
# and smolagents' `_finalize_step`, called at every step, is not patched (a wrapper there did nothing in the usual
# case; docs/design.md, "Steps are read from the agent's memory"). What the memory will not tell is read elsewhere:
# where a planning step's calls end (`_generate_planning_step`, which only planning agents call), and, from a failing
# run's traceback (`_note_failure`: only failing runs pay), the error a step died of when it is not stored on the step
# and a step that never reached the memory because its callback raised.
_in_flight: Callable[[], Optional[BaseException]] = getattr(sys, "exception", None) or (lambda: sys.exc_info()[1])


class _NoPlanningStep:
    """Stands for smolagents' PlanningStep until install() imports it."""


_PlanningStep: type = _NoPlanningStep


def _planning_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def _generate_planning_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        steps = original(self, *args, **kwargs)
        if not switch.enabled or not hasattr(steps, "__next__"):
            return steps
        return _traced_planning(self, steps)

    return _generate_planning_step


def _traced_planning(agent: Any, steps: Any) -> Any:
    """The planning step's generator, item for item; the PlanningStep it yields last (after its model calls) notes
    that the calls the run has made at this step number so far are the planning step's."""
    for item in steps:
        if isinstance(item, _PlanningStep):
            _planned(agent, item)
        yield item


def _planned(agent: Any, step: Any) -> None:
    try:
        frame = current.get()
        if frame is None or frame.owner is not agent:
            return
        try:
            number = agent.step_number
        except Exception:  # noqa: BLE001 - a user's agent class that makes this anything
            number = None
        _queue(frame.collector or _outside(frame), ("smolagents.step", records.planning_done, frame, id(step), number))
    except Exception as exc:  # noqa: BLE001 - this is the guard
        _failed("smolagents.step", exc)


def _note_failure(frame: Frame, exc: BaseException) -> None:
    """What a failing run's exception tells of its steps, read off its traceback and those of the errors it was
    raised while handling. smolagents finalizes a step in a `finally`: an error a step dies of that it re-raises
    (a model failure as AgentGenerationError, an interrupt) passed through the agent's `_step_stream` for that step,
    and is not stored on the step; an error raised in `_finalize_step` (a step callback) kept that step out of the
    memory. Both frames are this agent's (`self`), and their first argument is the step."""
    agent, collector = frame.owner, frame.collector
    error: Optional[BaseException] = exc
    for _ in range(8):  # (the chain of errors raised while handling others: bounded, it may be a cycle)
        if error is None:
            break
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_name in ("_step_stream", "_finalize_step") and code.co_argcount > 1:
                local = tb.tb_frame.f_locals
                step = local.get(code.co_varnames[1])
                if local.get(code.co_varnames[0]) is agent and step is not None:
                    if code.co_name == "_finalize_step":
                        if frame.lost_steps is None:
                            frame.lost_steps = []
                        if not any(lost is step for lost in frame.lost_steps):
                            frame.lost_steps.append(step)
                    elif error is not frame.outer_error:
                        _step_died_of(frame, step, _error(error, collector))
            tb = tb.tb_next
        error = error.__context__


# -- agent runs ----------------------------------------------------------------------------------------------------
def _begin_run(agent: Any, args: tuple, kwargs: dict, parent: Optional[Frame]) -> Frame:
    global _epoch
    collector = parent.collector if parent is not None and parent.collector is not None else _collector()
    try:
        model = agent.model
    except Exception:  # noqa: BLE001 - an agent class without one
        model = None
    if model is not None and type(model) not in _seen_model_classes:
        _ensure_model_class(type(model))  # before the model is called: its class may need patching
    frame = Frame(None, None, owner=agent, parent=parent, collector=collector)
    frame.outer_error = _in_flight()
    description = args[0] if args else kwargs.get("task", "")
    _queue(collector, ("smolagents.run", records.start_run, frame, agent, model, description, _now()))
    if parent is None:
        _epoch = frame.epoch  # (the frame took it a moment ago: no clock read again)
        collector.changed(False)  # a task is starting: the writer runs (every flush_interval) and exit is hooked
    return frame


def _end_run(frame: Frame, exc: Optional[BaseException]) -> None:
    collector = frame.collector
    if exc is None:
        status, error = _COMPLETED, None
    elif isinstance(exc, GeneratorExit):
        status, error = _CANCELLED, None
    else:
        status = _CANCELLED if isinstance(exc, KeyboardInterrupt) else _FAILED
        error = _error(exc, collector)
    if exc is not None and exc.__traceback__ is not None:
        _safe("smolagents.step", _note_failure, frame, exc)
    _queue(collector, ("smolagents.run", records.finish_run, frame, _step_fields(frame, collector), _now(), status,
                       error))
    if frame.parent is None and collector is not None:
        collector.changed(True)  # the task is over: the writer builds its records and writes the file now


def _step_fields(frame: Frame, collector: Any) -> Optional[list]:
    """The run's steps, read from the agent's memory now: they hold the whole conversation, which the memory lets
    go of at the agent's next run and which must not wait in the queue until the writer runs. None if they could
    not be read (counted; the run's end is queued all the same)."""
    try:
        try:
            if frame.memory is None:
                steps = frame.owner.memory.steps
            else:
                memory, first = frame.memory  # a streamed run: see _trace_run_stream
                steps = memory[first:]
        except Exception:  # noqa: BLE001 - an agent class without smolagents' memory
            steps = []
        return records.step_fields(frame, steps, collector.max_string_length)
    except Exception as exc:  # noqa: BLE001 - this is the guard
        _failed("smolagents.step", exc)
        return None


def _closed_in(frame: Frame, steps: list) -> None:
    error = _error(GeneratorExit(), frame.collector)
    for step in steps:
        _step_died_of(frame, step, error)


def _step_died_of(frame: Frame, step: Any, error: Tuple[str, Optional[str]]) -> None:
    """Notes the error a step died of, for its record (see records.step_fields); the first one noted stands."""
    if frame.step_errors is None:
        frame.step_errors = {}
    frame.step_errors.setdefault(id(step), error)


def _traced_run_class() -> type:
    import wrapt

    class _TracedRun(wrapt.ObjectProxy):
        """Stands in for the generator `run(stream=True)` returns (isinstance and attributes pass through): the
        same items, send/throw/close passed on, each resumption run with the agent's frame as the current context,
        and the task ended when the generator is exhausted, raises, is closed or is dropped."""

        def __init__(self, gen: Any, frame: Frame) -> None:
            super().__init__(gen)
            self._self_frame = frame
            self._self_done = False

        def __iter__(self) -> Any:
            return self

        def _self_resume(self, method: Callable[..., Any], *args: Any) -> Any:
            token = current.set(self._self_frame)
            try:
                return method(*args)
            except StopIteration:
                self._self_finish(None)
                raise
            except BaseException as exc:
                self._self_finish(exc)
                raise
            finally:
                current.reset(token)

        def __next__(self) -> Any:
            return self._self_resume(self.__wrapped__.__next__)

        def send(self, value: Any) -> Any:
            return self._self_resume(self.__wrapped__.send, value)

        def throw(self, *args: Any) -> Any:
            return self._self_resume(self.__wrapped__.throw, *args)

        def close(self) -> None:
            token = current.set(self._self_frame)
            memory = self._self_frame.memory  # (the list this run appends its steps to: see _trace_run_stream)
            steps = memory[0] if memory is not None else None
            first = len(steps) if steps is not None else 0
            try:
                self.__wrapped__.close()
            finally:
                current.reset(token)
                if steps is not None and len(steps) > first and not self._self_done:
                    # Closed inside an action step: smolagents finalizes it in a `finally` and appends it to the
                    # memory while the GeneratorExit is on its way out. That is what the step died of.
                    _safe("smolagents.step", _closed_in, self._self_frame, steps[first:])
                self._self_finish(GeneratorExit())

        def _self_finish(self, exc: Optional[BaseException]) -> None:
            if not self._self_done:
                self._self_done = True
                _safe("smolagents.run", _end_run, self._self_frame, exc)

        def __del__(self) -> None:
            try:
                if not self._self_done:
                    self._self_finish(GeneratorExit())  # dropped half-way: the task is over, as cancelled
            except Exception:  # noqa: BLE001 - at interpreter shutdown anything may be gone
                pass

    return _TracedRun


_traced_run: Any = None


def _trace_run_stream(gen: Any, frame: Frame) -> Any:
    global _traced_run
    if _traced_run is None:
        _traced_run = _traced_run_class()
    # The memory list this run appends its steps to, and where they begin: a streamed run may still be going when
    # the agent runs again, and that run resets the memory (a new list) or, with reset=False, appends after it.
    try:
        steps = frame.owner.memory.steps
        frame.memory = (steps, len(steps))
    except Exception:  # noqa: BLE001 - an agent class without smolagents' memory
        pass
    return _traced_run(gen, frame)


def _run_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not switch.enabled:
            return original(self, *args, **kwargs)
        parent = current.get()
        if parent is not None and parent.owner is self:
            return original(self, *args, **kwargs)  # a subclass's run calling super().run: one run
        try:  # (the guards inline, here and below: this runs at every agent run's start and end)
            frame = _begin_run(self, args, kwargs, parent)
        except Exception as error:  # noqa: BLE001 - this is the guard
            _failed("smolagents.run", error)
            return original(self, *args, **kwargs)
        token = current.set(frame)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            current.reset(token)
            _safe("smolagents.run", _end_run, frame, exc)
            raise
        current.reset(token)
        if isinstance(result, GeneratorType):
            traced = _safe("smolagents.run", _trace_run_stream, result, frame)
            if traced is not None:
                return traced
        try:
            _end_run(frame, None)
        except Exception as error:  # noqa: BLE001 - this is the guard
            _failed("smolagents.run", error)
        return result

    return run


# -- CodeAgent's executor thread -----------------------------------------------------------------------------------
def _run_in(ctx: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return ctx.run(func, *args, **kwargs)


def _timeout_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def timeout(*args: Any, **kwargs: Any) -> Any:
        decorator = original(*args, **kwargs)
        if not switch.enabled:
            return decorator
        # smolagents applies this to each piece of code it runs, so nothing here copies metadata (functools.wraps
        # costs a few µs, per step); the context is copied per call, on the calling thread, and travels to the
        # worker thread as an argument.
        run_in = decorator(_run_in)

        def in_caller_context(func: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any, **k: Any) -> Any:
                return run_in(copy_context(), func, *a, **k)

            return call

        return in_caller_context

    return timeout


# -- patching ------------------------------------------------------------------------------------------------------
_CLASS_TARGETS: Dict[str, Dict[str, Callable[..., Any]]] = {
    "Model": {"generate": _generate_wrapper, "generate_stream": _generate_stream_wrapper},
    "Tool": {"__call__": _tool_call_wrapper},
    "MultiStepAgent": {"run": _run_wrapper, "_generate_planning_step": _planning_wrapper},
}


def _is_ours(obj: Any) -> bool:
    return getattr(obj, _MARK, False) is True


def _as_method(value: Any) -> Callable[..., Any]:
    """The original as a function of (self, *args, **kwargs). A plain function already is; anything else in a
    class's dict (a callable object, another library's wrapper) is looked up as Python would on an instance."""
    if type(value) is FunctionType:  # (not isinstance: a wrapt proxy of a function claims to be one)
        return value
    get = getattr(type(value), "__get__", None)
    if get is None:
        return lambda self, *args, **kwargs: value(*args, **kwargs)
    return lambda self, *args, **kwargs: get(value, self, type(self))(*args, **kwargs)


def _wrap(owner: Any, attr: str, factory: Callable[..., Any], method: bool = True) -> None:
    current_value = vars(owner).get(attr, _ABSENT)
    if current_value is _ABSENT or _is_ours(current_value) or not callable(current_value):
        return
    ours = factory(_as_method(current_value) if method else current_value)
    try:
        functools.update_wrapper(ours, current_value)
    except Exception:  # noqa: BLE001 - an original with odd metadata: ours keeps its own, it still wraps
        pass
    setattr(ours, _MARK, True)
    setattr(owner, attr, ours)
    _patched.append((owner, attr, current_value, ours))
    logger.debug("sop_telemetry: patched %s.%s", getattr(owner, "__qualname__", owner), attr)


def _unwrap(owner: Any, attr: str, original: Any, ours: Any) -> None:
    """Puts `original` back only if what is there now is what we installed: if someone patched on top of us,
    removing our layer would also remove theirs."""
    now = vars(owner).get(attr, _ABSENT)
    if now is not ours:
        logger.debug("sop_telemetry: %s.%s was changed by someone else; left as is", owner, attr)
        return
    if original is _ABSENT:
        delattr(owner, attr)
    else:
        setattr(owner, attr, original)


def _subclasses(base: type) -> List[type]:
    seen: List[type] = []
    todo = [base]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        try:
            todo.extend(type.__subclasses__(cls))
        except TypeError:
            pass
    return seen


def _patch_class(cls: type, targets: Dict[str, Callable[..., Any]]) -> None:
    for attr, wrapper in targets.items():
        _wrap(cls, attr, wrapper)


def _install_subclass_hook(base: Type[Any], targets: Dict[str, Callable[..., Any]]) -> None:
    """Patches classes defined after install. Nothing to wrap here (these bases inherit object's no-op
    `__init_subclass__`), so we set one and remember to delete it; a base that defines its own is chained."""
    original = vars(base).get("__init_subclass__", _ABSENT)

    def __init_subclass__(cls: type, **kwargs: Any) -> None:
        if original is not _ABSENT:
            original.__get__(None, cls)(**kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        if _installed:
            with _lock:
                _safe("smolagents.patch_subclass", _patch_class, cls, targets)

    hook: classmethod = classmethod(__init_subclass__)
    base.__init_subclass__ = hook  # type: ignore[assignment]
    _patched.append((base, "__init_subclass__", original, vars(base)["__init_subclass__"]))


def _ensure_model_class(cls: type) -> None:
    """A model class first seen on an agent (a duck-typed model, or a subclass whose hook was bypassed)."""
    if cls in _seen_model_classes:
        return
    with _lock:
        _seen_model_classes.add(cls)
        if not _installed:
            return
        for klass in cls.__mro__:
            if klass is not object:
                _patch_class(klass, _CLASS_TARGETS["Model"])


def _version_ok(version: str) -> bool:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    current_version = tuple(parts + [0] * (2 - len(parts)))
    low, high = SUPPORTED_VERSIONS
    return low <= current_version < high


def install() -> bool:
    """Patches smolagents; returns True if it is (now or already) instrumented. Idempotent and thread-safe."""
    global _installed, _warned_version, _PlanningStep
    with _lock:
        if _installed:
            logger.debug("sop_telemetry: smolagents already instrumented")
            return True
        import smolagents

        version = getattr(smolagents, "__version__", "0")
        if not _version_ok(version):
            if not _warned_version:
                _warned_version = True
                logger.warning(
                    "sop_telemetry: smolagents %s is outside the supported range (>=%d.%d,<%d.%d); "
                    "it is not instrumented", version, *SUPPORTED_VERSIONS[0], *SUPPORTED_VERSIONS[1],
                )
            return False
        from smolagents import agents, local_python_executor, models, tools
        from smolagents.memory import PlanningStep

        _PlanningStep = PlanningStep

        bases = {"Model": models.Model, "Tool": tools.Tool, "MultiStepAgent": agents.MultiStepAgent}
        try:
            for key, base in bases.items():
                for cls in _subclasses(base):
                    _patch_class(cls, _CLASS_TARGETS[key])
                _install_subclass_hook(base, _CLASS_TARGETS[key])
            if callable(getattr(local_python_executor, "timeout", None)):
                _wrap(local_python_executor, "timeout", _timeout_wrapper, method=False)
        except BaseException:
            _undo_all()
            raise
        _installed = True
        logger.debug("sop_telemetry: smolagents %s instrumented (%d attributes)", version, len(_patched))
        return True


def _undo_all() -> None:
    while _patched:
        _unwrap(*_patched.pop())
    _seen_model_classes.clear()


def uninstall() -> None:
    """Restores every patched attribute to the exact original object. Idempotent."""
    global _installed
    with _lock:
        if not _installed:
            logger.debug("sop_telemetry: smolagents not instrumented; nothing to uninstall")
            return
        _installed = False
        _undo_all()


def is_installed() -> bool:
    return _installed


__all__ = ["install", "uninstall", "is_installed", "SUPPORTED_VERSIONS"]

