"""The pydantic-ai integration, end to end: real agents, FunctionModel scripts reporting known usage, the session file
on disk."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
from fakes import written_session
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.exceptions import UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import DeltaToolCall, FunctionModel, FunctionStreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.toolsets import AbstractToolset
from pydantic_ai.usage import RequestUsage, UsageLimits

from sop_telemetry import recorder, registry
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.integrations import pydantic_ai as integration
from sop_telemetry.integrations.patching import is_ours


# -- scripted models ------------------------------------------------------------------------------------------------
def usage(input_tokens: int, output_tokens: int) -> RequestUsage:
    return RequestUsage(input_tokens=input_tokens, output_tokens=output_tokens)


def calls(*parts: tuple) -> List[ToolCallPart]:
    return [ToolCallPart(name, args) for name, args in parts]


class Script:
    """A FunctionModel function answering the n-th request of each run with the n-th reply; a reply is a list of
    parts or an exception to raise. `usages` is what each reply reports."""

    def __init__(self, replies: Sequence[Any], usages: Sequence[RequestUsage]) -> None:
        self.replies, self.usages = list(replies), list(usages)

    def __call__(self, messages: list, info: Any) -> ModelResponse:
        n = sum(1 for message in messages if message.kind == "response")
        reply = self.replies[n]
        if isinstance(reply, BaseException):
            raise reply
        parts = [TextPart(reply)] if isinstance(reply, str) else reply
        return ModelResponse(parts=parts, usage=self.usages[n])


def scripted(replies: Sequence[Any], usages: Sequence[RequestUsage], name: str = "model-a") -> FunctionModel:
    return FunctionModel(Script(replies, usages), model_name=name)


class _ReportingStream(FunctionStreamedResponse):
    async def _get_event_iterator(self) -> Any:
        async for event in super()._get_event_iterator():
            yield event
        self._usage = self.reported  # a provider's last chunk: the usage it reports replaces the running estimate


class StreamingModel(FunctionModel):
    """FunctionModel whose streamed replies report `usages` at their end, as a provider's final chunk does (the
    plain stream function can only estimate)."""

    def __init__(self, stream_function: Any, usages: Sequence[RequestUsage], name: str) -> None:
        super().__init__(stream_function=stream_function, model_name=name)
        self.usages = list(usages)

    @asynccontextmanager
    async def request_stream(self, *args: Any, **kwargs: Any) -> Any:
        async with super().request_stream(*args, **kwargs) as stream:
            stream.__class__ = _ReportingStream
            stream.reported = self.usages.pop(0)
            yield stream


async def stream_add_then_text(messages: list, info: Any) -> Any:
    if sum(1 for message in messages if message.kind == "response") == 0:
        yield {0: DeltaToolCall(name="add", json_args='{"a": 1, "b": 2}')}
    else:
        for chunk in ("the sum ", "is ", "3"):
            yield chunk


def add(a: int, b: int) -> int:
    return a + b


# -- reading the file -----------------------------------------------------------------------------------------------
def tasks(session: dict) -> List[dict]:
    return [task for task in session["tasks"] if not task["implicit"]]


def only_task(session: dict) -> dict:
    (task,) = tasks(session)
    return task


def figures(task: dict, kind: str = "llm_calls") -> List[tuple]:
    if kind == "llm_calls":
        return [(c["model"], c["prompt_tokens"], c["completion_tokens"], c["step_number"], c["status"])
                for c in task["llm_calls"]]
    return [(t["tool_name"], t["step_number"], t["status"], t["error_type"], t["retry_requested"])
            for t in task["tools"]]


def steps(task: dict) -> List[tuple]:
    return [(s["step_number"], s["llm_calls"], s["tool_calls"], s["prompt_tokens"], s["completion_tokens"])
            for s in task["steps"]]


def totals(task: dict) -> tuple:
    return task["token_usage"]["prompt_tokens"], task["token_usage"]["completion_tokens"]


# -- what gets recorded ---------------------------------------------------------------------------------------------
def test_tools_over_several_requests(manager):
    model = scripted(
        [calls(("add", {"a": 1, "b": 2})), calls(("add", {"a": 3, "b": 4})), "7"],
        [usage(120, 12), usage(130, 13), usage(140, 14)],
    )
    agent = Agent(model, name="calculator", tools=[add])
    result = agent.run_sync("add twice")
    assert result.output == "7"

    session = written_session(manager)
    task = only_task(session)
    assert task["status"] == "completed" and task["error_type"] is None
    assert figures(task) == [("model-a", 120, 12, 1, "success"), ("model-a", 130, 13, 2, "success"),
                             ("model-a", 140, 14, 3, "success")]
    assert [c["streamed"] for c in task["llm_calls"]] == [False] * 3
    assert figures(task, "tools") == [("add", 1, "success", None, False), ("add", 2, "success", None, False)]
    assert steps(task) == [(1, 1, 1, 120, 12), (2, 1, 1, 130, 13), (3, 1, 0, 140, 14)]
    assert totals(task) == (390, 39) == (result.usage.input_tokens, result.usage.output_tokens)
    assert session["total_tokens"]["total_tokens"] == 429
    assert session["total_tokens"]["model_breakdown"]["model-a"]["completion_tokens"] == 39
    (agent_rec,) = task["agents"]
    assert (agent_rec["agent_name"], agent_rec["agent_type"], agent_rec["framework"], agent_rec["model"],
            agent_rec["steps"], agent_rec["status"]) == ("calculator", "Agent", "pydantic_ai", "model-a", 3,
                                                         "completed")
    assert all(r["agent_id"] == agent_rec["agent_id"] for r in task["llm_calls"] + task["tools"] + task["steps"])
    for record in task["llm_calls"] + task["tools"] + task["steps"]:
        assert record["duration"] >= 0 and record["start_time"] <= record["end_time"]
    # (A call's end is stored as its start plus its duration: equal times may differ in the last digit.)
    step_end, tool_end = (datetime.fromisoformat(r["end_time"].replace("Z", "+00:00"))  # (3.10 takes no "Z")
                          for r in (task["steps"][0], task["tools"][0]))
    assert step_end >= tool_end - timedelta(microseconds=1)


def test_parallel_tool_calls_in_one_response(manager):
    arrived: List[str] = []
    everyone = asyncio.Event()

    async def wait_for_all(name: str) -> str:
        arrived.append(name)  # the three calls overlap: each waits until all three have started
        if len(arrived) == 3:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 10)
        return name

    model = scripted([calls(("wait_for_all", {"name": "a"}), ("wait_for_all", {"name": "b"}),
                            ("wait_for_all", {"name": "c"})), "abc"], [usage(50, 9), usage(60, 2)])
    agent = Agent(model, tools=[wait_for_all])
    assert asyncio.run(agent.run("go")).output == "abc"

    task = only_task(written_session(manager))
    assert figures(task, "tools") == [("wait_for_all", 1, "success", None, False)] * 3
    assert steps(task) == [(1, 1, 3, 50, 9), (2, 1, 0, 60, 2)]


def test_model_retry_is_a_tool_call_that_asked_for_a_retry_not_an_error_of_the_run(manager):
    attempts = []

    def lookup(key: str) -> str:
        attempts.append(key)
        if key != "right":
            raise ModelRetry("no such key, try 'right'")
        return "found"

    model = scripted([calls(("lookup", {"key": "wrong"})), calls(("lookup", {"key": "right"})), "found"],
                     [usage(10, 1), usage(20, 2), usage(30, 3)])
    agent = Agent(model, tools=[lookup])
    assert agent.run_sync("find").output == "found"

    task = only_task(written_session(manager))
    assert task["status"] == "completed"
    assert figures(task, "tools") == [("lookup", 1, "error", "ModelRetry", True), ("lookup", 2, "success", None, False)]
    assert task["tools"][0]["error_message"] == "no such key, try 'right'"
    assert totals(task) == (60, 6)


def test_a_tool_that_raises_fails_the_call_and_the_task_with_the_same_exception(manager):
    boom = ValueError("disk on fire")

    def explode() -> str:
        raise boom

    agent = Agent(scripted([calls(("explode", {}))], [usage(10, 4)]), tools=[explode])
    with pytest.raises(ValueError) as raised:
        agent.run_sync("go")
    assert raised.value is boom

    task = only_task(written_session(manager))
    assert figures(task, "tools") == [("explode", 1, "error", "ValueError", False)]
    assert figures(task) == [("model-a", 10, 4, 1, "success")]  # the model did its part
    assert (task["status"], task["error_type"], task["error_message"]) == ("failed", "ValueError", "disk on fire")
    assert task["steps"][0]["error_type"] == "ValueError"
    assert task["agents"][0]["status"] == "failed"


def test_streaming_records_the_usage_each_streamed_response_reported(manager):
    model = StreamingModel(stream_add_then_text, [usage(11, 4), usage(21, 6)], name="streamer")

    async def run() -> tuple:
        agent = Agent(model, tools=[add])
        async with agent.run_stream("add") as stream:
            chunks = [chunk async for chunk in stream.stream_text(delta=True)]
        return chunks, stream.usage

    chunks, run_usage = asyncio.run(run())
    assert "".join(chunks) == "the sum is 3"

    task = only_task(written_session(manager))
    assert task["status"] == "completed"
    assert figures(task) == [("streamer", 11, 4, 1, "success"), ("streamer", 21, 6, 2, "success")]
    assert [c["streamed"] for c in task["llm_calls"]] == [True, True]
    assert totals(task) == (32, 10) == (run_usage.input_tokens, run_usage.output_tokens)
    assert steps(task) == [(1, 1, 1, 11, 4), (2, 1, 0, 21, 6)]


def test_run_stream_events_and_iter_are_tasks_too(manager):
    async def run() -> None:
        agent = Agent(StreamingModel(stream_add_then_text, [usage(1, 2), usage(3, 4)], "events"), tools=[add])
        async with agent.run_stream_events("add") as events:
            assert [event async for event in events]
        driven = Agent(scripted([calls(("add", {"a": 1, "b": 1})), "2"], [usage(5, 6), usage(7, 8)], "iter"),
                       tools=[add])
        async with driven.iter("add") as agent_run:
            async for _node in agent_run:
                pass
        assert agent_run.result.output == "2"

    asyncio.run(run())
    first, second = tasks(written_session(manager))
    assert figures(first) == [("events", 1, 2, 1, "success"), ("events", 3, 4, 2, "success")]
    assert figures(second) == [("iter", 5, 6, 1, "success"), ("iter", 7, 8, 2, "success")]
    assert first["status"] == second["status"] == "completed"


def test_an_iter_left_before_the_run_ends_is_cancelled(manager):
    async def run() -> None:
        agent = Agent(scripted([calls(("add", {"a": 1, "b": 1})), "2"], [usage(5, 6), usage(7, 8)]), tools=[add])
        async with agent.iter("add") as agent_run:
            async for _node in agent_run:
                break

    asyncio.run(run())
    task = only_task(written_session(manager))
    assert task["status"] == "cancelled" and task["error_type"] is None


def test_delegation_between_two_agents_on_different_models_is_one_task(manager):
    researcher = Agent(scripted([calls(("add", {"a": 2, "b": 2})), "four"], [usage(7, 3), usage(8, 1)],
                                name="model-b"), name="researcher", tools=[add])

    async def research(question: str) -> str:
        return (await researcher.run(question)).output

    boss = Agent(scripted([calls(("research", {"question": "2+2?"})), "it is four"], [usage(100, 10), usage(200, 20)],
                          name="model-a"), name="boss", tools=[research])
    assert boss.run_sync("ask").output == "it is four"

    task = only_task(written_session(manager))
    boss_rec, researcher_rec = task["agents"]
    assert (boss_rec["agent_name"], boss_rec["parent_agent_id"], boss_rec["model"]) == ("boss", None, "model-a")
    assert (researcher_rec["agent_name"], researcher_rec["parent_agent_id"], researcher_rec["model"]) == (
        "researcher", boss_rec["agent_id"], "model-b")
    mine = {rec["agent_id"]: [] for rec in task["agents"]}
    for call in task["llm_calls"]:
        mine[call["agent_id"]].append((call["model"], call["prompt_tokens"], call["completion_tokens"],
                                       call["step_number"]))
    assert mine[boss_rec["agent_id"]] == [("model-a", 100, 10, 1), ("model-a", 200, 20, 2)]
    assert mine[researcher_rec["agent_id"]] == [("model-b", 7, 3, 1), ("model-b", 8, 1, 2)]
    assert sorted((t["tool_name"], t["agent_name"]) for t in task["tools"]) == [("add", "researcher"),
                                                                                 ("research", "boss")]
    assert totals(task) == (315, 34)
    assert task["token_usage"]["model_breakdown"]["model-b"]["prompt_tokens"] == 15
    assert [s["agent_name"] for s in task["steps"]].count("researcher") == 2


def test_concurrent_runs_in_one_event_loop_keep_their_own_records(manager):
    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(0)  # let the other run go on in between
        return a + b

    def agent(name: str, base: int) -> Agent:
        return Agent(scripted([calls(("slow_add", {"a": 1, "b": 2})), "3"], [usage(base, 1), usage(base + 1, 2)],
                              name=name), name=name, tools=[slow_add])

    async def both() -> list:
        return await asyncio.gather(agent("left", 100).run("a"), agent("right", 200).run("b"))

    assert [r.output for r in asyncio.run(both())] == ["3", "3"]
    by_agent = {task["agents"][0]["agent_name"]: task for task in tasks(written_session(manager))}
    assert figures(by_agent["left"]) == [("left", 100, 1, 1, "success"), ("left", 101, 2, 2, "success")]
    assert figures(by_agent["right"]) == [("right", 200, 1, 1, "success"), ("right", 201, 2, 2, "success")]
    for task in by_agent.values():
        assert len(task["agents"]) == 1 and len(task["tools"]) == 1
        assert {r["agent_id"] for r in task["llm_calls"] + task["tools"]} == {task["agents"][0]["agent_id"]}


def test_a_model_that_raises_fails_the_call_and_the_task_and_the_next_run_is_its_own(manager):
    outage = ConnectionError("provider down")
    agent = Agent(scripted([calls(("add", {"a": 1, "b": 2})), outage], [usage(10, 2)]), tools=[add])
    with pytest.raises(ConnectionError) as raised:
        agent.run_sync("go")
    assert raised.value is outage
    healthy = Agent(scripted(["fine"], [usage(3, 1)], name="model-c"))
    assert healthy.run_sync("again").output == "fine"

    failed, ok = tasks(written_session(manager))
    assert figures(failed) == [("model-a", 10, 2, 1, "success"), ("model-a", None, None, 2, "error")]
    bad_call = failed["llm_calls"][1]
    assert (bad_call["error_type"], bad_call["error_message"], bad_call["tokens_reported"]) == (
        "ConnectionError", "provider down", False)
    assert (failed["status"], failed["error_type"]) == ("failed", "ConnectionError")
    assert totals(failed) == (10, 2) and failed["token_usage"]["unreported_calls"] == 1
    assert (ok["status"], figures(ok)) == ("completed", [("model-c", 3, 1, 1, "success")])


def test_a_usage_limit_fails_the_call_that_crossed_it_and_keeps_its_tokens(manager):
    agent = Agent(scripted([calls(("add", {"a": 1, "b": 2})), "3"], [usage(10, 50), usage(10, 50)]), tools=[add])
    with pytest.raises(UsageLimitExceeded):
        agent.run_sync("go", usage_limits=UsageLimits(output_tokens_limit=80))

    task = only_task(written_session(manager))
    assert figures(task) == [("model-a", 10, 50, 1, "success"), ("model-a", 10, 50, 2, "error")]
    assert task["llm_calls"][1]["error_type"] == "UsageLimitExceeded"
    assert (task["status"], task["error_type"]) == ("failed", "UsageLimitExceeded")
    assert totals(task) == (20, 100)


def test_a_request_limit_refusing_the_next_request_fails_the_task_not_the_answered_call(manager):
    agent = Agent(scripted([calls(("add", {"a": 1, "b": 2})), "3"], [usage(10, 5), usage(10, 5)]), tools=[add])
    with pytest.raises(UsageLimitExceeded):
        agent.run_sync("go", usage_limits=UsageLimits(request_limit=1))

    task = only_task(written_session(manager))
    assert figures(task) == [("model-a", 10, 5, 1, "success")]  # the second request was never sent
    assert figures(task, "tools") == [("add", 1, "success", None, False)]
    assert (task["status"], task["error_type"]) == ("failed", "UsageLimitExceeded")


def test_output_validator_retries_are_model_requests_and_running_out_fails_the_last(manager):
    model = scripted(["bad", "still bad", "worse"], [usage(5, 1), usage(6, 2), usage(7, 3)])
    agent = Agent(model, retries={"output": 1})

    @agent.output_validator
    def must_be_good(output: str) -> str:
        raise ModelRetry("say 'good'")

    with pytest.raises(UnexpectedModelBehavior):
        agent.run_sync("go")
    task = only_task(written_session(manager))
    assert figures(task) == [("model-a", 5, 1, 1, "success"), ("model-a", 6, 2, 2, "error")]
    assert task["llm_calls"][1]["error_type"] == "UnexpectedModelBehavior"
    assert (task["status"], task["error_type"]) == ("failed", "UnexpectedModelBehavior")
    assert task["tools"] == []


def test_a_response_without_usage_is_not_reported_rather_than_zero(manager):
    agent = Agent(scripted(["hi"], [RequestUsage(unmeasured_requests=1)]))
    agent.run_sync("go")
    task = only_task(written_session(manager))
    (call,) = task["llm_calls"]
    assert (call["tokens_reported"], call["prompt_tokens"], call["completion_tokens"]) == (False, None, None)
    assert task["token_usage"]["unreported_calls"] == 1 and totals(task) == (0, 0)


def test_cached_and_reasoning_tokens_are_kept_within_the_totals(manager):
    reply = RequestUsage(input_tokens=100, output_tokens=40, cache_read_tokens=60, output_reasoning_tokens=30)
    Agent(scripted(["hi"], [reply])).run_sync("go")
    (call,) = only_task(written_session(manager))["llm_calls"]
    assert (call["prompt_tokens"], call["completion_tokens"], call["total_tokens"], call["cached_tokens"],
            call["reasoning_tokens"]) == (100, 40, 140, 60, 30)


def test_a_wrapper_model_does_not_count_its_request_twice_and_fallback_attempts_count_each(manager):
    class Logging(WrapperModel):
        pass

    down = FunctionModel(Script([RuntimeError("first model down")], []), model_name="primary")
    fallback = FallbackModel(down, scripted(["ok"], [usage(9, 1)], name="backup"), fallback_on=(RuntimeError,))
    agent = Agent(Logging(fallback))
    assert agent.run_sync("go").output == "ok"
    task = only_task(written_session(manager))
    assert figures(task) == [("primary", None, None, 1, "error"), ("backup", 9, 1, 1, "success")]
    assert steps(task) == [(1, 2, 0, 9, 1)]


def test_the_output_tool_is_not_a_tool_call(manager):
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    model = scripted([calls(("add", {"a": 1, "b": 2})), calls(("final_result", {"value": 3}))],
                     [usage(4, 4), usage(5, 5)])
    assert Agent(model, tools=[add], output_type=Answer).run_sync("go").output == Answer(value=3)
    task = only_task(written_session(manager))
    assert figures(task, "tools") == [("add", 1, "success", None, False)]
    assert len(task["llm_calls"]) == 2


def test_content_is_not_recorded_by_default(manager, storage_dir):
    model = scripted([calls(("add", {"a": 123456, "b": 654321})), "seven hundred and seventy seven"],
                     [usage(1, 1), usage(1, 1)])
    Agent(model, tools=[add]).run_sync("a very secret question")
    text = Path(manager.flush_data()).read_text()
    for content in ("a very secret question", "123456", "654321", "seven hundred"):
        assert content not in text
    task = only_task(json.loads(text))
    assert task["description"] == ""
    assert all(c["input_preview"] is None and c["output_preview"] is None for c in task["llm_calls"])
    assert all(t["arguments_preview"] is None for t in task["tools"])


def test_with_content_capture_prompts_arguments_and_outputs_are_kept(manager):
    manager.initialize({"capture_content": True})
    model = scripted([calls(("add", {"a": 20, "b": 22})), "forty-two"], [usage(1, 1), usage(2, 2)])
    Agent(model, tools=[add]).run_sync("what is 20 + 22")
    task = only_task(written_session(manager))
    assert task["description"] == "what is 20 + 22"
    first, second = task["llm_calls"]
    assert first["input_preview"] == "what is 20 + 22" and second["output_preview"] == "forty-two"
    (tool,) = task["tools"]
    assert (tool["arguments_preview"], tool["output_preview"]) == ("{'a': 20, 'b': 22}", "42")
    assert totals(task) == (3, 3)


# -- living with the user's own instrumentation ---------------------------------------------------------------------
@pytest.fixture
def user_tracing():
    """The user's own OpenTelemetry setup through pydantic-ai's global default (as Logfire does), in memory."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from pydantic_ai.models.instrumented import InstrumentationSettings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield lambda: Agent.instrument_all(InstrumentationSettings(tracer_provider=provider)), exporter
    Agent.instrument_all(False)


