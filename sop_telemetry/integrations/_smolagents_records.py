"""What the smolagents integration turns into records later, where records are built (recorder.defer).

Usage (what `TelemetryCollector.materialize()` does with the events the integration defers)::

    from sop_telemetry.integrations._smolagents_records import record_steps
    record_steps(collector, run, fields)      # the steps of a run that ended, from what step_fields read

Runs, model calls and tool calls go through the recorder API; what is smolagents' own is here: its steps, read from
the agent's memory when a run ends, the calls of a planning step, and its models' credentials. What the integration
remembers of a run lives in `RunState`, on the run handle's `ext`; the core never reads it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from .. import recorder
from ..collector import Frame


class RunState:
    """What a run's memory objects do not tell, noted as the run goes (rarely: made when a run begins, the fields
    when first needed): the calls of each planning step (by the step object's id), the error a step died of (by
    id), steps that never reached the memory (a step callback raised), a streamed run's (memory list, index of its
    first step), and the exception the caller was handling when the run began (code may run an agent inside an
    `except`: sys.exc_info() shows it everywhere below, so it must not be taken for an error of this run)."""

    __slots__ = ("planning", "step_errors", "lost_steps", "memory", "outer_error")

    def __init__(self, outer_error: Optional[BaseException]) -> None:
        self.planning: Optional[dict] = None
        self.step_errors: Optional[dict] = None
        self.lost_steps: Optional[List[Any]] = None
        self.memory: Optional[Tuple[List[Any], int]] = None
        self.outer_error = outer_error
# -- steps ---------------------------------------------------------------------------------------------------------
# A run's step records are built when it ends, from the agent's memory: smolagents appends every finished planning
# and action step to `agent.memory.steps`, with its timing, number, error and code. Nothing is recorded per step while
# the run goes except what the memory cannot tell (see the integration's steps section): which calls a planning step
# made (it shares its number with the action step after it: `planning_done`, deferred when its generator yields
# it), the error a step died of when it is not on the step (AgentGenerationError, an interrupt: `step_errors`), and
# a step whose callback raised, which never reaches the memory (`lost_steps`). Every other call belongs to the
# action step whose number the agent's counter had when the call was made.
def planning_done(collector: Any, frame: Frame, key: int, number: Any) -> None:
    """A planning step (the id of its object: `key`) was finalized at the agent's step `number`: the run's calls
    made at that number so far are its own (the action step of that number has not begun)."""
    state = frame.ext
    if state.planning is None:
        state.planning = {}
    elif key in state.planning:
        return  # noted again by a subclass's planning step that delegates to smolagents' (both are patched)
    state.planning[key] = (number if number.__class__ is int else None, *recorder.take_calls(frame, number))


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
    state = frame.ext
    first, last = 0, len(steps)
    if state.memory is not None:
        last = next((index for index, step in enumerate(steps) if isinstance(step, task)), last)
    else:
        for index in range(last - 1, -1, -1):
            if isinstance(steps[index], task):
                first = index + 1
                break
    errors = state.step_errors
    out: List[tuple] = []
    append = out.append
    for step in steps[first:last] + (state.lost_steps or []):
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
    timing = recorder.attr(step, "timing")
    error = recorder.attr(step, "error")
    if error is not None:
        error = recorder.error_of(error, limit)
    elif errors is not None:
        error = errors.get(id(step))
    attr = recorder.attr
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
    planning = frame.ext.planning or {}
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
                frame.stop_reason = "max_steps"
        recorder.add_step(collector, frame, step_type, number, start, end, calls, tools, dropped, error, is_final,
                          code)
    # Calls of a step that never finished (a planning step that failed) keep the number they were made at.
    frame.calls, frame.tools = [], []


_last_credentials: Optional[tuple] = None


def remember_credentials(collector: Any, frame: Optional[Frame], model: Any) -> None:
    """A model's key (`api_key` or `token` on LiteLLM-style models, in `client_kwargs` on OpenAI, Azure, Bedrock and
    Inference Providers models) is masked in session files: a failed call's error message may quote it. Queued at
    the start of a run, so it has run before the run's records are written or exported. Runs of one agent pass the
    same model with the same key again and again: that case is recognized and skipped."""
    global _last_credentials
    attr = recorder.attr
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
