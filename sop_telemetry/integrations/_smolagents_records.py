"""The records of the smolagents instrumentation, built from the events its wrappers queue.

Usage (what `TelemetryCollector.materialize()` does with each queued event)::

    from sop_telemetry.integrations._smolagents_records import record_tool
    record_tool(collector, frame, tool, "add", 3, start, duration, None, None)   # no error, no previews

The wrappers in `smolagents.py` keep the agent's thread to the minimum: timestamps, the objects they were handed and
the values that change as the run goes on (the step number, the error). Everything else (opening the task, reading
token usage, clipping names, building the record dicts, matching calls to their step, closing the task) happens
here, later, usually on the writer thread after the task has ended. A run's frame gets its task and agent record
when its `begin_run` event is built, which comes before any event of that run. The collector calls these in the
order the events were queued, under its lock and each one under the guard named in its event.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Tuple

from ..collector import Frame, clip, next_id
from ..error_handler import guard
from ..status import CallStatus, TaskStatus

_SUCCESS = CallStatus.SUCCESS.value
_ERROR = CallStatus.ERROR.value
_RUNNING = TaskStatus.RUNNING.value


def attr(obj: Any, name: str) -> Any:
    """`getattr(obj, name, None)` that also survives a property raising something other than AttributeError: the
    objects read here (models, tools, their replies, usage) come from user code, and one odd attribute must cost
    that one value, not the whole record."""
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


def tokens(usage: Any) -> Tuple[Optional[int], Optional[int], Optional[int], bool]:
    """(prompt, completion, total, reported) from a usage object (smolagents' TokenUsage or anything like it)."""
    prompt, completion = int_or_none(attr(usage, "input_tokens")), int_or_none(attr(usage, "output_tokens"))
    if not prompt and not completion:
        # None or zero on both sides: a client's way of saying "no usage" (LiteLLM answers Usage(0, 0, 0)).
        return None, None, None, False
    total = int_or_none(attr(usage, "total_tokens"))
    if total is None:
        total = (prompt or 0) + (completion or 0)
    return prompt, completion, total, True


def error_of(exc: BaseException, limit: int) -> Tuple[str, Optional[str]]:
    """(type name, message cut to `limit`) of an error: what a record keeps of it."""
    return type(exc).__name__, clip(exc, limit)


def model_name(model: Any, model_id: Any) -> str:
    return (clip(model_id, 200) if model_id is not None else None) or type(model).__name__


def start_run(collector: Any, frame: Frame, agent: Any, model: Any, description: Any, start: float) -> None:
    """A run's first event (one queued where there were two: one tuple and one call fewer on the agent's thread):
    its model's credentials, then its agent record. Each guarded apart: either failing must not cost the other, the
    masking least of all."""
    if model is not None:
        guard("smolagents.run", remember_credentials, collector, model)
    begin_run(collector, frame, agent, model, description, start)


def finish_run(collector: Any, frame: Frame, fields: Optional[list], end: float, status: TaskStatus,
               error: Optional[Tuple[str, Optional[str]]]) -> None:
    """A run's last event: its steps (`fields`: see step_fields; None if they could not be read), then its end."""
    if fields is not None:
        guard("smolagents.step", record_steps, collector, frame, fields)
    end_run(collector, frame, end, status, error)


def begin_run(collector: Any, frame: Frame, agent: Any, model: Any, description: Any, start: float) -> None:
    agent_type = type(agent).__name__
    name = attr(agent, "name")
    agent_name = clip(name, collector.max_string_length) if isinstance(name, str) and name else agent_type
    parent = frame.parent
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
        "parent_agent_id": parent_agent["agent_id"] if parent_agent is not None else None,
        "model": model_name(model, attr(model, "model_id")) if model is not None else None,
        "start_time": start,
        "end_time": None,
        "duration": None,
        "status": _RUNNING,
        "error_type": None,
        "error_message": None,
        "steps": 0,
        "max_steps_reached": False,
    }
    frame.task = task
    frame.agent = rec
    collector.add("agents", rec, frame)