@pytest.mark.parametrize("order", ["user-first", "user-after-install"])
def test_instrument_all_keeps_working_and_both_record(manager, user_tracing, order):
    instrument, exporter = user_tracing
    if order == "user-first":
        integration.uninstall()
        instrument()
        integration.install()
    else:
        instrument()
    model = scripted([calls(("add", {"a": 1, "b": 2})), "3"], [usage(40, 4), usage(50, 5)])
    assert Agent(model, name="traced", tools=[add]).run_sync("go").output == "3"

    names = [span.name for span in exporter.get_finished_spans()]
    assert "invoke_agent traced" in names and names.count("chat model-a") == 2
    assert any(name.startswith("execute_tool add") for name in names)
    task = only_task(written_session(manager))
    assert figures(task) == [("model-a", 40, 4, 1, "success"), ("model-a", 50, 5, 2, "success")]
    assert figures(task, "tools") == [("add", 1, "success", None, False)]


# -- never change the result ----------------------------------------------------------------------------------------
def _outcome() -> tuple:
    """A streamed run's chunks and a plain run's output, messages and usage."""
    async def run() -> tuple:
        streamer = Agent(StreamingModel(stream_add_then_text, [usage(11, 4), usage(21, 6)], "s"), tools=[add])
        async with streamer.run_stream("add") as stream:
            # Undebounced: grouping chunks by time would make them depend on the machine's load.
            chunks = [chunk async for chunk in stream.stream_text(delta=True, debounce_by=None)]
        plain = Agent(scripted([calls(("add", {"a": 1, "b": 2})), "3"], [usage(40, 4), usage(50, 5)]), tools=[add])
        result = await plain.run("go")
        parts = [[(type(p).__name__, getattr(p, "content", None), getattr(p, "args", None)) for p in m.parts]
                 for m in result.all_messages()]
        return chunks, result.output, parts, result.usage

    return asyncio.run(run())


