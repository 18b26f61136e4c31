"""smolagents instrumentation: agent runs, model calls, tool calls and steps, with no change to user code.

Usage::

    import sop_telemetry                       # installs this through a post-import hook
    from sop_telemetry.integrations import smolagents as integration
    integration.uninstall()                    # every patched attribute back to the original object
    integration.install()

What is patched (all through wrapt, all undone by `uninstall()`):
- `run` of MultiStepAgent and of every subclass that defines its own: a top-level run is a task, a run inside
  another run (a managed agent) is an AgentExecution nested under its parent. `run(stream=True)` returns a proxy of
  the generator that ends the task when the generator is exhausted, closed, raises or is dropped.
- `_finalize_step` of MultiStepAgent: called by smolagents at the end of every planning, action and max-steps step
  with the finished memory step, so one hook sees every step's timing and error.
- `generate` / `generate_stream` of Model and of every subclass that defines them, including subclasses created
  later (an `__init_subclass__` hook) and model classes first seen on an agent. A context flag makes a call that
  delegates to another patched method (super().generate, generate_stream -> generate) count once.
- `__call__` of Tool and of every subclass that defines it.
- `local_python_executor.timeout` (smolagents >= 1.24): it runs CodeAgent code on a fresh thread without copying
  the context; the patch runs that code in a copy of the caller's context, so tools and managed agents called from
  code know their task, agent and step.

Every wrapper checks `switch.enabled` first and then calls the original; bookkeeping runs in guards that count and
log errors and never raise. The original's result and exception pass through untouched.
"""

from __future__ import annotations

import functools
import logging
import random
import sys
import threading
import time
from contextvars import ContextVar, copy_context
from types import GeneratorType
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..collector import Frame, clip, current, next_id, switch
from ..error_handler import guard as _safe
from ..manager import TelemetryManager
from ..status import CallStatus, TaskStatus

logger = logging.getLogger("sop_telemetry")

SUPPORTED_VERSIONS = ((1, 23), (1, 27))  # >= 1.23 (copies context into tool threads), < 1.27 (tested up to 1.26)

_in_model: ContextVar[bool] = ContextVar("sop_telemetry_in_model", default=False)
_active_tool: ContextVar[Any] = ContextVar("sop_telemetry_active_tool", default=None)

_lock = threading.RLock()
_installed = False
_warned_version = False
# (owner, attribute, what was in owner.__dict__ before (the original object, or _ABSENT), what we put there)
_patched: List[Tuple[Any, str, Any, Any]] = []
_seen_model_classes: set = set()
_ABSENT = object()
_perf = time.perf_counter
_now = time.time
# The hot path writes these plain strings: an Enum member's `.value` is a descriptor call, ~0.2 µs each time.
_SUCCESS = CallStatus.SUCCESS.value
_RUNNING = TaskStatus.RUNNING.value


# -- guarded bookkeeping -------------------------------------------------------------------------------------------
def _collector() -> Any:
    return TelemetryManager.get_instance().get_collector()


