"""The smolagents integration, end to end: real agents, scripted models, the session file on disk."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, List

import pytest
from fakes import (
    ScriptedModel,
    SlowEcho,
    StreamingScriptedModel,
    add,
    call,
    code_reply,
    explode,
    uninstalled,
    written_session,
)
from smolagents import CodeAgent, ToolCallingAgent
from smolagents.agents import MultiStepAgent
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.monitoring import TokenUsage
from smolagents.tools import Tool

from sop_telemetry.collector import TelemetryCollector
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.integrations import smolagents as integration
from sop_telemetry.integrations.patching import is_ours


@pytest.fixture
def uninstrumented():
    """Runs the body with the integration uninstalled, then installs it again."""
    return uninstalled(integration)


def only_task(session: dict) -> dict:
    tasks = [t for t in session["tasks"] if not t["implicit"]]
    assert len(tasks) == 1, [t["task_id"] for t in tasks]
    return tasks[0]


def tokens(task: dict) -> tuple:
    return task["token_usage"]["prompt_tokens"], task["token_usage"]["completion_tokens"]


# -- what gets recorded -------------------------------------------------------------------------------------------
def test_tool_calling_agent_with_several_tools(manager):
    model = ScriptedModel(
        [call("add", a=1, b=2), call("slow_echo", text="hi"), call("final_answer", answer="3")],
        usage_by_index={0: (120, 12), 1: (130, 13), 2: (140, 14)},
    )
    agent = ToolCallingAgent(tools=[add, SlowEcho()], model=model, verbosity_level=0)
    assert agent.run("add 1 and 2") == "3"

    session = written_session(manager)
    task = only_task(session)
    assert task["status"] == "completed"
    assert task["description"] == "add 1 and 2"
    assert [c["prompt_tokens"] for c in task["llm_calls"]] == [120, 130, 140]
    assert [c["completion_tokens"] for c in task["llm_calls"]] == [12, 13, 14]
    assert [c["model"] for c in task["llm_calls"]] == ["scripted-model"] * 3
    assert [c["purpose"] for c in task["llm_calls"]] == ["action"] * 3
    assert [(t["tool_name"], t["step_number"], t["status"]) for t in task["tools"]] == [
        ("add", 1, "success"), ("slow_echo", 2, "success"), ("final_answer", 3, "success")]
    assert tokens(task) == (390, 39)
    assert session["total_tokens"]["total_tokens"] == 429
    assert session["total_tokens"]["model_breakdown"]["scripted-model"]["prompt_tokens"] == 390
    assert [(s["step_type"], s["step_number"], s["prompt_tokens"]) for s in task["steps"]] == [
        ("action", 1, 120), ("action", 2, 130), ("action", 3, 140)]
    assert task["steps"][-1]["is_final_answer"] is True
    (agent_rec,) = task["agents"]
    assert agent_rec["agent_type"] == "ToolCallingAgent" and agent_rec["steps"] == 3
    assert all(c["agent_id"] == agent_rec["agent_id"] for c in task["llm_calls"] + task["tools"])
    assert (model.reported_totals) == (390, 39)


def test_code_agent_calls_tool_from_code(manager):
    model = ScriptedModel([code_reply("x = add(a=2, b=3)\ny = add(a=x, b=1)\nfinal_answer(y)")], usage=(300, 30))
    agent = CodeAgent(tools=[add], model=model, verbosity_level=0)
    assert agent.run("sum") == 6

    task = only_task(written_session(manager))
    (agent_rec,) = task["agents"]
    assert [(t["tool_name"], t["agent_id"], t["step_number"]) for t in task["tools"]] == [
        ("add", agent_rec["agent_id"], 1), ("add", agent_rec["agent_id"], 1),
        ("final_answer", agent_rec["agent_id"], 1)]
    assert tokens(task) == (300, 30)
    assert task["code_changes"]["code_actions"] == 1
    assert task["code_changes"]["code_lines"] == 3


def test_parallel_tool_calls_in_one_reply_know_their_agent_and_step(manager):
    barrier = threading.Barrier(3)  # the three calls must overlap: they really run on worker threads
    model = ScriptedModel([
        [call("slow_echo", text="a"), call("slow_echo", text="b"), call("slow_echo", text="c")],
        call("final_answer", answer="abc"),
    ])
    agent = ToolCallingAgent(tools=[SlowEcho(barrier)], model=model, verbosity_level=0, max_tool_threads=3)
    assert agent.run("echo") == "abc"

    task = only_task(written_session(manager))
    echoes = [t for t in task["tools"] if t["tool_name"] == "slow_echo"]
    assert len(echoes) == 3
    assert {(t["agent_name"], t["step_number"]) for t in echoes} == {("ToolCallingAgent", 1)}
    assert task["steps"][0]["tool_calls"] == 3


def test_failing_tool_is_recorded_and_the_run_goes_on(manager):
    model = ScriptedModel([call("explode", reason="boom"), call("final_answer", answer="recovered")])
    agent = ToolCallingAgent(tools=[explode], model=model, verbosity_level=0)
    assert agent.run("try") == "recovered"

    task = only_task(written_session(manager))
    failed = task["tools"][0]
    assert (failed["tool_name"], failed["status"], failed["error_type"]) == ("explode", "error", "ValueError")
    assert "exploded: boom" in failed["error_message"]
    assert task["steps"][0]["error_type"] == "AgentToolExecutionError"
    assert task["status"] == "completed"


def test_model_failure_ends_the_task_and_the_next_run_is_separate(manager):
    model = ScriptedModel([RuntimeError("provider down"), call("final_answer", answer="ok")])
    agent = ToolCallingAgent(tools=[], model=model, verbosity_level=0)
    with pytest.raises(Exception) as info:
        agent.run("first")
    assert "provider down" in str(info.value)
    assert agent.run("second") == "ok"

    session = written_session(manager)
    first, second = session["tasks"]
    assert (first["description"], first["status"], first["error_type"]) == ("first", "failed", type(info.value).__name__)
    assert first["llm_calls"][0]["status"] == "error"
    assert first["llm_calls"][0]["error_type"] == "RuntimeError"
    assert first["llm_calls"][0]["tokens_reported"] is False
    assert (second["description"], second["status"]) == ("second", "completed")
    assert len(second["agents"]) == 1 and second["agents"][0]["parent_agent_id"] is None
    assert tokens(second) == (100, 10)
    # The step that died of the model's error says so (smolagents re-raises it instead of storing it on the step).
    assert [(st["step_type"], st["error_type"]) for st in first["steps"]] == [("action", type(info.value).__name__)]
    assert [st["error_type"] for st in second["steps"]] == [None]


def test_a_run_inside_an_except_block_does_not_take_the_handled_error_for_its_own(manager):
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    try:
        raise LookupError("the caller's own, already handled")
    except LookupError:
        assert agent.run("recover") == "3"
    task = only_task(written_session(manager))
    assert task["status"] == "completed"
    assert [st["error_type"] for st in task["steps"]] == [None, None]


def test_managed_agent_is_nested_with_its_own_calls(manager):
    sub_model = ScriptedModel([call("add", a=1, b=1), call("final_answer", answer="2")], usage=(10, 1),
                              model_id="sub-model")
    sub = ToolCallingAgent(tools=[add], model=sub_model, name="calculator", description="does sums",
                           verbosity_level=0)
    boss_model = ScriptedModel([call("calculator", task="1+1"), call("final_answer", answer="2")],
                               usage=(200, 20), model_id="boss-model")
    boss = ToolCallingAgent(tools=[], model=boss_model, managed_agents=[sub], verbosity_level=0)
    assert boss.run("delegate") == "2"

    session = written_session(manager)
    task = only_task(session)
    boss_rec, sub_rec = task["agents"]
    assert boss_rec["parent_agent_id"] is None
    assert (sub_rec["agent_name"], sub_rec["parent_agent_id"]) == ("calculator", boss_rec["agent_id"])
    by_agent = {}
    for c in task["llm_calls"]:
        by_agent.setdefault(c["agent_name"], []).append((c["model"], c["prompt_tokens"]))
    assert by_agent == {"ToolCallingAgent": [("boss-model", 200), ("boss-model", 200)],
                        "calculator": [("sub-model", 10), ("sub-model", 10)]}
    assert [(t["tool_name"], t["agent_name"]) for t in task["tools"]] == [
        ("add", "calculator"), ("final_answer", "calculator"), ("final_answer", "ToolCallingAgent")]
    assert tokens(task) == (420, 42)
    breakdown = session["total_tokens"]["model_breakdown"]
    assert breakdown["sub-model"]["total_tokens"] == 22 and breakdown["boss-model"]["total_tokens"] == 440


def test_managed_agent_called_from_code_agent_code(manager):
    sub_model = ScriptedModel([call("final_answer", answer="sub done")], usage=(7, 3))
    sub = ToolCallingAgent(tools=[], model=sub_model, name="helper", description="helps", verbosity_level=0)
    boss_model = ScriptedModel([code_reply('r = helper(task="go")\nfinal_answer(r)')], usage=(50, 5))
    boss = CodeAgent(tools=[], model=boss_model, managed_agents=[sub], verbosity_level=0)
    boss.run("delegate from code")

    task = only_task(written_session(manager))
    boss_rec, sub_rec = task["agents"]
    assert sub_rec["parent_agent_id"] == boss_rec["agent_id"]
    assert [c["agent_name"] for c in task["llm_calls"]] == ["CodeAgent", "helper"]
    assert tokens(task) == (57, 8)


def test_planning_calls_are_counted(manager):
    model = ScriptedModel(
        ["Plan: add then answer", call("add", a=1, b=2), "Updated plan", call("final_answer", answer="3")],
        usage_by_index={0: (500, 50), 1: (100, 10), 2: (600, 60), 3: (100, 10)},
    )
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, planning_interval=1)
    assert agent.run("plan it") == "3"

    task = only_task(written_session(manager))
    assert [(c["purpose"], c["step_number"], c["prompt_tokens"]) for c in task["llm_calls"]] == [
        ("planning", 1, 500), ("action", 1, 100), ("planning", 2, 600), ("action", 2, 100)]
    assert [s["step_type"] for s in task["steps"]] == ["planning", "action", "planning", "action"]
    assert tokens(task) == (1300, 130)


def test_a_callback_on_the_final_answer_step_that_raises_fails_the_run_and_keeps_its_steps(manager):
    from smolagents.memory import FinalAnswerStep, PlanningStep

    seen = []

    def refuse(step, agent):
        raise LookupError("no final answer today")

    model = ScriptedModel(["Plan: add", call("add", a=1, b=2), call("final_answer", answer="3")],
                          usage_by_index={0: (50, 5), 1: (100, 10), 2: (110, 11)})
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, planning_interval=5,
                             step_callbacks={FinalAnswerStep: refuse, PlanningStep: lambda step: seen.append(step)})
    with pytest.raises(LookupError, match="no final answer today"):
        agent.run("refused")

    task = only_task(written_session(manager))
    assert (task["status"], task["error_type"]) == ("failed", "LookupError")
    assert [(s["step_type"], s["step_number"], s["prompt_tokens"], s["error_type"]) for s in task["steps"]] == [
        ("planning", 1, 50, None), ("action", 1, 100, None), ("action", 2, 110, None)]
    assert task["steps"][-1]["is_final_answer"] is True
    assert len(seen) == 1 and tokens(task) == (260, 26)


def test_a_run_with_reset_false_records_only_its_own_steps(manager):
    # smolagents keeps the first run's steps in the memory: the second run's task must not take them again.
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3"),
                           call("add", a=3, b=4), call("add", a=7, b=1), call("final_answer", answer="8")],
                          usage_by_index={0: (10, 1), 1: (20, 2), 2: (30, 3), 3: (40, 4), 4: (50, 5)})
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    assert agent.run("first") == "3"
    assert agent.run("go on", reset=False) == "8"

    first, second = [t for t in written_session(manager)["tasks"] if not t["implicit"]]
    assert [(s["step_number"], s["prompt_tokens"]) for s in first["steps"]] == [(1, 10), (2, 20)]
    assert [(s["step_number"], s["prompt_tokens"], s["tool_calls"]) for s in second["steps"]] == [
        (1, 30, 1), (2, 40, 1), (3, 50, 1)]
    assert [c["purpose"] for c in second["llm_calls"]] == ["action"] * 3
    assert tokens(second) == (120, 12)


def test_a_step_whose_callback_raises_is_still_recorded(manager):
    # The callback raises inside _finalize_step, so smolagents never appends the step to its memory.
    from smolagents.memory import ActionStep

    def refuse(step, agent):
        raise LookupError("no step today")

    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")], usage=(100, 10))
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, step_callbacks={ActionStep: refuse})
    with pytest.raises(LookupError):
        agent.run("refused")

    task = only_task(written_session(manager))
    assert [(s["step_type"], s["step_number"], s["prompt_tokens"], s["tool_calls"], s["error_type"])
            for s in task["steps"]] == [("action", 1, 100, 1, None)]
    assert [(c["purpose"], c["step_number"]) for c in task["llm_calls"]] == [("action", 1)]
    assert (task["status"], task["error_type"]) == ("failed", "LookupError")


def test_an_interrupt_between_steps_is_the_runs_error_not_a_steps(manager):
    from smolagents.memory import ActionStep

    model = ScriptedModel([call("add", a=1, b=2), call("add", a=2, b=2), call("final_answer", answer="4")],
                          usage=(100, 10))
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0,
                             step_callbacks={ActionStep: lambda step, agent: agent.interrupt()})
    with pytest.raises(Exception, match="interrupted"):
        agent.run("stop after one step")

    task = only_task(written_session(manager))
    assert [(s["step_number"], s["error_type"], s["prompt_tokens"]) for s in task["steps"]] == [(1, None, 100)]
    assert task["status"] == "failed" and task["error_type"] == "AgentError"


def test_a_step_that_dies_of_an_error_while_its_callback_raises_keeps_both(manager):
    # The model fails (smolagents re-raises it as AgentGenerationError); finalizing the step, a callback raises too:
    # the step never reaches the memory, the run fails of the callback's error, and the step of the model's.
    from smolagents.memory import ActionStep

    def refuse(step, agent):
        raise LookupError("no step today")

    model = ScriptedModel([RuntimeError("provider down")])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, step_callbacks={ActionStep: refuse})
    with pytest.raises(LookupError) as info:
        agent.run("doubly failed")
    generation_error = type(info.value.__context__).__name__

    task = only_task(written_session(manager))
    assert generation_error == "AgentGenerationError"
    assert [(s["step_type"], s["step_number"], s["error_type"]) for s in task["steps"]] == [
        ("action", 1, generation_error)]
    assert (task["status"], task["error_type"]) == ("failed", "LookupError")
    assert [(c["status"], c["purpose"]) for c in task["llm_calls"]] == [("error", "action")]


def test_an_interrupt_inside_a_tool_is_the_steps_error_and_the_runs(manager):
    class Stop(Tool):
        name, description, output_type = "stop", "Raises KeyboardInterrupt.", "string"
        inputs = {}

        def forward(self):
            raise KeyboardInterrupt

    model = ScriptedModel([call("add", a=1, b=2), call("stop")], usage=(100, 10))
    agent = ToolCallingAgent(tools=[add, Stop()], model=model, verbosity_level=0)
    with pytest.raises(KeyboardInterrupt):
        agent.run("interrupted")

    task = only_task(written_session(manager))
    assert [(s["step_number"], s["error_type"]) for s in task["steps"]] == [(1, None), (2, "KeyboardInterrupt")]
    assert (task["status"], task["error_type"]) == ("cancelled", "KeyboardInterrupt")


def test_a_planning_step_of_a_subclass_that_delegates_to_smolagents_takes_its_calls_once(manager):
    class Planner(ToolCallingAgent):
        def _generate_planning_step(self, task, is_first_step, step):
            self.plans = getattr(self, "plans", 0) + 1
            yield from super()._generate_planning_step(task, is_first_step, step)

    assert is_ours(vars(Planner)["_generate_planning_step"])
    model = ScriptedModel(["Plan: add then answer", call("add", a=1, b=2), "Updated plan",
                           call("final_answer", answer="3")],
                          usage_by_index={0: (500, 50), 1: (100, 10), 2: (600, 60), 3: (100, 10)})
    agent = Planner(tools=[add], model=model, verbosity_level=0, planning_interval=1)
    assert agent.run("plan it") == "3" and agent.plans == 2

    task = only_task(written_session(manager))
    assert [(s["step_type"], s["step_number"], s["prompt_tokens"], s["llm_calls"]) for s in task["steps"]] == [
        ("planning", 1, 500, 1), ("action", 1, 100, 1), ("planning", 2, 600, 1), ("action", 2, 100, 1)]
    assert tokens(task) == (1300, 130)


def test_a_planning_step_that_fails_leaves_its_call_unassigned(manager):
    model = ScriptedModel([RuntimeError("planner down")])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, planning_interval=1)
    with pytest.raises(RuntimeError):
        agent.run("plan then fail")

    task = only_task(written_session(manager))
    assert task["steps"] == []
    assert [(c["status"], c["step_number"], c["purpose"]) for c in task["llm_calls"]] == [("error", 1, None)]


@pytest.mark.parametrize("per_delta_usage", [False, True], ids=["usage-on-final-delta", "usage-per-delta"])
def test_streaming_outputs_count_usage_once(manager, per_delta_usage):
    model = StreamingScriptedModel(
        ["Plan: answer at once", code_reply("final_answer(42)")], per_delta_usage=per_delta_usage, chunks=7,
        usage_by_index={0: (400, 41), 1: (300, 33)},
    )
    agent = CodeAgent(tools=[], model=model, verbosity_level=0, stream_outputs=True, planning_interval=5)
    assert agent.run("stream") == 42

    task = only_task(written_session(manager))
    assert [(c["prompt_tokens"], c["completion_tokens"], c["streamed"], c["purpose"]) for c in task["llm_calls"]] == [
        (400, 41, True, "planning"), (300, 33, True, "action")]
    assert tokens(task) == (700, 74)


def test_run_stream_true_yields_the_same_items_and_ends_the_task(manager, uninstrumented):
    def scenario():
        model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
        agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
        return [type(item).__name__ for item in agent.run("streamed", stream=True)]

    with uninstrumented:
        expected = scenario()
    assert scenario() == expected

    task = only_task(written_session(manager))
    assert task["status"] == "completed"
    assert len(task["llm_calls"]) == 2 and [s["step_number"] for s in task["steps"]] == [1, 2]
    assert task["agents"][0]["status"] == "completed"


def _close_mid_run():
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3"), call("final_answer", answer="4")])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    stream = agent.run("abandoned", stream=True)
    next(stream)
    try:
        stream.close()  # smolagents' _run_stream yields in a `finally`, so closing it mid-step raises RuntimeError
        closed = None
    except RuntimeError as exc:
        closed = str(exc)
    return closed, agent.run("next")


def test_run_stream_closed_early_is_cancelled_and_next_run_is_separate(manager, uninstrumented):
    with uninstrumented:
        expected = _close_mid_run()
    assert _close_mid_run() == expected

    session = written_session(manager)
    first, second = session["tasks"]
    assert first["status"] == "cancelled" and second["status"] == "completed"
    assert second["agents"][0]["parent_agent_id"] is None
    # Closed inside its first step, which smolagents finalizes and keeps while the GeneratorExit goes out.
    assert [(s["step_number"], s["error_type"], s["llm_calls"]) for s in first["steps"]] == [
        (1, "GeneratorExit", 1)]
    assert [s["error_type"] for s in second["steps"]] == [None]


def test_a_streamed_plan_closed_midway_is_cancelled_with_its_call_and_no_step(manager):
    model = StreamingScriptedModel(["Plan: never finished", code_reply("final_answer(1)")], chunks=5,
                                   usage_by_index={0: (40, 4), 1: (30, 3)})
    agent = CodeAgent(tools=[], model=model, verbosity_level=0, stream_outputs=True, planning_interval=1)
    stream = agent.run("abandon the plan", stream=True)
    next(stream), next(stream)
    stream.close()

    task = only_task(written_session(manager))
    assert task["status"] == "cancelled" and task["steps"] == []
    assert [(c["streamed"], c["step_number"], c["purpose"]) for c in task["llm_calls"]] == [(True, 1, None)]


@pytest.mark.parametrize("reset", [True, False])
def test_a_stream_left_open_while_the_agent_runs_again_keeps_its_own_steps(manager, reset):
    # The second run resets the memory (reset=True) or appends after the first run's steps (reset=False) while the
    # first stream is still open: each task must get its own steps, once.
    model = ScriptedModel([call("add", a=1, b=2), call("add", a=5, b=5), call("final_answer", answer="10"),
                           call("final_answer", answer="3")],
                          usage_by_index={0: (10, 1), 1: (20, 2), 2: (30, 3), 3: (40, 4)})
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    stream = agent.run("streamed", stream=True)
    items = [next(stream) for _ in range(4)]  # up to the first step's ActionStep (tool call, output, ...)
    assert type(items[-1]).__name__ == "ActionStep"
    stream_rest = stream  # left open while the agent runs again
    second = agent.run("again", reset=reset)
    list(stream_rest)  # the first run goes on and ends (its model replies come after the second run's)

    tasks = {t["description"]: t for t in written_session(manager)["tasks"]}
    assert second == "10"
    assert [(s["step_number"], s["prompt_tokens"]) for s in tasks["again"]["steps"]] == [(1, 20), (2, 30)]
    assert tokens(tasks["again"]) == (50, 5)
    # The first run's later step shares the agent's counter and memory with the second run (smolagents numbers it 4
    # and appends it to the second run's memory): its call and tokens stay the first task's; it has no step record.
    assert [(s["step_number"], s["prompt_tokens"]) for s in tasks["streamed"]["steps"]] == [(1, 10)]
    assert [(c["step_number"], c["prompt_tokens"], c["purpose"]) for c in tasks["streamed"]["llm_calls"]] == [
        (1, 10, "action"), (4, 40, None)]
    assert tokens(tasks["streamed"]) == (50, 5)


def test_reply_without_token_usage_is_unknown_not_zero(manager):
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")], usage_by_index={0: None})
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    assert agent.run("no usage") == "3"

    session = written_session(manager)
    task = only_task(session)
    first, second = task["llm_calls"]
    assert (first["tokens_reported"], first["prompt_tokens"], first["total_tokens"]) == (False, None, None)
    assert second["tokens_reported"] is True
    assert tokens(task) == (100, 10)
    assert session["total_tokens"]["unreported_calls"] == 1


def test_max_steps_is_said_and_the_final_answer_call_counted(manager):
    model = ScriptedModel([call("add", a=1, b=1), call("add", a=2, b=2), "The answer is 4"],
                          usage_by_index={0: (100, 10), 1: (110, 11), 2: (999, 99)})
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, max_steps=2)
    assert agent.run("loop") == "The answer is 4"

    task = only_task(written_session(manager))
    assert task["status"] == "completed" and task["stop_reason"] == "max_steps"
    assert task["agents"][0]["max_steps_reached"] is True
    assert [c["purpose"] for c in task["llm_calls"]] == ["action", "action", "final_answer"]
    assert task["steps"][-1]["step_type"] == "final_answer"
    assert task["steps"][-1]["error_type"] == "AgentMaxStepsError"
    assert tokens(task) == (1209, 120)


def test_two_agents_in_two_threads_keep_their_records_apart(manager):
    results = {}
    start = threading.Barrier(2)

    def worker(name: str, size: int):
        model = ScriptedModel([call("add", a=size, b=size), call("final_answer", answer=name)],
                              usage=(size, 1), model_id=f"model-{name}")
        agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, name=name)
        start.wait(timeout=10)
        results[name] = agent.run(f"task {name}")

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in (("left", 11), ("right", 22))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {"left": "left", "right": "right"}

    session = written_session(manager)
    by_desc = {t["description"]: t for t in session["tasks"]}
    for name, size in (("left", 11), ("right", 22)):
        task = by_desc[f"task {name}"]
        assert {c["model"] for c in task["llm_calls"]} == {f"model-{name}"}
        assert {t["agent_name"] for t in task["tools"]} == {name}
        assert tokens(task) == (2 * size, 2)


# -- model classes ---------------------------------------------------------------------------------------------
def test_user_model_subclass_defined_after_install_without_super(manager):
    class Bare(Model):  # overrides generate, never calls super(), defined after `import sop_telemetry`
        def generate(self, messages, **kwargs):
            return ChatMessage(role=MessageRole.ASSISTANT, content="hi", token_usage=TokenUsage(7, 3))

    reply = Bare().generate([])
    assert reply.content == "hi"
    session = written_session(manager)
    (call_rec,) = [c for t in session["tasks"] for c in t["llm_calls"]]
    assert (call_rec["model"], call_rec["prompt_tokens"], call_rec["completion_tokens"]) == ("Bare", 7, 3)
    assert session["tasks"][0]["implicit"] is True


def test_delegating_calls_are_counted_once(manager):
    class Base(Model):
        def generate(self, messages, **kwargs):
            return ChatMessage(role=MessageRole.ASSISTANT, content="x", token_usage=TokenUsage(5, 5))

    class Child(Base):
        def generate(self, messages, **kwargs):
            return super().generate(messages, **kwargs)

    class StreamViaGenerate(Base):
        def generate_stream(self, messages, **kwargs):
            from smolagents.models import ChatMessageStreamDelta

            message = self.generate(messages, **kwargs)
            yield ChatMessageStreamDelta(content=message.content, token_usage=message.token_usage)

    Child(model_id="child").generate([])
    list(StreamViaGenerate(model_id="streamer").generate_stream([]))

    calls = [c for t in written_session(manager)["tasks"] for c in t["llm_calls"]]
    assert [(c["model"], c["total_tokens"], c["streamed"]) for c in calls] == [
        ("child", 10, False), ("streamer", 10, True)]


def test_a_tool_subclass_calling_super_is_one_call_and_a_tool_calling_a_tool_is_two(manager):
    class Loud(SlowEcho):
        name = "loud"

        def __call__(self, *args, **kwargs):  # wrapped by sop_telemetry too; calls the wrapped Tool.__call__
            return super().__call__(*args, **kwargs).upper()

    class Twice(SlowEcho):
        name = "twice"

        def __init__(self):
            super().__init__()
            self.inner = SlowEcho()

        def forward(self, text: str) -> str:
            return self.inner(text=text) + self.inner(text=text)

    model = ScriptedModel([call("loud", text="a"), call("twice", text="b"), call("final_answer", answer="done")])
    ToolCallingAgent(tools=[Loud(), Twice()], model=model, verbosity_level=0).run("echo")
    (task,) = written_session(manager)["tasks"]
    assert [(t["tool_name"], t["step_number"]) for t in task["tools"]] == [
        ("loud", 1), ("slow_echo", 2), ("slow_echo", 2), ("twice", 2), ("final_answer", 3)]


def test_records_are_built_after_the_run_and_building_them_does_not_wake_the_writer(manager):
    collector = manager.get_collector()
    told = []
    collector._on_change = told.append  # the manager's hook: starts and wakes the writer thread
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")])
    assert ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add") == "3"
    # The run queued what it saw and told the manager twice: a task began (False), a task ended (True, urgent).
    assert told == [False, True]
    assert collector.pending and collector.has_records()
    collector.materialize()
    assert not collector.pending and told == [False, True]  # opening and closing the task while building: silent
    (task,) = collector.snapshot()["tasks"]
    assert (task["status"], len(task["llm_calls"]), len(task["tools"]), len(task["steps"])) == ("completed", 2, 2, 2)


def test_a_manual_record_made_inside_an_agent_run_names_the_agent(manager):
    class Reporter(SlowEcho):
        name = "reporter"

        def forward(self, text: str) -> str:
            manager.get_collector().record_llm_call("side-model", prompt_tokens=3, completion_tokens=4)
            return text

    model = ScriptedModel([call("reporter", text="x"), call("final_answer", answer="done")])
    ToolCallingAgent(tools=[Reporter()], model=model, verbosity_level=0, name="boss").run("report")
    (task,) = written_session(manager)["tasks"]
    side = [c for c in task["llm_calls"] if c["model"] == "side-model"]
    assert [(c["agent_name"], c["total_tokens"]) for c in side] == [("boss", 7)]


def test_duck_typed_model_used_by_an_agent_is_counted(manager):
    class Duck:  # not a smolagents Model at all
        model_id = "duck-1"

        def __init__(self):
            self.inner = ScriptedModel([call("final_answer", answer="quack")], usage=(9, 1))

        def generate(self, messages, **kwargs):
            return self.inner.generate(messages, **kwargs)

        def parse_tool_calls(self, message):
            return message

    agent = ToolCallingAgent(tools=[], model=Duck(), verbosity_level=0)
    assert agent.run("duck") == "quack"
    task = only_task(written_session(manager))
    assert [(c["model"], c["prompt_tokens"]) for c in task["llm_calls"]] == [("duck-1", 9)]


# -- never change the agent ------------------------------------------------------------------------------------
def _observe(scenario):
    """Everything a user can see of a run: result or exception, stream items, memory and monitor figures."""
    try:
        agent, outcome = scenario()
        error = None
    except Exception as exc:  # noqa: BLE001
        agent, outcome, error = getattr(exc, "agent", None), None, (type(exc), str(exc))
    seen = {"outcome": outcome, "error": error}
    if agent is not None:
        seen["steps"] = [type(s).__name__ for s in agent.memory.steps]
        seen["tokens"] = agent.monitor.get_total_token_counts().dict()
        seen["step_errors"] = [type(getattr(s, "error", None)).__name__ for s in agent.memory.steps]
    return seen


def _tool_calling():
    model = ScriptedModel([call("add", a=1, b=2), call("explode", reason="x"), call("final_answer", answer="3")])
    agent = ToolCallingAgent(tools=[add, explode], model=model, verbosity_level=0)
    return agent, agent.run("t")


def _code():
    model = ScriptedModel([code_reply("final_answer(add(a=1, b=2))")])
    agent = CodeAgent(tools=[add], model=model, verbosity_level=0)
    return agent, agent.run("t")


def _streamed():
    model = StreamingScriptedModel([code_reply("final_answer(5)")], usage=(3, 4))
    agent = CodeAgent(tools=[], model=model, verbosity_level=0, stream_outputs=True)
    return agent, [repr(getattr(e, "content", type(e).__name__)) for e in agent.run("t", stream=True)]


def _failing():
    model = ScriptedModel([ValueError("model broke")])
    agent = ToolCallingAgent(tools=[], model=model, verbosity_level=0)
    try:
        agent.run("t")
    except Exception as exc:
        exc.agent = agent
        raise


def _max_steps():
    model = ScriptedModel([call("add", a=1, b=1), "final"])
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0, max_steps=1, return_full_result=True)
    result = agent.run("t")
    return agent, (result.output, result.state, result.token_usage.dict())


SCENARIOS = [_tool_calling, _code, _streamed, _failing, _max_steps]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("mode", ["enabled", "disabled", "broken"])
def test_agent_behaves_identically_with_telemetry(manager, uninstrumented, monkeypatch, scenario, mode):
    with uninstrumented:
        expected = _observe(scenario)
    if mode == "disabled":
        manager.disable_telemetry()
    if mode == "broken":
        def broken(*args, **kwargs):
            raise RuntimeError("telemetry bug")

        monkeypatch.setattr(TelemetryCollector, "add", broken)
        monkeypatch.setattr(TelemetryCollector, "open_task", broken)
    assert _observe(scenario) == expected
    if mode == "broken":
        manager.get_collector().materialize()  # records (and so these failures) are built after the run
        assert get_error_handler().total_errors() > 0
    if mode == "disabled":
        assert manager.flush_data() is None
        manager.enable_telemetry()


def test_exception_object_passes_through_unchanged(manager):
    failure = KeyboardInterrupt()  # not an Exception: smolagents does not wrap it, so the very object must arrive
    model = ScriptedModel([failure])
    agent = ToolCallingAgent(tools=[], model=model, verbosity_level=0)
    with pytest.raises(KeyboardInterrupt) as info:
        agent.run("interrupted")
    assert info.value is failure
    task = only_task(written_session(manager))
    assert task["status"] == "cancelled"


def test_disable_makes_wrappers_pass_through_and_enable_resumes(manager):
    manager.disable_telemetry()
    model = ScriptedModel([call("final_answer", answer="1"), call("final_answer", answer="2")])
    agent = ToolCallingAgent(tools=[], model=model, verbosity_level=0)
    assert agent.run("off") == "1"
    assert manager.get_collector().has_records() is False
    manager.enable_telemetry()
    assert agent.run("on") == "2"
    assert [t["description"] for t in written_session(manager)["tasks"]] == ["on"]


# -- install / uninstall ---------------------------------------------------------------------------------------
PATCHED = {"MultiStepAgent": ("run", "_generate_planning_step"), "Model": ("generate",), "OpenAIModel": ("generate",
           "generate_stream"), "LiteLLMModel": ("generate", "generate_stream"), "TransformersModel": ("generate",
           "generate_stream"), "Tool": ("__call__",), "PipelineTool": ("__call__",)}


def _patched_attributes():
    from smolagents import models, tools

    classes = [MultiStepAgent, Model, models.OpenAIModel, models.LiteLLMModel, models.TransformersModel, Tool,
               tools.PipelineTool]
    return {(cls, name): vars(cls)[name] for cls in classes for name in PATCHED[cls.__name__]}


def test_uninstall_restores_the_exact_originals_and_install_is_idempotent(manager):
    patched = _patched_attributes()
    assert all(is_ours(value) for value in patched.values())
    assert integration.install() is True  # a second install changes nothing
    assert _patched_attributes() == patched

    integration.uninstall()
    try:
        restored = _patched_attributes()
        assert set(restored) == set(patched)
        for key, value in restored.items():
            assert not is_ours(value), key
            assert value is patched[key].__wrapped__, key
        assert "__init_subclass__" not in vars(Model)
        integration.uninstall()  # idempotent

        class Later(Model):
            def generate(self, messages, **kwargs):
                return ChatMessage(role=MessageRole.ASSISTANT, content="")

        assert not is_ours(vars(Later)["generate"])
    finally:
        integration.install()
    assert is_ours(vars(Later)["generate"])  # re-install reaches later classes too
    assert _patched_attributes().keys() == patched.keys()


def _python(code: str, tmp_path) -> str:
    env = {"SOP_TELEMETRY_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_does_not_import_smolagents_or_heavy_modules(tmp_path):
    out = _python("import sys, sop_telemetry; print(sorted(m for m in ('smolagents', 'wrapt', 'pydantic') "
                  "if m in sys.modules))", tmp_path)
    assert out == "[]"


@pytest.mark.parametrize("order", ["telemetry-first", "smolagents-first"])
def test_import_order_does_not_matter(tmp_path, order):
    imports = ["import sop_telemetry", "import smolagents"]
    if order == "smolagents-first":
        imports.reverse()
    code = "; ".join(imports) + (
        "; from sop_telemetry.integrations.patching import is_ours"
        "; from smolagents.models import Model; from smolagents.agents import MultiStepAgent"
        "; print(is_ours(vars(Model)['generate']), is_ours(vars(MultiStepAgent)['run']))"
    )
    assert _python(code, tmp_path) == "True True"


# -- content ---------------------------------------------------------------------------------------------------
def test_content_is_not_recorded_by_default_and_kept_truncated_when_opted_in(manager, storage_dir):
    def run():
        model = ScriptedModel([call("slow_echo", text="private words"), call("final_answer", answer="done")])
        agent = ToolCallingAgent(tools=[SlowEcho()], model=model, verbosity_level=0)
        agent.run("a task")

    run()
    raw = manager.flush_data().read_text()
    assert "private words" not in raw

    manager.initialize({"storage_dir": str(storage_dir), "capture_content": True, "max_string_length": 40,
                        "auto_cleanup": False, "fsync": False})
    run()
    task = written_session(manager)["tasks"][-1]
    echo = task["tools"][0]
    assert echo["arguments_preview"] == "{'text': 'private words'}"
    assert echo["output_preview"] == "private words"
    assert "New task" in task["llm_calls"][0]["input_preview"] and len(task["llm_calls"][0]["input_preview"]) <= 40


def test_unsupported_smolagents_version_is_left_alone_with_one_warning(manager, monkeypatch, caplog):
    import smolagents

    integration.uninstall()
    monkeypatch.setattr(smolagents, "__version__", "1.12.0")
    try:
        with caplog.at_level("WARNING", logger="sop_telemetry"):
            assert integration.install() is False
            assert integration.install() is False
        assert not is_ours(vars(Model)["generate"])
        assert [r.getMessage() for r in caplog.records].count(
            "sop_telemetry: smolagents 1.12.0 is outside the supported range (>=1.23,<1.27); it is not instrumented"
        ) == 1
    finally:
        monkeypatch.undo()
        integration.install()
    assert is_ours(vars(Model)["generate"])


def test_disable_before_first_use_survives_lazy_initialization(storage_dir, monkeypatch):
    from sop_telemetry.collector import switch
    from sop_telemetry.manager import TelemetryManager

    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(storage_dir))
    fresh = TelemetryManager._reset_instance()  # not initialized: the first API call configures it lazily
    try:
        fresh.disable_telemetry()
        fresh.get_storage_stats()
        model = ScriptedModel([call("final_answer", answer="x")])
        ToolCallingAgent(tools=[], model=model, verbosity_level=0).run("while disabled")
        assert fresh.is_enabled() is False
        assert fresh.get_collector().has_records() is False
    finally:
        fresh.shutdown(flush=False)
        switch.enabled = True


_SENTINEL = object()


# -- models with their own generate signature ---------------------------------------------------------------------
class KeywordModel(Model):
    """A model whose generate has its own shape: a keyword-only option with a sentinel default, extra keywords."""

    def __init__(self) -> None:
        super().__init__(model_id="keyword-model")
        self.options: List[Any] = []

    def generate(self, messages, stop_sequences=None, *, temperature=_SENTINEL, **kwargs):  # noqa: ANN001
        self.options.append((temperature, sorted(kwargs)))
        from fakes import tool_calls_message

        if len(self.options) == 1:
            return tool_calls_message([("add", {"a": 1, "b": 2})], (7, 3))
        return tool_calls_message([("final_answer", {"answer": "3"})], (5, 1))


def test_a_model_with_its_own_generate_signature_is_recorded_and_called_unchanged(manager):
    model = KeywordModel()
    assert is_ours(vars(KeywordModel)["generate"])
    assert ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add") == "3"
    assert [t for t, _ in model.options] == [_SENTINEL, _SENTINEL]
    assert model.options[0][1] == ["tools_to_call_from"]  # a keyword the signature does not name: in **kwargs
    model.generate([ChatMessage(role=MessageRole.USER, content="hi")], temperature=0.5, seed=1)
    assert model.options[-1] == (0.5, ["seed"])
    [task] = [t for t in written_session(manager)["tasks"] if t["description"] == "add"]
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in task["llm_calls"]] == [(7, 3), (5, 1)]
    assert [s["step_number"] for s in task["steps"]] == [1, 2]


def test_content_capture_reads_the_messages_however_they_were_passed(manager, storage_dir):
    manager.initialize({"storage_dir": str(storage_dir), "capture_content": True, "auto_cleanup": False,
                        "fsync": False})
    model = KeywordModel()
    model.generate([ChatMessage(role=MessageRole.USER, content="by position")])
    model.generate(messages=[ChatMessage(role=MessageRole.USER, content="by keyword")])
    calls = manager.get_collector().snapshot()["tasks"][0]["llm_calls"]
    assert [c["input_preview"] for c in calls] == ["by position", "by keyword"]