def end_run(collector: Any, frame: Frame, end: float, status: TaskStatus,
            error: Optional[Tuple[str, Optional[str]]]) -> None:
    rec = frame.agent
    if rec is None:
        return  # its begin_run failed (counted then): nothing to end
    rec["end_time"] = end
    rec["duration"] = max(0.0, end - rec["start_time"])
    rec["status"] = status.value
    rec["max_steps_reached"] = frame.max_steps
    if error is not None:
        rec["error_type"], rec["error_message"] = error
    if frame.parent is None:
        extra: dict = {"stop_reason": "max_steps"} if frame.max_steps else {}
        if error is not None:
            extra["error_type"], extra["error_message"] = error
        collector.close_task(frame.task, status, end=end, notify=False, **extra)


def _call(frame: Optional[Frame], step_number: Any, start: float, duration: float,
          error: Optional[Tuple[str, Optional[str]]], previews: Optional[tuple], preview_keys: Tuple[str, str]) -> dict:
    """The fields a model call and a tool call share."""
    agent = frame.agent if frame is not None else None
    rec = {
        "call_id": next_id("c"),
        "start_time": start,
        "end_time": start + duration,
        "duration": duration,
        "status": _SUCCESS if error is None else _ERROR,
        "error_type": error[0] if error is not None else None,
        "error_message": error[1] if error is not None else None,
        "agent_name": agent["agent_name"] if agent is not None else None,
        "agent_id": agent["agent_id"] if agent is not None else None,
        "step_number": step_number if step_number.__class__ is int else None,
    }
    if previews is not None:
        rec[preview_keys[0]], rec[preview_keys[1]] = previews
    return rec


def record_llm(collector: Any, frame: Optional[Frame], model: Any, model_id: Any, step_number: Optional[int],
               start: float, duration: float, error: Optional[Tuple[str, Optional[str]]],
               previews: Optional[tuple], usage: Any, streamed: bool) -> None:
    rec = _call(frame, step_number, start, duration, error, previews, ("input_preview", "output_preview"))
    if usage is not None:
        prompt, completion, total, reported = tokens(usage)
    else:
        prompt = completion = total = None
        reported = False
    rec.update(model=model_name(model, model_id), prompt_tokens=prompt, completion_tokens=completion,
               total_tokens=total, tokens_reported=reported, streamed=streamed, purpose=None)
    if collector.add("llm_calls", rec, frame) and frame is not None and frame.agent is not None:
        frame.calls.append(rec)


def record_reply(collector: Any, frame: Frame, model: Any, usage: Any, step_number: Optional[int], t0: float,
                 t1: float) -> None:
    """A model call that returned, with its model's id read now; `t0`, `t1` its perf_counter readings."""
    record_llm(collector, frame, model, attr(model, "model_id"), step_number, t0 + frame.epoch, t1 - t0, None, None,
               usage, False)


def record_result(collector: Any, frame: Frame, tool: Any, usage: None, step_number: Optional[int], t0: float,
                  t1: float) -> None:
    """A tool call that returned, with the tool's name read now (`usage` is always None: the event has the shape
    of a model reply's)."""
    record_tool(collector, frame, tool, attr(tool, "name"), step_number, t0 + frame.epoch, t1 - t0, None, None)


def record_tool(collector: Any, frame: Optional[Frame], tool: Any, name: Any, step_number: Optional[int],
                start: float, duration: float, error: Optional[Tuple[str, Optional[str]]],
                previews: Optional[tuple]) -> None:
    rec = _call(frame, step_number, start, duration, error, previews, ("arguments_preview", "output_preview"))
    rec["tool_name"] = clip(name, collector.max_string_length) if isinstance(name, str) and name \
        else type(tool).__name__
    if collector.add("tools", rec, frame) and frame is not None and frame.agent is not None:
        frame.tools.append(rec)


