"""The recorder API: runs, calls and steps as an integration reports them, checked in the session file on disk."""

from __future__ import annotations

import asyncio
import threading

from fakes import written_session

from sop_telemetry import recorder
from sop_telemetry.collector import switch
from sop_telemetry.error_handler import get_error_handler


def tasks_of(session: dict) -> list:
    return [t for t in session["tasks"] if not t["implicit"]]


def test_a_run_with_steps_model_and_tool_calls(manager):
    run = recorder.begin_run("fakework", "PlannerAgent", "planner", task="Plan a trip", model="gpt-4o")
    with recorder.activate(run):
        step = recorder.begin_step("action")
        t0 = recorder.clock()
        recorder.model_call("gpt-4o", recorder.Usage(100, 20, cached_tokens=40, reasoning_tokens=5), t0,
                            t0 + 0.25)
        recorder.tool_call("search", t0 + 0.3, t0 + 0.4)
        recorder.end_step(step)
        step = recorder.begin_step("final_answer")
        recorder.model_call("gpt-4o", {"input_tokens": 7, "output_tokens": 3, "total_tokens": 11}, t0, t0 + 0.1,
                            purpose="retry")
        recorder.end_step(step, is_final_answer=True)
    recorder.end_run(run)

    (task,) = tasks_of(written_session(manager))
    assert task["description"] == "Plan a trip" and task["status"] == "completed"
    (agent,) = task["agents"]
    assert (agent["framework"], agent["agent_type"], agent["agent_name"], agent["model"]) == (
        "fakework", "PlannerAgent", "planner", "gpt-4o")
    assert agent["status"] == "completed" and agent["steps"] == 2 and agent["parent_agent_id"] is None
    first, second = task["llm_calls"]
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"]) == (100, 20, 120)
    assert (first["cached_tokens"], first["reasoning_tokens"]) == (40, 5)
    assert first["duration"] == 0.25 and first["step_number"] == 1 and first["purpose"] == "action"
    assert (second["total_tokens"], second["purpose"], second["step_number"]) == (11, "retry", 2)
    assert second["cached_tokens"] is None
    (tool,) = task["tools"]
    assert (tool["tool_name"], tool["step_number"], tool["status"], tool["agent_id"]) == (
        "search", 1, "success", agent["agent_id"])
    assert [(s["step_type"], s["step_number"], s["prompt_tokens"], s["llm_calls"], s["tool_calls"])
            for s in task["steps"]] == [("action", 1, 100, 1, 1), ("final_answer", 2, 7, 1, 0)]
    assert task["steps"][1]["is_final_answer"] is True
    assert task["token_usage"]["prompt_tokens"] == 107 and task["token_usage"]["total_tokens"] == 131


def test_usage_not_reported_is_unknown_not_zero(manager):
    run = recorder.begin_run("fakework", "Agent")
    t0 = recorder.clock()
    recorder.model_call("m", None, t0, t0, run=run)
    recorder.model_call("m", {"some": "thing"}, t0, t0, run=run)
    recorder.end_run(run)
    (task,) = tasks_of(written_session(manager))
    assert [c["tokens_reported"] for c in task["llm_calls"]] == [False, False]
    assert [c["prompt_tokens"] for c in task["llm_calls"]] == [None, None]
    assert task["token_usage"]["unreported_calls"] == 2 and task["token_usage"]["total_tokens"] == 0