def test_results_are_the_same_enabled_disabled_uninstalled_and_broken(manager, monkeypatch):
    enabled = _outcome()
    manager.disable_telemetry()
    disabled = _outcome()
    manager.enable_telemetry()
    integration.uninstall()
    try:
        plain = _outcome()
    finally:
        integration.install()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("telemetry bug")

    monkeypatch.setattr(recorder, "_queue", broken)  # every recording fails inside the guard
    errors_before = get_error_handler().get_error_summary()
    failing = _outcome()
    assert enabled == disabled == plain == failing
    assert get_error_handler().get_error_summary() != errors_before  # the bug was counted, not raised


def test_the_usage_object_is_the_models_own(manager):
    reported = usage(12, 3)
    result = Agent(scripted(["hi"], [reported])).run_sync("go")
    (response,) = [m for m in result.all_messages() if m.kind == "response"]
    assert response.usage is reported


# -- the contract ---------------------------------------------------------------------------------------------------
def _patched() -> Dict[tuple, Any]:
    found = {}
    for base, attrs in ((Model, ("request", "request_stream")), (AbstractToolset, ("call_tool",))):
        for cls in [base, *base.__subclasses__()]:
            for attr in attrs:
                value = vars(cls).get(attr)
                if value is not None:
                    found[(cls, attr)] = value
    found[(Agent, "iter")] = vars(Agent)["iter"]
    return found


