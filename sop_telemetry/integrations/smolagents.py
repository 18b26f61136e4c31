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

Each patch is a plain function closing over the original, made and undone by the shared `patching.Patcher` (restored
by identity), not a `wrapt.FunctionWrapper`, which builds a bound wrapper object at every attribute access
(docs/design.md, "Patch shapes"); wrapt is what proxies the generator of `run(stream=True)`. docs/integrations.md
(the worked example) has this session's measurements.

Every wrapper checks `switch.enabled` first and then calls the original. What it records goes through the recorder
API (`sop_telemetry.recorder`), which queues it: records are built later, off the agent's thread. Runs, model calls
and tool calls are the recorder's; what is smolagents' own (its steps, read from the agent's memory when a run
ends; the calls of planning steps; its models' credentials) is deferred to `_smolagents_records`. The bookkeeping is
guarded (counted, logged once, never raised); the original's result and exception pass through untouched.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextvars import copy_context
from types import GeneratorType
from typing import Any, Callable, Dict, Optional, Tuple

from .. import recorder
from ..collector import Clock, Frame, clip, current, switch
from ..error_handler import guard as _safe
from ..error_handler import report as _failed
from ..registry import Integration
from . import _smolagents_records as records
from .patching import Patcher, is_ours, subclasses

logger = logging.getLogger("sop_telemetry")


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

_installed = False
_patches = Patcher("smolagents")
_lock = _patches.lock
_seen_model_classes: set = set()
_model_returned, _tool_returned = recorder.model_returned, recorder.tool_returned


# -- what is read on the agent's thread ----------------------------------------------------------------------------
# Each model and tool wrapper records one call. For a model reply or a tool result (what an agent does dozens of
# times a run) the wrapper uses the recorder's fast form (model_returned / tool_returned: one tuple queued), reading
# only what cannot wait; anything unusual (no run, content capture, a reply with no `token_usage`, a model with no
# string id, an error) goes to the general path (`_record_llm` / `_record_tool`: recorder.model_call / tool_call).
# Steps record nothing as they go (see the steps section); a run defers its steps once, when it ends.
def _model_name(model: Any) -> str:
    try:
        model_id = model.model_id
    except Exception:  # noqa: BLE001 - duck-typed models may have none (read as the type's name)
        model_id = None
    return (clip(model_id, 200) if model_id is not None else None) or type(model).__name__


def _step_of(frame: Optional[Frame]) -> Optional[int]:
    """The agent's step counter now: it moves on as the run goes, and it tells which step a call was in."""
    try:
        return frame.owner.step_number  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - no frame, no agent, or a user's agent class that makes this anything
        return None


# -- model calls ---------------------------------------------------------------------------------------------------
def _record_llm(model: Any, frame: Optional[Frame], t0: float, t1: float, usage: Any, exc: Optional[BaseException],
                streamed: bool, content: Any = None) -> None:
    """The general path for a model call: errors, streams, content capture, no run."""
    try:
        previews: Tuple[Any, Any] = (None, None)
        if content is not None and recorder.capturing():
            previews = _llm_previews(content)
        recorder.model_call(_model_name(model), usage, t0, t1, run=frame, streamed=streamed, error=exc,
                            step=_step_of(frame), input=previews[0], output=previews[1])
    except Exception as error:  # noqa: BLE001 - this is the guard
        _failed("smolagents.model", error)


def _llm_previews(content: Any) -> Tuple[Any, Any]:
    # (args, kwargs, reply) of the call, read only with capture on, and at once (the messages are the agent's).
    args, kwargs, reply = content
    messages = args[0] if args else kwargs.get("messages")
    last = messages[-1] if isinstance(messages, (list, tuple)) and messages else None
    return getattr(last, "content", last), recorder.attr(reply, "content")


def _generate_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    enabled, per_thread, perf, frame_var, returned = switch, _per_thread, Clock.perf, current, _model_returned

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not enabled.enabled:
            return original(self, *args, **kwargs)
        model_call = per_thread.model_call
        if model_call.busy:
            return original(self, *args, **kwargs)
        model_call.busy = True
        t0 = perf()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _llm_failed(self, t0, exc)
            raise
        finally:
            model_call.busy = False
        t1 = perf()
        try:
            frame = frame_var.get()
            model_id = self.model_id
            # (The usage is taken now, not the reply kept: it holds the content and the raw response.)
            if model_id.__class__ is str and model_id and returned(
                    frame, model_id, result.token_usage, frame.owner.step_number, t0, t1):  # type: ignore[union-attr]
                return result
        except Exception:  # noqa: BLE001 - no run, an odd model, reply or agent: the general path
            pass
        _llm_returned(self, t0, t1, result, args, kwargs)
        return result

    return generate


def _llm_returned(model: Any, t0: float, t1: float, result: Any, args: tuple, kwargs: dict) -> None:
    _record_llm(model, current.get(), t0, t1, _usage_of(result), None, False, (args, kwargs, result))


def _llm_failed(model: Any, t0: float, exc: BaseException) -> None:
    _record_llm(model, current.get(), t0, Clock.perf(), None, exc, False)


def _usage_of(result: Any) -> Any:
    try:
        return result.token_usage
    except Exception:  # noqa: BLE001 - a reply without usage (or whose property raises): not reported
        return None


class _Usage:
    """Token usage summed over stream deltas: smolagents' deltas carry increments (API models send one final
    delta with the whole usage, local models one per delta), so the sum is what the model reported, once."""

    __slots__ = ("input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None

    def add(self, usage: Any) -> None:
        inp = recorder.int_or_none(recorder.attr(usage, "input_tokens"))
        out = recorder.int_or_none(recorder.attr(usage, "output_tokens"))
        if inp is not None:
            self.input_tokens = (self.input_tokens or 0) + inp
        if out is not None:
            self.output_tokens = (self.output_tokens or 0) + out

    def add_delta(self, delta: Any) -> None:
        usage = recorder.attr(delta, "token_usage")
        if usage is not None:
            self.add(usage)

    def reported(self) -> Optional["_Usage"]:
        return self if self.input_tokens is not None or self.output_tokens is not None else None


def _traced_stream(iterator: Any, model: Any, frame: Optional[Frame], t0: float) -> Any:
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
            _safe("smolagents.model_stream", usage.add_delta, delta)
            yield delta
    except BaseException as error:
        exc = error
        if isinstance(error, GeneratorExit):
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        raise
    finally:
        _record_llm(model, frame, t0, Clock.perf(), usage.reported(), exc, True)


def _generate_stream_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def generate_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not switch.enabled:
            return original(self, *args, **kwargs)
        model_call = _per_thread.model_call
        if model_call.busy:
            return original(self, *args, **kwargs)
        model_call.busy = True
        t0 = Clock.perf()
        try:
            stream = original(self, *args, **kwargs)
        except BaseException as exc:
            _record_llm(self, current.get(), t0, Clock.perf(), None, exc, True)
            raise
        finally:
            model_call.busy = False
        if not hasattr(stream, "__next__"):
            # Not an iterator (a list of deltas, say): count it now and hand back the very same object.
            def count_now() -> None:
                usage = _Usage()
                for delta in stream:
                    usage.add_delta(delta)
                _record_llm(self, current.get(), t0, Clock.perf(), usage.reported(), None, True)

            _safe("smolagents.model_stream", count_now)
            return stream
        return _traced_stream(stream, self, current.get(), t0)

    return generate_stream


# -- tool calls ----------------------------------------------------------------------------------------------------
def _record_tool(tool: Any, frame: Optional[Frame], t0: float, t1: float, exc: Optional[BaseException],
                 content: Any = None) -> None:
    """The general path for a tool call: errors, content capture, no run, an odd name."""
    try:
        try:
            name = tool.name
        except Exception:  # noqa: BLE001 - odd tools may have none (read as the type's name)
            name = None
        if not isinstance(name, str) or not name:
            name = type(tool).__name__
        previews: Tuple[Any, Any] = (None, None)
        if content is not None and recorder.capturing():
            args, kwargs, result = content
            kwargs = {k: v for k, v in kwargs.items() if k != "sanitize_inputs_outputs"}
            previews = (kwargs if not args else (args, kwargs), result)
        recorder.tool_call(name, t0, t1, run=frame, error=exc, step=_step_of(frame), arguments=previews[0],
                           output=previews[1])
    except Exception as error:  # noqa: BLE001 - this is the guard
        _failed("smolagents.tool", error)


def _tool_call_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    enabled, perf, frame_var, returned = switch, Clock.perf, current, _tool_returned  # (closure cells)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not enabled.enabled:
            return original(self, *args, **kwargs)
        # A subclass's __call__ that calls super().__call__ is one call, not two: the wrapper Python looks up on the
        # tool's class records it, and ours further up the chain pass it through. (A type check, not a context
        # flag: no state to set and reset per call.)
        outer = type(self).__call__
        if outer is not __call__ and is_ours(outer):
            return original(self, *args, **kwargs)
        t0 = perf()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _record_tool(self, current.get(), t0, perf(), exc)
            raise
        t1 = perf()
        try:
            frame = frame_var.get()
            name = self.name
            if name.__class__ is str and name and returned(
                    frame, name, frame.owner.step_number, t0, t1):  # type: ignore[union-attr]
                return result
        except Exception:  # no run, an odd tool or agent: the general path (see generate)
            pass
        _record_tool(self, current.get(), t0, t1, None, (args, kwargs, result))
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
        recorder.defer(frame, "smolagents.step", records.planning_done, id(step), number)
    except Exception as exc:  # noqa: BLE001 - this is the guard
        _failed("smolagents.step", exc)


def _note_failure(frame: Frame, exc: BaseException) -> None:
    """What a failing run's exception tells of its steps, read off its traceback and those of the errors it was
    raised while handling. smolagents finalizes a step in a `finally`: an error a step dies of that it re-raises
    (a model failure as AgentGenerationError, an interrupt) passed through the agent's `_step_stream` for that step,
    and is not stored on the step; an error raised in `_finalize_step` (a step callback) kept that step out of the
    memory. Both frames are this agent's (`self`), and their first argument is the step."""
    agent, state, limit = frame.owner, frame.ext, frame.collector.max_string_length  # type: ignore[union-attr]
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
                        if state.lost_steps is None:
                            state.lost_steps = []
                        if not any(lost is step for lost in state.lost_steps):
                            state.lost_steps.append(step)
                    elif error is not state.outer_error:
                        _step_died_of(frame, step, recorder.error_of(error, limit))
            tb = tb.tb_next
        error = error.__context__


# -- agent runs ----------------------------------------------------------------------------------------------------
def _begin_run(agent: Any, args: tuple, kwargs: dict, parent: Optional[Frame]) -> Frame:
    try:
        model = agent.model
    except Exception:  # noqa: BLE001 - an agent class without one
        model = None
    if model is not None and type(model) not in _seen_model_classes:
        _ensure_model_class(type(model))  # before the model is called: its class may need patching
    try:
        name = agent.name
    except Exception:  # noqa: BLE001 - an agent class without one (named after its type)
        name = None
    frame = recorder.begin_run("smolagents", type(agent).__name__, name if isinstance(name, str) else None,
                               task=args[0] if args else kwargs.get("task", ""),
                               model=_model_name(model) if model is not None else None, parent=parent, owner=agent)
    if frame is not recorder.DISABLED:
        frame.ext = records.RunState(_in_flight())
        if model is not None:
            # Masked from the run's start: a failed call's error message may quote the model's key. (Guarded
            # apart, inline: the run has begun, and must be ended whatever happens here.)
            try:
                recorder.defer(frame, "smolagents.run", records.remember_credentials, model)
            except Exception as error:  # noqa: BLE001 - the guard
                _failed("smolagents.run", error)
    return frame


def _end_run(frame: Frame, exc: Optional[BaseException]) -> None:
    if exc is not None and exc.__traceback__ is not None:
        _safe("smolagents.step", _note_failure, frame, exc)
    fields = _step_fields(frame, frame.collector)
    if fields is not None:
        recorder.defer(frame, "smolagents.step", records.record_steps, fields)
    recorder.end_run(frame, error=exc)


def _step_fields(frame: Frame, collector: Any) -> Optional[list]:
    """The run's steps, read from the agent's memory now: they hold the whole conversation, which the memory lets
    go of at the agent's next run and which must not wait in the queue until the writer runs. None if they could
    not be read (counted; the run's end is queued all the same)."""
    try:
        try:
            if frame.ext.memory is None:
                steps = frame.owner.memory.steps
            else:
                memory, first = frame.ext.memory  # a streamed run: see _trace_run_stream
                steps = memory[first:]
        except Exception:  # noqa: BLE001 - an agent class without smolagents' memory
            steps = []
        return records.step_fields(frame, steps, collector.max_string_length)
    except Exception as exc:  # noqa: BLE001 - this is the guard
        _failed("smolagents.step", exc)
        return None


def _closed_in(frame: Frame, steps: list) -> None:
    error = recorder.error_of(GeneratorExit(), frame.collector.max_string_length)  # type: ignore[union-attr]
    for step in steps:
        _step_died_of(frame, step, error)


def _step_died_of(frame: Frame, step: Any, error: Optional[Tuple[str, Optional[str]]]) -> None:
    """Notes the error a step died of, for its record (see records.step_fields); the first one noted stands."""
    state = frame.ext
    if state.step_errors is None:
        state.step_errors = {}
    state.step_errors.setdefault(id(step), error)


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
            memory = self._self_frame.ext.memory  # (the list this run appends its steps to: see _trace_run_stream)
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
        frame.ext.memory = (steps, len(steps))
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
            frame = recorder.DISABLED
        if frame is recorder.DISABLED:
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


def _patch_class(cls: type, targets: Dict[str, Callable[..., Any]]) -> None:
    for attr, wrapper in targets.items():
        _patches.wrap(cls, attr, wrapper)


def _patch_subclass(targets: Dict[str, Callable[..., Any]]) -> Callable[[type], None]:
    def on_subclass(cls: type) -> None:
        if _installed:
            _patch_class(cls, targets)

    return on_subclass


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


class SmolagentsIntegration(Integration):
    name = "smolagents"
    module = "smolagents"
    supported = ">=1.23,<1.27"  # >= 1.23 copies the context into tool threads; tested up to 1.26
    patches = _patches  # what is patched now (benchmarks take parts out to time them)

    def setup(self) -> None:
        global _installed, _PlanningStep
        from smolagents import agents, local_python_executor, models, tools
        from smolagents.memory import PlanningStep

        _PlanningStep = PlanningStep
        bases = {"Model": models.Model, "Tool": tools.Tool, "MultiStepAgent": agents.MultiStepAgent}
        with _lock:
            try:
                for key, base in bases.items():
                    for cls in subclasses(base):
                        _patch_class(cls, _CLASS_TARGETS[key])
                    _patches.hook_subclasses(base, _patch_subclass(_CLASS_TARGETS[key]))
                if callable(getattr(local_python_executor, "timeout", None)):
                    _patches.wrap(local_python_executor, "timeout", _timeout_wrapper, method=False)
            except BaseException:
                _undo_all()
                raise
            _installed = True

    def teardown(self) -> None:
        global _installed
        with _lock:
            _installed = False
            _undo_all()


def _undo_all() -> None:
    _patches.undo()
    _seen_model_classes.clear()


integration = SmolagentsIntegration()
install = integration.install
uninstall = integration.uninstall
is_installed = integration.is_installed


__all__ = ["integration", "install", "uninstall", "is_installed"]