# -- steps ---------------------------------------------------------------------------------------------------------
# A run's step records are built when it ends, from the agent's memory: smolagents appends every finished planning
# and action step to `agent.memory.steps`, with its timing, number, error and code. Nothing is recorded per step while
# the run goes except what the memory cannot tell (see the integration's steps section): which calls a planning step
# made (it shares its number with the action step after it: `planning_done`, queued when its generator yields it),
# the error a step died of when it is not on the step (AgentGenerationError, an interrupt: `frame.step_errors`), and
# a step whose callback raised, which never reaches the memory (`frame.lost_steps`). Every other call belongs to the
# action step whose number the agent's counter had when the call was made.
def _take(frame: Frame, number: Any) -> Tuple[list, list, dict]:
    """The run's calls and tools no step has taken that were made at step `number`, and its dropped counts."""
    calls = [rec for rec in frame.calls if rec["step_number"] == number]
    tools = [rec for rec in frame.tools if rec["step_number"] == number]
    if calls:
        frame.calls = [rec for rec in frame.calls if rec["step_number"] != number]
    if tools:
        frame.tools = [rec for rec in frame.tools if rec["step_number"] != number]
    return calls, tools, frame.dropped.pop(number, {})


def planning_done(collector: Any, frame: Frame, key: int, number: Any) -> None:
    """A planning step (the id of its object: `key`) was finalized at the agent's step `number`: the run's calls
    made at that number so far are its own (the action step of that number has not begun)."""
    if frame.planning is None:
        frame.planning = {}
    elif key in frame.planning:
        return  # noted again by a subclass's planning step that delegates to smolagents' (both are patched)
    frame.planning[key] = (number if number.__class__ is int else None, *_take(frame, number))


_step_classes: Optional[tuple] = None  # smolagents' (ActionStep, PlanningStep, TaskStep), imported at first use


def step_fields(frame: Frame, steps: list, limit: int) -> list:
    """(kind, start, end, number, is_final_answer, code_action, error, key) of each planning and action step of the
    run that just ended, then of any that never reached the memory. `steps` is the agent's memory, of which the
    run's steps are those after the last TaskStep (`run` appends one at every start, with reset=False too); for a
    streamed run, the memory from the run's first step on, of which they are those before the next TaskStep.
    Runs on the agent's thread when its run ends (the steps hold the whole conversation, which must not wait in the
    queue), so an action step's fields are read at once, and anything unusual by `_odd_step_fields`."""
    global _step_classes
    if _step_classes is None:
        from smolagents.memory import ActionStep, PlanningStep, TaskStep

        _step_classes = (ActionStep, PlanningStep, TaskStep)
    action, planning, task = _step_classes
    first, last = 0, len(steps)
    if frame.memory is not None:
        last = next((index for index, step in enumerate(steps) if isinstance(step, task)), last)
    else:
        for index in range(last - 1, -1, -1):
            if isinstance(steps[index], task):
                first = index + 1
                break
    errors = frame.step_errors
    out: list = []
    append = out.append
    for step in steps[first:last] + (frame.lost_steps or []):
        if step.__class__ is action and errors is None:
            try:
                timing = step.timing
                if step.error is None:
                    append(("action", timing.start_time, timing.end_time, step.step_number, step.is_final_answer,
                            step.code_action, None, None))
                    continue
            except Exception:  # noqa: BLE001 - an odd step: read attribute by attribute below
                pass
        fields = _odd_step_fields(step, action, planning, errors, limit)
        if fields is not None:
            append(fields)
    return out