def test_uninstall_restores_the_originals_and_install_twice_patches_once(manager):
    patched = _patched()
    assert all(is_ours(value) for value in patched.values())
    assert integration.install() is True  # a second install: nothing more is wrapped
    assert not any(is_ours(getattr(value, "__wrapped__", None)) for value in patched.values())
    integration.uninstall()
    try:
        restored = _patched()
        assert all(not is_ours(value) for value in restored.values())
        assert all(restored[key] is patched[key].__wrapped__ for key in patched)
        integration.uninstall()  # idempotent
        Agent(scripted(["hi"], [usage(1, 1)])).run_sync("go")
        assert manager.flush_data() is None  # nothing recorded: nothing written
    finally:
        integration.install()
    assert _patched().keys() == patched.keys() and all(is_ours(v) for v in _patched().values())


def test_model_and_toolset_classes_defined_later_are_patched(manager):
    class Later(FunctionModel):
        async def request(self, *args: Any, **kwargs: Any) -> ModelResponse:
            return await super().request(*args, **kwargs)

    assert is_ours(vars(Later)["request"])
    Agent(Later(Script(["hi"], [usage(2, 2)]), model_name="later")).run_sync("go")
    assert figures(only_task(written_session(manager))) == [("later", 2, 2, 1, "success")]  # counted once