def test_usage_shapes_of_other_frameworks():
    class OpenAIUsage:
        prompt_tokens, completion_tokens, total_tokens = 10, 4, 14
        prompt_tokens_details = {"cached_tokens": 6}
        completion_tokens_details = {"reasoning_tokens": 2}

    assert recorder.usage_of(OpenAIUsage()) == (10, 4, 14, True, 6, 2)
    langchain = {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6,
                 "input_token_details": {"cache_read": 3}, "output_token_details": {"reasoning": 1}}
    assert recorder.usage_of(langchain) == (5, 1, 6, True, 3, 1)
    assert recorder.usage_of(recorder.Usage(output_tokens=9)) == (None, 9, 9, True, None, None)
    assert recorder.usage_of(None) == (None, None, None, False, None, None)
    assert recorder.usage_of({"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})[3] is False  # LiteLLM's "none"


def test_nested_run_by_explicit_parent_from_another_thread(manager):
    parent = recorder.begin_run("fakework", "Manager", "boss", task="delegate")
    result = {}

    def callback_thread():
        child = recorder.begin_run("fakework", "Worker", "helper", parent=parent)
        t0 = recorder.clock()
        recorder.model_call("small", recorder.Usage(3, 2), t0, t0 + 0.01, run=child)
        recorder.end_run(child, error=ValueError("bad input"))
        result["child"] = child

    thread = threading.Thread(target=callback_thread)
    thread.start()
    thread.join()
    recorder.end_run(parent, stop_reason="max_steps")

    (task,) = tasks_of(written_session(manager))
    boss, helper = task["agents"]
    assert helper["parent_agent_id"] == boss["agent_id"]
    assert (helper["status"], helper["error_type"], helper["error_message"]) == ("failed", "ValueError", "bad input")
    assert task["llm_calls"][0]["agent_id"] == helper["agent_id"]
    assert boss["max_steps_reached"] is True and task["stop_reason"] == "max_steps"
    assert task["status"] == "completed"


def test_current_context_nests_runs_and_keeps_concurrent_async_runs_apart(manager):
    async def agent(name: str, tokens: int) -> None:
        run = recorder.begin_run("fakework", "AsyncAgent", name, task=name)
        with recorder.activate(run):
            await asyncio.sleep(0)
            t0 = recorder.clock()
            recorder.model_call("m", recorder.Usage(tokens, 1), t0, t0)
            inner = recorder.begin_run("fakework", "SubAgent", f"{name}-sub")  # parent: the current run
            recorder.end_run(inner)
        recorder.end_run(run)

    async def main() -> None:
        await asyncio.gather(agent("a", 10), agent("b", 20))

    asyncio.run(main())
    tasks = {t["description"]: t for t in tasks_of(written_session(manager))}
    assert tasks["a"]["token_usage"]["prompt_tokens"] == 10 and tasks["b"]["token_usage"]["prompt_tokens"] == 20
    for name, task in tasks.items():
        top, sub = task["agents"]
        assert sub["agent_name"] == f"{name}-sub" and sub["parent_agent_id"] == top["agent_id"]


def test_tool_call_facts_and_errors(manager):
    run = recorder.begin_run("fakework", "Agent")
    t0 = recorder.clock()
    recorder.tool_call("lookup", t0, t0, run=run, error=("ModelRetry", "try again"), retry_requested=True)
    recorder.tool_call("fetch", t0, t0, run=run, error=RuntimeError("timeout"), error_returned_to_model=True)
    recorder.end_run(run, status="cancelled")
    (task,) = tasks_of(written_session(manager))
    retry, returned = task["tools"]
    assert (retry["status"], retry["error_type"], retry["retry_requested"]) == ("error", "ModelRetry", True)
    assert retry["error_returned_to_model"] is False
    assert (returned["error_message"], returned["error_returned_to_model"]) == ("timeout", True)
    assert task["status"] == "cancelled"


def test_calls_outside_any_run_go_to_the_implicit_task(manager):
    t0 = recorder.clock()
    recorder.model_call("m", recorder.Usage(1, 1), t0, t0)
    session = written_session(manager)
    (implicit,) = [t for t in session["tasks"] if t["implicit"]]
    assert implicit["llm_calls"][0]["prompt_tokens"] == 1


def test_disabled_telemetry_returns_a_handle_that_records_nothing(manager):
    switch.enabled = False
    try:
        run = recorder.begin_run("fakework", "Agent")
        assert run is recorder.DISABLED
        with recorder.activate(run):
            t0 = recorder.clock()
            recorder.model_call("m", None, t0, t0)
            recorder.tool_call("t", t0, t0)
            child = recorder.begin_run("fakework", "Child", parent=run)
            recorder.end_run(child)
        recorder.end_run(run)
    finally:
        switch.enabled = True
    assert manager.get_collector().has_records() is False


def test_text_is_clipped_by_the_core(manager):
    manager.initialize({"max_string_length": 20})
    run = recorder.begin_run("fakework", "Agent", "x" * 50, task="y" * 50)
    t0 = recorder.clock()
    recorder.tool_call("z" * 50, t0, t0, run=run, error=ValueError("e" * 50))
    recorder.end_run(run)
    (task,) = tasks_of(written_session(manager))
    assert len(task["description"]) == 20 and len(task["agents"][0]["agent_name"]) == 20
    assert len(task["tools"][0]["tool_name"]) == 20 and len(task["tools"][0]["error_message"]) == 20


def test_a_secret_is_masked_in_the_file(manager):
    recorder.remember_secret("sk-test-abcdefghijklmnop")
    run = recorder.begin_run("fakework", "Agent", task="key is sk-test-abcdefghijklmnop")
    recorder.end_run(run, error=RuntimeError("401 for sk-test-abcdefghijklmnop"))
    text = str(written_session(manager))
    assert "sk-test-abcdefghijklmnop" not in text


def test_bad_arguments_are_counted_never_raised(manager):
    get_error_handler().reset_error_state()
    run = recorder.begin_run("fakework", "Agent")
    recorder.end_run(run, status="no-such-status")  # refused on the caller's thread
    recorder.model_call("m", None, "not a time", 1.0, run=run)  # refused where its record is built
    recorder.tool_call("t", 0.0, 1.0, run=run)
    recorder.leave(object())  # not a token
    manager.flush_data()
    summary = get_error_handler().get_error_summary()
    assert {"recorder.end_run", "recorder.model_call", "recorder.leave"} <= set(summary)
    assert summary["recorder.model_call"]["count"] == 1  # the good call after it is kept
    assert [t.tool_name for t in manager.get_session_data().tasks[-1].tools] == ["t"]


def test_defer_runs_the_integrations_builder_in_queue_order(manager):
    seen = []

    def builder(collector, run, value):
        seen.append((value, run.agent["agent_name"]))
        run.stop_reason = "max_steps"

    run = recorder.begin_run("fakework", "Agent", "deferred")
    recorder.defer(run, "fakework.steps", builder, 42)
    recorder.end_run(run)
    (task,) = tasks_of(written_session(manager))
    assert seen == [(42, "deferred")]
    assert task["stop_reason"] == "max_steps" and task["agents"][0]["max_steps_reached"] is True


def test_on_end_builds_what_the_integration_read_before_the_runs_end(manager):
    # What an integration reads as a run ends goes on the handle, and its on_end builds it where records are built,
    # before the run is closed.
    seen = []

    def on_end(collector, run):
        seen.append((run.ext, run.agent["status"]))
        recorder.add_step(collector, run, "action", 1, None, None, [], [], {}, None, True, None)
        run.stop_reason = "max_steps"

    run = recorder.begin_run("fakework", "Agent", "ending")
    run.ext, run.on_end = "read as it ended", on_end
    recorder.end_run(run)
    (task,) = tasks_of(written_session(manager))
    assert seen == [("read as it ended", "running")]
    assert [s["step_type"] for s in task["steps"]] == ["action"] and task["agents"][0]["steps"] == 1
    assert task["stop_reason"] == "max_steps" and task["status"] == "completed"


def test_a_failing_on_end_is_counted_and_the_run_still_ends(manager):
    get_error_handler().reset_error_state()

    def on_end(collector, run):
        raise RuntimeError("injected")

    run = recorder.begin_run("fakework", "Agent", "ending")
    run.on_end = on_end
    recorder.end_run(run)
    (task,) = tasks_of(written_session(manager))
    assert task["status"] == "completed" and task["agents"][0]["status"] == "completed"
    assert get_error_handler().get_error_summary()["recorder.end_run"]["count"] == 1