def _odd_step_fields(step: Any, action: type, planning: type, errors: Optional[dict], limit: int) -> Optional[tuple]:
    """`step_fields` for a planning step, a step with an error, a subclass, or one whose attributes raise."""
    if isinstance(step, planning):
        kind = "planning"
    elif isinstance(step, action):
        kind = "action"
    else:
        return None
    timing = attr(step, "timing")
    error = attr(step, "error")
    if error is not None:
        error = error_of(error, limit)
    elif errors is not None:
        error = errors.get(id(step))
    return (kind, attr(timing, "start_time"), attr(timing, "end_time"), attr(step, "step_number"),
            attr(step, "is_final_answer"), attr(step, "code_action"), error, id(step))


def record_steps(collector: Any, frame: Frame, fields: list) -> None:
    """The step records of a run that ended, from what `step_fields` read of its steps."""
    agent = frame.agent
    if agent is None:
        return  # its begin_run failed (counted then): nothing to add to
    by_number: dict = {}
    for key, records in (("calls", frame.calls), ("tools", frame.tools)):
        for rec in records:
            by_number.setdefault(rec["step_number"], {"calls": [], "tools": []})[key].append(rec)
    planning = frame.planning or {}
    for kind, start, end, number, is_final, code, error, key in fields:
        if kind == "planning":
            number, calls, tools, dropped = planning.pop(key, (None, [], [], {}))
            step_type = "planning"
        else:
            if number.__class__ is not int:
                number = None
            mine = by_number.pop(number, None)
            calls, tools = (mine["calls"], mine["tools"]) if mine is not None else ([], [])
            dropped = frame.dropped.pop(number, {})
            step_type = "final_answer" if error is not None and error[0] == "AgentMaxStepsError" else "action"
            if step_type == "final_answer":
                frame.max_steps = True
        _add_step(collector, frame, agent, step_type, number, start, end, calls, tools, dropped, error, is_final,
                  code)
    # Calls of a step that never finished (a planning step that failed) keep the number they were made at.
    frame.calls, frame.tools = [], []


def _add_step(collector: Any, frame: Frame, agent: dict, step_type: str, number: Optional[int], start: Any, end: Any,
              calls: list, tools: list, dropped: dict, error: Optional[Tuple[str, Optional[str]]], is_final: Any,
              code: Any) -> None:
    prompt, completion = dropped.get("prompt_tokens", 0), dropped.get("completion_tokens", 0)
    for call in calls:
        call["purpose"] = step_type
        call["step_number"] = number
        prompt += call["prompt_tokens"] or 0
        completion += call["completion_tokens"] or 0
    for tool in tools:
        tool["step_number"] = number
    if not isinstance(start, (int, float)):
        start = agent["start_time"]  # a step object without timing (smolagents always sets it): placed at 0 s
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
    collector.add("steps", rec, frame)
    agent["steps"] += 1
    if isinstance(code, str) and code and frame.task is not None:
        metrics = frame.task["code_changes"]
        metrics["code_actions"] += 1
        metrics["code_lines"] += code.count("\n") + 1


_last_credentials: Optional[tuple] = None


def remember_credentials(collector: Any, model: Any) -> None:
    """A model's key (`api_key` or `token` on LiteLLM-style models, in `client_kwargs` on OpenAI, Azure, Bedrock and
    Inference Providers models) is masked in session files: a failed call's error message may quote it. Queued at
    the start of a run, so it has run before the run's records are written or exported. Runs of one agent pass the
    same model with the same key again and again: that case is recognized and skipped."""
    global _last_credentials
    api_key, token, kwargs = attr(model, "api_key"), attr(model, "token"), attr(model, "client_kwargs")
    seen = (id(model), api_key, token, id(kwargs), len(kwargs) if isinstance(kwargs, dict) else 0)
    if seen == _last_credentials:
        return
    from ..environment import looks_secret, remember_secret

    remember_secret(api_key)
    remember_secret(token)
    if isinstance(kwargs, dict):
        for name, value in list(kwargs.items()):
            if isinstance(name, str) and looks_secret(name):
                remember_secret(value)
    _last_credentials = seen