def test_the_registry_lists_it_with_its_version():
    assert registry.active()["pydantic_ai"] == __import__("pydantic_ai").__version__
    assert integration.integration.supported == ">=2.0,<3"


def test_an_unsupported_version_is_skipped_with_one_warning(caplog, monkeypatch):
    integration.uninstall()
    try:
        monkeypatch.setattr(integration.integration, "version", lambda: "1.107.0")
        assert integration.install() is False and integration.install() is False
        assert not is_ours(vars(Agent)["iter"])
        warnings = [r for r in caplog.records if "outside the supported range" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        monkeypatch.undo()
        integration.install()


@pytest.mark.parametrize("first", ["sop_telemetry", "pydantic_ai"])
def test_a_program_with_only_the_import_added_writes_its_session(tmp_path, first):
    imports = ["import sop_telemetry\n", "from pydantic_ai import Agent\n"]
    if first == "pydantic_ai":
        imports.reverse()
    program = (
        "".join(imports) +
        "from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart\n"
        "from pydantic_ai.models.function import FunctionModel\n"
        "from pydantic_ai.usage import RequestUsage\n"
        "def reply(messages, info):\n"
        "    if len(messages) == 1:\n"
        "        return ModelResponse(parts=[ToolCallPart('add', {'a': 2, 'b': 3})],"
        " usage=RequestUsage(input_tokens=31, output_tokens=7))\n"
        "    return ModelResponse(parts=[TextPart('5')], usage=RequestUsage(input_tokens=45, output_tokens=2))\n"
        "agent = Agent(FunctionModel(reply, model_name='scripted'))\n"
        "@agent.tool_plain\n"
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "print(agent.run_sync('add').output)\n"
    )
    env = {"SOP_TELEMETRY_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "5", result.stderr
    (path,) = tmp_path.glob("**/*.json")
    task = only_task(json.loads(path.read_text()))
    assert figures(task) == [("scripted", 31, 7, 1, "success"), ("scripted", 45, 2, 2, "success")]
    assert task["agents"][0]["agent_name"] == "agent"  # the name pydantic-ai inferred
    for command in (["--json", "report"], ["show", "latest"], ["export", "latest", "--format", "text"]):
        shown = subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(tmp_path), *command],
                               capture_output=True, text=True, env=env, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "scripted" in shown.stdout, (command, shown.stdout)
