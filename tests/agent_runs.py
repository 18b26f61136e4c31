"""Agent runs for the reliability tests, and the comparison of their outcomes with and without telemetry.

Usage::

    baseline = uninstrumented(lambda: SCENARIOS["code"]())     # telemetry uninstalled for the run
    faulted = SCENARIOS["code"]()                              # telemetry active (and, say, a fault injected)
    assert_same_outcome(baseline, faulted)

A scenario returns an `Outcome`: what the run returned (normalized: timings and tool-call ids vary from run to run),
or what it raised, plus the exception objects the scenario itself created, so that a test can check the caller got
the very object the model or callback raised.
"""

from __future__ import annotations

import itertools
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import fakes
from fakes import ScriptedModel, StreamingScriptedModel, add, call, code_reply, explode
from smolagents import CodeAgent, Tool, ToolCallingAgent
from smolagents.models import ChatMessageStreamDelta
from smolagents.monitoring import TokenUsage

from sop_telemetry.integrations import smolagents as integration

_CALL_ID = re.compile(r"call_\d+")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


@dataclass
class Outcome:
    value: Any = None
    error: Optional[BaseException] = None
    is_generator: Optional[bool] = None
    planted: Dict[str, BaseException] = field(default_factory=dict)

    def describe(self) -> Any:
        if self.error is not None:
            return ("raised", type(self.error), _text(self.error), type(self.error.__cause__), self.value)
        return ("returned", self.value, self.is_generator)


def _text(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # noqa: BLE001 - an odd object: describe what we can
        text = f"<{type(obj).__name__} repr raised {type(exc).__name__}>"
    return _ADDRESS.sub("", _CALL_ID.sub("call_N", text))


def normalize(item: Any) -> Any:
    """A run's result or a streamed item, without what differs from run to run (timings, call ids, addresses)."""
    as_dict = getattr(item, "dict", None)
    if callable(as_dict):
        try:
            data = as_dict()
        except Exception:  # noqa: BLE001
            data = None
        if isinstance(data, dict):
            data.pop("timing", None)
            return type(item).__name__, _text(data)
    return type(item).__name__, _text(item)


def capture(run: Callable[[Dict[str, BaseException]], Any], stream: bool = False) -> Outcome:
    """Runs `run(planted)` with fresh tool-call ids; a stream is consumed to the end, item by item."""
    fakes._ids = itertools.count(1)
    outcome = Outcome()
    try:
        value = run(outcome.planted)
        if stream:
            outcome.is_generator = isinstance(value, types.GeneratorType)
            outcome.value = []
            for item in value:
                outcome.value.append(normalize(item))
        else:
            outcome.value = normalize(value)
    except BaseException as exc:  # noqa: BLE001 - the outcome under test
        outcome.error = exc
    return outcome


def uninstrumented(scenario: Callable[[], Outcome]) -> Outcome:
    """The scenario with smolagents exactly as shipped: telemetry uninstalled for the run, installed again after."""
    integration.uninstall()
    try:
        return scenario()
    finally:
        integration.install()


def assert_same_outcome(baseline: Outcome, observed: Outcome) -> None:
    assert observed.describe() == baseline.describe()
    if baseline.error is None:
        return
    # The caller catches the very object that was raised: the planted one itself, or, for errors smolagents wraps,
    # a wrapper whose cause is the planted object.
    for name, planted in observed.planted.items():
        if name == "raised":
            assert observed.error is planted
        elif name == "cause":
            assert observed.error.__cause__ is planted


# -- the scenarios ---------------------------------------------------------------------------------------------------
def _tool_calling(planted: Dict[str, BaseException]) -> Any:
    model = ScriptedModel([
        call("explode", reason="first try"),  # a failing tool: recorded as an error step, the run goes on
        [call("add", a=1, b=2), call("add", a=3, b=4)],  # parallel calls in one reply
        call("final_answer", answer="10"),
    ])
    agent = ToolCallingAgent(tools=[add, explode], model=model, verbosity_level=0)
    return agent.run("add some numbers")


def _code(planted: Dict[str, BaseException]) -> Any:
    model = ScriptedModel([code_reply("x = add(1, 2)\nprint(x)"), code_reply("final_answer(add(x, 4))")])
    agent = CodeAgent(tools=[add], model=model, verbosity_level=0)
    return agent.run("compute with code")


def _stream(planted: Dict[str, BaseException]) -> Any:
    model = StreamingScriptedModel(
        ["1. Add the numbers.\n2. Answer.\n<end_plan>", code_reply("y = add(2, 3)\nprint(y)"),
         code_reply("final_answer(y)")],
        per_delta_usage=True,
    )
    agent = CodeAgent(tools=[add], model=model, verbosity_level=0, stream_outputs=True, planning_interval=2)
    return agent.run("stream it", stream=True)


def _failing_model(planted: Dict[str, BaseException]) -> Any:
    planted["cause"] = RuntimeError("model is down")
    model = ScriptedModel([call("add", a=1, b=1), planted["cause"]])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    return agent.run("fail in the second step")


def _failing_callback(planted: Dict[str, BaseException]) -> Any:
    planted["raised"] = LookupError("callback refused the step")

    def refuse(step: Any, agent: Any = None) -> None:
        raise planted["raised"]

    model = ScriptedModel([code_reply("final_answer(1)")])
    agent = CodeAgent(tools=[], model=model, verbosity_level=0, step_callbacks=[refuse])
    return agent.run("a step callback raises")


class _Raiser(Tool):
    name = "raiser"
    description = "Raises the exception it was given."
    inputs: Dict[str, Any] = {}
    output_type = "string"

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def forward(self) -> str:
        raise self.error


class _BreaksMidStream(StreamingScriptedModel):
    def generate_stream(self, messages: Any, **kwargs: Any) -> Any:
        yield ChatMessageStreamDelta(content="half", token_usage=TokenUsage(input_tokens=3, output_tokens=1))
        raise self.error


def _direct_calls(planted: Dict[str, BaseException]) -> Any:
    """Models and tools called directly, outside any agent: what they raise reaches the caller as the same object."""
    seen: List[Any] = [add(a=1, b=2), ScriptedModel(["plain"]).generate([]).content]
    for name, error, call_it in [
        ("model", RuntimeError("model raised"), lambda e: ScriptedModel([e]).generate([])),
        ("stream", ValueError("stream broke"), lambda e: [d.content for d in _stream_model(e).generate_stream([])]),
        ("tool", KeyError("tool raised"), lambda e: _Raiser(e)()),
    ]:
        try:
            call_it(error)
        except BaseException as caught:  # noqa: BLE001 - the object itself is what is checked
            seen.append((name, caught is error))
    return seen


def _stream_model(error: BaseException) -> StreamingScriptedModel:
    model = _BreaksMidStream([])
    model.error = error
    return model


SCENARIOS: Dict[str, Callable[[], Outcome]] = {
    "tool_calling": lambda: capture(_tool_calling),
    "code": lambda: capture(_code),
    "stream": lambda: capture(_stream, stream=True),
    "failing_model": lambda: capture(_failing_model),
    "failing_callback": lambda: capture(_failing_callback),
    "direct_calls": lambda: capture(_direct_calls),
}

__all__: List[str] = ["Outcome", "SCENARIOS", "assert_same_outcome", "capture", "normalize", "uninstrumented"]