def _attr(obj: Any, name: str) -> Any:
    """`getattr(obj, name, None)` that also survives a property raising something other than AttributeError: the
    objects read here (models, tools, their replies, usage) come from user code, and one odd attribute must cost
    that one value, not the whole record, nor ever an exception outside a guard."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def _model_name(model: Any) -> str:
    model_id = _attr(model, "model_id")
    return (clip(model_id, 200) if model_id is not None else None) or type(model).__name__


def _int_or_none(value: Any) -> Optional[int]:
    if value.__class__ is int:
        return value  # the usual case; bool (an int subclass) is not a count and takes the path below
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - NaN, a str that is not a number, an __int__ that raises
        return None


def _error_fields(rec: dict, exc: Optional[BaseException], limit: int) -> None:
    if exc is not None:
        rec["status"] = CallStatus.ERROR.value
        rec["error_type"] = type(exc).__name__
        rec["error_message"] = clip(exc, limit)


def _step_number(frame: Optional[Frame]) -> Optional[int]:
    if frame is None or frame.owner is None:
        return None
    number = _attr(frame.owner, "step_number")
    return number if isinstance(number, int) else None


def _tokens(usage: Any) -> Tuple[Optional[int], Optional[int], Optional[int], bool]:
    """(prompt, completion, total, reported) from a usage object. One guarded block reads all three attributes (the
    hot path: one call instead of six); an attribute that raises sends it through `_attr` one by one."""
    try:
        prompt, completion = usage.input_tokens, usage.output_tokens
        total = getattr(usage, "total_tokens", None)
    except Exception:  # noqa: BLE001 - AttributeError or a property raising: read each one carefully
        prompt, completion = _attr(usage, "input_tokens"), _attr(usage, "output_tokens")
        total = _attr(usage, "total_tokens")
    if prompt.__class__ is not int:
        prompt = _int_or_none(prompt)
    if completion.__class__ is not int:
        completion = _int_or_none(completion)
    if prompt is None and completion is None:
        return None, None, None, False
    if total.__class__ is not int:
        total = _int_or_none(total)
    if total is None:
        total = (prompt or 0) + (completion or 0)
    return prompt, completion, total, True


# -- model calls ---------------------------------------------------------------------------------------------------
def _record_llm(model: Any, frame: Optional[Frame], start: float, duration: float, usage: Any,
                exc: Optional[BaseException], streamed: bool, content: Any = None) -> None:
    collector = _collector()
    if usage is not None:
        prompt, completion, total, reported = _tokens(usage)
    else:
        prompt = completion = total = None
        reported = False
    agent = frame.agent if frame is not None else None
    rec = {
        "call_id": next_id("c"),
        "model": _model_name(model),
        "start_time": start,
        "end_time": start + duration,
        "duration": duration,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "tokens_reported": reported,
        "status": _SUCCESS,
        "error_type": None,
        "error_message": None,
        "streamed": streamed,
        "purpose": None,
        "agent_name": agent["agent_name"] if agent is not None else None,
        "agent_id": agent["agent_id"] if agent is not None else None,
        "step_number": _step_number(frame),
    }
    if exc is not None:
        _error_fields(rec, exc, collector.max_string_length)
    if collector.capture_content and content is not None:
        # (args, kwargs, reply) of the call, unpacked only here: with capture off the hot path reads nothing.
        args, kwargs, reply = content
        messages = args[0] if args else kwargs.get("messages")
        last = messages[-1] if isinstance(messages, (list, tuple)) and messages else None
        rec["input_preview"] = clip(getattr(last, "content", last), collector.max_string_length)
        rec["output_preview"] = clip(_attr(reply, "content"), collector.max_string_length)
    if collector.add("llm_calls", rec, frame) and agent is not None:
        frame.calls_since_step.append(rec)  # type: ignore[union-attr]


def _wrap_generate(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if not switch.enabled or _in_model.get():
        return wrapped(*args, **kwargs)
    token = _in_model.set(True)
    start = _now()
    t0 = _perf()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe("smolagents.model", _record_llm, instance, current.get(), start, _perf() - t0, None, exc, False)
        raise
    finally:
        _in_model.reset(token)
    _safe("smolagents.model", _record_llm, instance, current.get(), start, _perf() - t0,
          _attr(result, "token_usage"), None, False, (args, kwargs, result))
    return result


class _Usage:
    """Token usage summed over stream deltas: smolagents' deltas carry increments (API models send one final
    delta with the whole usage, local models one per delta), so the sum is what the model reported, once."""

    __slots__ = ("input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None

    def add(self, usage: Any) -> None:
        inp = _int_or_none(_attr(usage, "input_tokens"))
        out = _int_or_none(_attr(usage, "output_tokens"))
        if inp is not None:
            self.input_tokens = (self.input_tokens or 0) + inp
        if out is not None:
            self.output_tokens = (self.output_tokens or 0) + out


def _traced_stream(iterator: Any, model: Any, frame: Optional[Frame], start: float, t0: float) -> Any:
    """A generator over the model's stream that sums usage and records the call once, however the stream ends."""
    usage = _Usage()
    exc: Optional[BaseException] = None
    try:
        while True:
            # Flagged while the model produces a delta, so that a generate_stream built on generate counts once.
            token = _in_model.set(True)
            try:
                delta = next(iterator)
            except StopIteration:
                return
            finally:
                _in_model.reset(token)
            delta_usage = _attr(delta, "token_usage")
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
        reported = usage.input_tokens is not None or usage.output_tokens is not None
        _safe("smolagents.model_stream", _record_llm, model, frame, start, _perf() - t0,
              usage if reported else None, exc, True)


def _wrap_generate_stream(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if not switch.enabled or _in_model.get():
        return wrapped(*args, **kwargs)
    token = _in_model.set(True)
    start = _now()
    t0 = _perf()
    try:
        stream = wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe("smolagents.model_stream", _record_llm, instance, current.get(), start, _perf() - t0, None, exc, True)
        raise
    finally:
        _in_model.reset(token)
    if not hasattr(stream, "__next__"):
        # Not an iterator (a list of deltas, say): count it now and hand back the very same object.
        def count_now() -> None:
            usage = _Usage()
            for delta in stream:
                delta_usage = _attr(delta, "token_usage")
                if delta_usage is not None:
                    usage.add(delta_usage)
            reported = usage.input_tokens is not None or usage.output_tokens is not None
            _record_llm(instance, current.get(), start, _perf() - t0, usage if reported else None, None, True)

        _safe("smolagents.model_stream", count_now)
        return stream
    return _traced_stream(stream, instance, current.get(), start, t0)


# -- tool calls ----------------------------------------------------------------------------------------------------
def _record_tool(tool: Any, start: float, duration: float, exc: Optional[BaseException],
                 content: Any = None) -> None:
    collector = _collector()
    frame = current.get()
    agent = frame.agent if frame is not None else None
    name = _attr(tool, "name")
    rec = {
        "call_id": next_id("c"),
        "tool_name": name if isinstance(name, str) and name else type(tool).__name__,
        "start_time": start,
        "end_time": start + duration,
        "duration": duration,
        "status": _SUCCESS,
        "error_type": None,
        "error_message": None,
        "agent_name": agent["agent_name"] if agent is not None else None,
        "agent_id": agent["agent_id"] if agent is not None else None,
        "step_number": _step_number(frame),
    }
    if exc is not None:
        _error_fields(rec, exc, collector.max_string_length)
    if collector.capture_content and content is not None:
        args, kwargs, result = content
        kwargs = {k: v for k, v in kwargs.items() if k != "sanitize_inputs_outputs"}
        rec["arguments_preview"] = clip(kwargs if not args else (args, kwargs), collector.max_string_length)
        rec["output_preview"] = clip(result, collector.max_string_length)
    if collector.add("tools", rec, frame) and agent is not None:
        frame.tools_since_step.append(rec)  # type: ignore[union-attr]


def _wrap_tool_call(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    # A subclass's __call__ that calls super().__call__ on the same tool is one call, not two.
    if not switch.enabled or _active_tool.get() is instance:
        return wrapped(*args, **kwargs)
    token = _active_tool.set(instance)
    start = _now()
    t0 = _perf()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe("smolagents.tool", _record_tool, instance, start, _perf() - t0, exc)
        raise
    finally:
        _active_tool.reset(token)
    _safe("smolagents.tool", _record_tool, instance, start, _perf() - t0, None, (args, kwargs, result))
    return result


# -- agent runs ----------------------------------------------------------------------------------------------------
def _remember_credentials(model: Any) -> None:
    """A model's key (`api_key` or `token` on LiteLLM-style models, in `client_kwargs` on OpenAI, Azure, Bedrock and
    Inference Providers models) is masked in session files: a failed call's error message may quote it."""
    from ..environment import looks_secret, remember_secret

    for name in ("api_key", "token"):
        remember_secret(_attr(model, name))
    kwargs = _attr(model, "client_kwargs")
    if isinstance(kwargs, dict):
        for name, value in list(kwargs.items()):
            if isinstance(name, str) and looks_secret(name):
                remember_secret(value)


def _begin_run(agent: Any, args: tuple, kwargs: dict, parent: Optional[Frame]) -> Frame:
    collector = _collector()
    model = _attr(agent, "model")
    if model is not None:
        _ensure_model_class(type(model))
        _remember_credentials(model)
    agent_type = type(agent).__name__
    name = _attr(agent, "name")
    agent_name = name if isinstance(name, str) and name else agent_type
    now = _now()
    if parent is None:
        description = args[0] if args else kwargs.get("task", "")
        # Unique, not secret: the Mersenne Twister (reseeded in forked children) costs no system call per run.
        task = collector.open_task(f"{agent_name}-{random.getrandbits(48):012x}", description, start=now)
    else:
        task = parent.task
    rec = {
        "agent_id": next_id("a"),
        "agent_type": agent_type,
        "agent_name": agent_name,
        "parent_agent_id": parent.agent["agent_id"] if parent is not None and parent.agent is not None else None,
        "model": _model_name(model) if model is not None else None,
        "start_time": now,
        "end_time": None,
        "duration": None,
        "status": _RUNNING,
        "error_type": None,
        "error_message": None,
        "steps": 0,
        "max_steps_reached": False,
    }
    frame = Frame(task, rec, owner=agent, parent=parent)
    frame.outer_error = sys.exc_info()[1]
    collector.add("agents", rec, frame)
    return frame


def _end_run(frame: Frame, exc: Optional[BaseException]) -> None:
    collector = _collector()
    now = _now()
    rec = frame.agent
    assert rec is not None
    if exc is None:
        status = TaskStatus.COMPLETED
    elif isinstance(exc, (GeneratorExit, KeyboardInterrupt)):
        status = TaskStatus.CANCELLED
    else:
        status = TaskStatus.FAILED
    rec["end_time"] = now
    rec["duration"] = max(0.0, now - rec["start_time"])
    rec["status"] = status.value
    if exc is not None and not isinstance(exc, GeneratorExit):
        rec["error_type"] = type(exc).__name__
        rec["error_message"] = clip(exc, collector.max_string_length)
    # Calls made after the last finalized step (e.g. a run that failed outside a step) keep their step number.
    frame.calls_since_step = []
    frame.tools_since_step = []
    frame.dropped_since_step = {}
    if frame.parent is None:
        extra = {"stop_reason": "max_steps"} if rec["max_steps_reached"] else {}
        collector.close_task(frame.task, status, error=None if isinstance(exc, GeneratorExit) else exc,
                             end=now, **extra)


def _record_step(frame: Frame, step: Any, unwinding: Optional[BaseException] = None) -> None:
    kind = type(step).__name__
    if kind == "FinalAnswerStep":
        return  # carries only the output; the action step that produced it is already recorded
    collector = _collector()
    agent = frame.agent
    assert agent is not None
    try:
        # One guarded block for the step's attributes (the hot path); a property that raises sends them through
        # `_attr` one by one, so it costs only its own value.
        error = getattr(step, "error", None)
        step_number = getattr(step, "step_number", None)
        timing = getattr(step, "timing", None)
        start = getattr(timing, "start_time", None)
        end = getattr(timing, "end_time", None)
        is_final = getattr(step, "is_final_answer", None)
        code = getattr(step, "code_action", None)
    except Exception:  # noqa: BLE001
        error, step_number, timing = _attr(step, "error"), _attr(step, "step_number"), _attr(step, "timing")
        start, end = _attr(timing, "start_time"), _attr(timing, "end_time")
        is_final, code = _attr(step, "is_final_answer"), _attr(step, "code_action")
    if error is None:
        error = unwinding
    if kind == "PlanningStep":
        step_type, number = "planning", _step_number(frame)
    else:
        number = step_number
        if not isinstance(number, int):
            number = _step_number(frame)
        if error is not None and type(error).__name__ == "AgentMaxStepsError":
            step_type = "final_answer"
            agent["max_steps_reached"] = True
        else:
            step_type = "action"
    calls, frame.calls_since_step = frame.calls_since_step, []
    tools, frame.tools_since_step = frame.tools_since_step, []
    dropped, frame.dropped_since_step = frame.dropped_since_step, {}
    prompt, completion = dropped.get("prompt_tokens", 0), dropped.get("completion_tokens", 0)
    for call in calls:
        call["purpose"] = step_type
        call["step_number"] = number
        prompt += call["prompt_tokens"] or 0
        completion += call["completion_tokens"] or 0
    for tool in tools:
        tool["step_number"] = number
    now = _now()
    start = start if isinstance(start, (int, float)) else now
    end = end if isinstance(end, (int, float)) else now
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
        "error_type": type(error).__name__ if error is not None else None,
        "error_message": clip(error, collector.max_string_length) if error is not None else None,
        "is_final_answer": bool(is_final),
    }
    collector.add("steps", rec, frame)
    agent["steps"] += 1
    if isinstance(code, str) and code:
        metrics = frame.task["code_changes"]
        metrics["code_actions"] += 1
        metrics["code_lines"] += code.count("\n") + 1


def _wrap_finalize_step(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if not switch.enabled:
        return wrapped(*args, **kwargs)
    frame = current.get()
    if frame is None or frame.owner is not instance:
        return wrapped(*args, **kwargs)
    # smolagents finalizes a step in a `finally`: when a step dies of an error it re-raises (a model failure,
    # AgentGenerationError), that error is on its way out, not on the step object, and only sys.exc_info() has it.
    unwinding = sys.exc_info()[1]
    try:
        return wrapped(*args, **kwargs)
    finally:
        step = args[0] if args else kwargs.get("memory_step")
        _safe("smolagents.step", _record_step, frame, step,
              None if unwinding is frame.outer_error else unwinding)


def _traced_run_class() -> type:
    import wrapt

    class _TracedRun(wrapt.ObjectProxy):  # type: ignore[misc]
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
            try:
                self.__wrapped__.close()
            finally:
                current.reset(token)
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
    return _traced_run(gen, frame)


def _wrap_run(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if not switch.enabled:
        return wrapped(*args, **kwargs)
    parent = current.get()
    if parent is not None and parent.owner is instance:
        return wrapped(*args, **kwargs)  # a subclass's run calling super().run: one run
    frame = _safe("smolagents.run", _begin_run, instance, args, kwargs, parent)
    if frame is None:
        return wrapped(*args, **kwargs)
    token = current.set(frame)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        current.reset(token)
        _safe("smolagents.run", _end_run, frame, exc)
        raise
    current.reset(token)
    if isinstance(result, GeneratorType):
        traced = _safe("smolagents.run", _trace_run_stream, result, frame)
        if traced is not None:
            return traced
    _safe("smolagents.run", _end_run, frame, None)
    return result


# -- CodeAgent's executor thread -----------------------------------------------------------------------------------
def _wrap_timeout(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    decorator = wrapped(*args, **kwargs)
    if not switch.enabled:
        return decorator

    def in_caller_context(func: Callable[..., Any]) -> Callable[..., Any]:
        # The context is copied per call, on the calling thread, and travels to the worker as an argument.
        inner = decorator(functools.wraps(func)(lambda ctx, *a, **k: ctx.run(func, *a, **k)))

        @functools.wraps(func)
        def call(*a: Any, **k: Any) -> Any:
            return inner(copy_context(), *a, **k)

        return call

    return in_caller_context


# -- patching ------------------------------------------------------------------------------------------------------
_CLASS_TARGETS: Dict[str, Dict[str, Callable[..., Any]]] = {
    "Model": {"generate": _wrap_generate, "generate_stream": _wrap_generate_stream},
    "Tool": {"__call__": _wrap_tool_call},
    "MultiStepAgent": {"run": _wrap_run, "_finalize_step": _wrap_finalize_step},
}
_OUR_WRAPPERS = {w for targets in _CLASS_TARGETS.values() for w in targets.values()} | {_wrap_timeout}


def _is_ours(obj: Any) -> bool:
    import wrapt

    return isinstance(obj, wrapt.FunctionWrapper) and getattr(obj, "_self_wrapper", None) in _OUR_WRAPPERS


def _wrap(owner: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    import wrapt

    current_value = vars(owner).get(attr, _ABSENT)
    if current_value is _ABSENT or _is_ours(current_value) or not callable(current_value):
        return
    wrapt.wrap_function_wrapper(owner, attr, wrapper)
    _patched.append((owner, attr, current_value, vars(owner)[attr]))
    logger.debug("sop_telemetry: patched %s.%s", getattr(owner, "__qualname__", owner), attr)


def _unwrap(owner: Any, attr: str, original: Any, ours: Any) -> None:
    """Puts `original` back only if what is there now is what we installed: if someone patched on top of us,
    removing our layer would also remove theirs."""
    import wrapt

    now = vars(owner).get(attr, _ABSENT)
    # (wrapt 2's FunctionWrapper derives from its C ObjectProxy, not from `wrapt.ObjectProxy`: check the former.)
    if now is not ours or not (isinstance(now, wrapt.FunctionWrapper) or attr == "__init_subclass__"):
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


def _install_subclass_hook(base: type, targets: Dict[str, Callable[..., Any]]) -> None:
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

    hook = classmethod(__init_subclass__)
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
    global _installed, _warned_version
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

        bases = {"Model": models.Model, "Tool": tools.Tool, "MultiStepAgent": agents.MultiStepAgent}
        try:
            for key, base in bases.items():
                for cls in _subclasses(base):
                    _patch_class(cls, _CLASS_TARGETS[key])
                _install_subclass_hook(base, _CLASS_TARGETS[key])
            if callable(getattr(local_python_executor, "timeout", None)):
                _wrap(local_python_executor, "timeout", _wrap_timeout)
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

