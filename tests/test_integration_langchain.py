"""The LangChain / LangGraph integration, end to end: real graphs and agents, a scripted chat model, the session file
on disk."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import warnings
from typing import List

import pytest
from fakes import uninstalled, written_session
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_fakes import FakeChatModel, add, explode, multiply, refuse, reply
from langgraph.graph import START, MessagesState, StateGraph

from sop_telemetry import recorder
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.integrations import langchain as integration


def real_tasks(session: dict) -> List[dict]:
    return [t for t in session["tasks"] if not t["implicit"]]


def only_task(session: dict) -> dict:
    tasks = real_tasks(session)
    assert len(tasks) == 1, [t["task_id"] for t in tasks]
    return tasks[0]


def tokens(record: dict) -> tuple:
    usage = record["token_usage"] if "token_usage" in record else record
    return usage["prompt_tokens"], usage["completion_tokens"]


def calls(task: dict) -> List[tuple]:
    return [(c["model"], c["prompt_tokens"], c["completion_tokens"], c["step_number"]) for c in task["llm_calls"]]


def tools(task: dict) -> List[tuple]:
    return [(t["tool_name"], t["status"], t["step_number"]) for t in task["tools"]]


def ask(text: str = "go") -> dict:
    return {"messages": [("user", text)]}


@pytest.fixture
def uninstrumented():
    """Runs the body with the integration uninstalled, then installs it again."""
    return uninstalled(integration)


# -- agents --------------------------------------------------------------------------------------------------------
def test_react_agent_with_two_tools_over_several_calls(manager):
    model = FakeChatModel(script=[
        reply(tools=[("add", {"a": 1, "b": 2})], usage=(120, 12)),
        reply(tools=[("multiply", {"a": 3, "b": 4})], usage=(130, 13)),
        reply("3 and 12", usage=(140, 14), model="fake-chat-2024-06-01"),
    ])
    agent = create_agent(model, tools=[add, multiply], name="calculator")
    result = agent.invoke(ask("add then multiply"))
    assert result["messages"][-1].content == "3 and 12"

    session = written_session(manager)
    task = only_task(session)
    assert task["status"] == "completed"
    (agent_rec,) = task["agents"]
    assert (agent_rec["agent_type"], agent_rec["agent_name"], agent_rec["framework"]) == ("agent", "calculator",
                                                                                          "langchain")
    assert agent_rec["status"] == "completed" and agent_rec["steps"] == 3
    # The model's own name for itself where its reply gives one, else the name it was asked for.
    assert calls(task) == [("fake-chat", 120, 12, 1), ("fake-chat", 130, 13, 2), ("fake-chat-2024-06-01", 140, 14, 3)]
    assert all(c["purpose"] == "action" and c["streamed"] is False for c in task["llm_calls"])
    assert tools(task) == [("add", "success", 1), ("multiply", "success", 2)]
    assert all(r["agent_id"] == agent_rec["agent_id"] for r in task["llm_calls"] + task["tools"] + task["steps"])
    assert [(s["step_number"], s["prompt_tokens"], s["completion_tokens"], s["llm_calls"], s["tool_calls"],
             s["is_final_answer"]) for s in task["steps"]] == [
        (1, 120, 12, 1, 1, False), (2, 130, 13, 1, 1, False), (3, 140, 14, 1, 0, True)]
    assert tokens(task) == (390, 39)
    assert session["total_tokens"]["total_tokens"] == 429
    assert session["total_tokens"]["model_breakdown"]["fake-chat"]["prompt_tokens"] == 250


def test_parallel_tool_calls_run_together_and_belong_to_their_step(manager):
    meeting = threading.Barrier(3, timeout=10)  # the three calls must overlap: LangGraph runs them in its pool

    @tool
    def meet(name: str) -> str:
        """Waits for the other two calls."""
        meeting.wait()
        return name

    model = FakeChatModel(script=[
        reply(tools=[("meet", {"name": n}) for n in "abc"], usage=(200, 30)),
        reply("met", usage=(210, 3)),
    ])
    agent = create_agent(model, tools=[meet])
    agent.invoke(ask())

    task = only_task(written_session(manager))
    assert sorted(tools(task)) == [("meet", "success", 1)] * 3
    assert {t["agent_id"] for t in task["tools"]} == {task["agents"][0]["agent_id"]}
    assert [(s["step_number"], s["tool_calls"], s["llm_calls"]) for s in task["steps"]] == [(1, 3, 1), (2, 0, 1)]
    assert tokens(task) == (410, 33)


def test_a_tool_exception_handled_by_the_tool_node_goes_back_to_the_model(manager):
    from langgraph.prebuilt import ToolNode, create_react_agent

    model = FakeChatModel(script=[
        reply(tools=[("refuse", {"reason": "no"}), ("add", {"a": 1, "b": 1})], usage=(50, 5)),
        reply("sorry", usage=(60, 6)),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated in favour of create_agent: still used
        agent = create_react_agent(model, tools=ToolNode([refuse, add], handle_tool_errors=True))
    result = agent.invoke(ask())
    assert result["messages"][-1].content == "sorry"

    task = only_task(written_session(manager))
    assert task["status"] == "completed"
    assert task["agents"][0]["agent_type"] == "graph"
    by_name = {t["tool_name"]: t for t in task["tools"]}
    assert (by_name["refuse"]["status"], by_name["refuse"]["error_type"], by_name["refuse"]["error_message"]) == (
        "error", "ToolException", "refused: no")
    assert by_name["refuse"]["error_returned_to_model"] is True
    assert by_name["add"]["status"] == "success" and not by_name["add"].get("error_returned_to_model")
    assert tokens(task) == (110, 11)


def test_a_tool_that_handles_its_own_error_is_a_failed_call_whose_error_the_model_got(manager):
    @tool
    def picky(word: str) -> str:
        """Refuses long words."""
        from langchain_core.tools import ToolException

        raise ToolException(f"{word} is too long")

    picky.handle_tool_error = True

    model = FakeChatModel(script=[reply(tools=[("picky", {"word": "antidisestablishment"})]), reply("ok")])
    create_agent(model, tools=[picky]).invoke(ask())

    (call,) = only_task(written_session(manager))["tools"]
    assert (call["status"], call["error_type"], call["error_message"], call["error_returned_to_model"]) == (
        "error", "ToolError", "antidisestablishment is too long", True)


def test_an_unhandled_tool_error_fails_the_run_and_is_not_handed_back(manager):
    model = FakeChatModel(script=[reply(tools=[("explode", {"reason": "boom"})], usage=(70, 7)), reply("never")])
    agent = create_agent(model, tools=[explode])
    with pytest.raises(ValueError, match="exploded: boom"):
        agent.invoke(ask())

    task = only_task(written_session(manager))
    assert (task["status"], task["error_type"], task["error_message"]) == ("failed", "ValueError", "exploded: boom")
    (call,) = task["tools"]
    assert (call["tool_name"], call["status"], call["error_type"]) == ("explode", "error", "ValueError")
    assert not call.get("error_returned_to_model")
    assert task["agents"][0]["status"] == "failed"
    assert task["steps"][-1]["error_type"] == "ValueError"
    assert tokens(task) == (70, 7)
    assert model.calls == 1


def test_a_model_that_raises_fails_its_call_and_the_run_with_the_very_exception(manager):
    failure = ConnectionError("provider down")
    model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 2})], usage=(10, 1)), failure])
    with pytest.raises(ConnectionError) as info:
        create_agent(model, tools=[add]).invoke(ask())
    assert info.value is failure

    task = only_task(written_session(manager))
    assert (task["status"], task["error_type"]) == ("failed", "ConnectionError")
    good, bad = task["llm_calls"]
    assert (good["status"], good["prompt_tokens"]) == ("success", 10)
    assert (bad["status"], bad["error_type"], bad["error_message"]) == ("error", "ConnectionError", "provider down")
    assert bad["tokens_reported"] is False and bad["prompt_tokens"] is None
    assert task["token_usage"]["unreported_calls"] == 1
    assert [(s["step_number"], s["error_type"]) for s in task["steps"]] == [(1, None), (2, "ConnectionError")]


def test_recursion_limit_is_the_runs_max_steps(manager):
    from langgraph.errors import GraphRecursionError

    model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 1})], usage=(5, 1)) for _ in range(10)])
    with pytest.raises(GraphRecursionError):
        create_agent(model, tools=[add]).invoke(ask(), {"recursion_limit": 4})

    task = only_task(written_session(manager))
    assert (task["status"], task["stop_reason"], task["agents"][0]["max_steps_reached"]) == ("failed", "max_steps",
                                                                                            True)
    assert tokens(task) == (5 * model.calls, model.calls)


# -- streaming -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream_usage", ["last", "split"])
def test_stream_mode_messages_counts_a_streamed_reply_once(manager, uninstrumented, stream_usage):
    def script():
        return [reply(tools=[("add", {"a": 2, "b": 2})], usage=(300, 20)), reply("four it is", usage=(320, 4))]

    def chunks(model):
        agent = create_agent(model, tools=[add])
        return [(type(m).__name__, m.content, getattr(m, "usage_metadata", None), meta["langgraph_node"])
                for m, meta in agent.stream(ask(), stream_mode="messages")]

    with uninstrumented:
        expected = chunks(FakeChatModel(script=script(), stream_usage=stream_usage))
    assert chunks(FakeChatModel(script=script(), stream_usage=stream_usage)) == expected  # the same stream

    task = only_task(written_session(manager))
    assert calls(task) == [("fake-chat", 300, 20, 1), ("fake-chat", 320, 4, 2)]
    assert all(c["streamed"] for c in task["llm_calls"])
    assert tokens(task) == (620, 24)


def test_a_stream_that_carries_no_usage_is_not_reported_rather_than_zero(manager):
    model = FakeChatModel(script=[reply(tools=[("add", {"a": 2, "b": 2})], usage=(300, 20)), reply("4")],
                          stream_usage=None)
    for _ in create_agent(model, tools=[add]).stream(ask(), stream_mode="messages"):
        pass

    task = only_task(written_session(manager))
    assert [(c["tokens_reported"], c["prompt_tokens"], c["completion_tokens"]) for c in task["llm_calls"]] == [
        (False, None, None)] * 2
    assert task["token_usage"]["unreported_calls"] == 2 and tokens(task) == (0, 0)


def test_a_graph_stream_closed_early_is_cancelled(manager):
    model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 1})], usage=(9, 1)), reply("2")])
    stream = create_agent(model, tools=[add]).stream(ask(), stream_mode="updates")
    next(stream)
    stream.close()

    task = only_task(written_session(manager))
    assert task["status"] == "cancelled" and task["error_type"] is None
    assert tokens(task) == (9, 1)


# -- chains and models invoked on their own ------------------------------------------------------------------------
def test_an_lcel_chain_invoked_twice_is_two_tasks(manager):
    model = FakeChatModel(script=[reply("one", usage=(11, 1)), reply("two", usage=(12, 2))])
    chain = ChatPromptTemplate.from_messages([("user", "{question}")]) | model | StrOutputParser()
    assert chain.invoke({"question": "first"}) == "one"
    assert chain.invoke({"question": "second"}) == "two"

    first, second = real_tasks(written_session(manager))
    for task, expected in ((first, (11, 1)), (second, (12, 2))):
        (agent_rec,) = task["agents"]
        assert (agent_rec["agent_type"], agent_rec["agent_name"]) == ("chain", "RunnableSequence")
        assert tokens(task) == expected
        assert [(s["step_number"], s["is_final_answer"]) for s in task["steps"]] == [(1, True)]


def test_a_model_invoked_on_its_own_records_into_the_implicit_task(manager):
    model = FakeChatModel(script=[reply("a", usage=(7, 1)), reply("b c", usage=(8, 2)), reply("d", usage=None)])
    model.invoke("x")
    assert "".join(chunk.content for chunk in model.stream("y")) == "b c"
    model.invoke("z")

    session = written_session(manager)
    assert real_tasks(session) == []
    (implicit,) = session["tasks"]
    assert [(c["prompt_tokens"], c["completion_tokens"], c["streamed"], c["tokens_reported"], c["agent_id"])
            for c in implicit["llm_calls"]] == [(7, 1, False, True, None), (8, 2, True, True, None),
                                                (None, None, False, False, None)]


def test_a_prompt_invoked_on_its_own_records_nothing(manager):
    ChatPromptTemplate.from_messages([("user", "{q}")]).invoke({"q": "x"})
    assert manager.flush_data() is None


def test_batch_makes_one_task_per_input(manager):
    model = FakeChatModel(script=[reply("a", usage=(21, 1)), reply("b", usage=(22, 2)), reply("c", usage=(23, 3))])
    agent = create_agent(model, tools=[])
    results = agent.batch([ask("1"), ask("2"), ask("3")])
    assert sorted(r["messages"][-1].content for r in results) == ["a", "b", "c"]

    tasks = real_tasks(written_session(manager))
    assert sorted(tokens(t) for t in tasks) == [(21, 1), (22, 2), (23, 3)]
    assert all(t["status"] == "completed" and len(t["agents"]) == 1 for t in tasks)


def test_an_llm_reporting_usage_only_in_llm_output_is_counted(manager):
    class UsageLLM(FakeListLLM):
        def _generate(self, prompts, stop=None, run_manager=None, **kwargs):
            result = super()._generate(prompts, stop=stop, run_manager=run_manager, **kwargs)
            return LLMResult(generations=result.generations, llm_output={
                "token_usage": {"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19},
                "model_name": "legacy-completions"})

    llm = UsageLLM(responses=["fine"])
    chain = ChatPromptTemplate.from_template("{q}") | llm
    assert chain.invoke({"q": "how"}) == "fine"

    (call,) = only_task(written_session(manager))["llm_calls"]
    assert (call["model"], call["prompt_tokens"], call["completion_tokens"], call["total_tokens"]) == (
        "legacy-completions", 15, 4, 19)


def test_cached_and_reasoning_tokens_are_kept(manager):
    model = FakeChatModel(script=[reply("x", usage=(1000, 300), cached=800, reasoning=250)])
    model.invoke("q")
    (call,) = written_session(manager)["tasks"][0]["llm_calls"]
    assert (call["prompt_tokens"], call["completion_tokens"], call["cached_tokens"], call["reasoning_tokens"]) == (
        1000, 300, 800, 250)


# -- async ---------------------------------------------------------------------------------------------------------
# On Python 3.10 an asyncio task cannot be given a context, and LangGraph then runs an async node's body without the
# node's config: the calls it makes without passing `config` come with no parent run, or a run outside the node.
# The same records are expected there as on 3.11+ (docs/langchain.md, "Python 3.10").
def test_ainvoke_records_the_same_figures(manager):
    model = FakeChatModel(script=[
        reply(tools=[("add", {"a": 1, "b": 2}), ("multiply", {"a": 2, "b": 5})], usage=(100, 10)),
        reply("done", usage=(110, 11)),
    ])
    agent = create_agent(model, tools=[add, multiply])
    result = asyncio.run(agent.ainvoke(ask()))
    assert result["messages"][-1].content == "done"

    task = only_task(written_session(manager))
    assert calls(task) == [("fake-chat", 100, 10, 1), ("fake-chat", 110, 11, 2)]
    assert sorted(tools(task)) == [("add", "success", 1), ("multiply", "success", 1)]
    assert tokens(task) == (210, 21)
    assert [(s["step_number"], s["is_final_answer"]) for s in task["steps"]] == [(1, False), (2, True)]


def test_concurrent_ainvokes_in_one_loop_stay_apart(manager):
    def agent_for(usage):
        model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 1})], usage=usage), reply("ok", usage=usage)])
        return create_agent(model, tools=[add], name=f"agent{usage[0]}")

    async def main():
        await asyncio.gather(*(agent_for((n, 1)).ainvoke(ask()) for n in (10, 20, 30)))

    asyncio.run(main())
    tasks = real_tasks(written_session(manager))
    assert sorted((t["agents"][0]["agent_name"], tokens(t), len(t["tools"])) for t in tasks) == [
        ("agent10", (20, 2), 1), ("agent20", (40, 2), 1), ("agent30", (60, 2), 1)]


@pytest.mark.parametrize("stream_mode", ["messages", "updates", "values"])
def test_astream_records_the_same_figures(manager, stream_mode):
    model = FakeChatModel(script=[reply(tools=[("add", {"a": 2, "b": 2})], usage=(300, 20)),
                                  reply("four it is", usage=(320, 4))])

    async def main():
        return [chunk async for chunk in create_agent(model, tools=[add], name="streamer").astream(
            ask(), stream_mode=stream_mode)]

    assert asyncio.run(main())
    task = only_task(written_session(manager))
    assert task["agents"][0]["agent_name"] == "streamer"
    assert calls(task) == [("fake-chat", 300, 20, 1), ("fake-chat", 320, 4, 2)]
    assert tools(task) == [("add", "success", 1)] and tokens(task) == (620, 24)


def test_abatch_makes_one_task_per_input(manager):
    model = FakeChatModel(script=[reply("a", usage=(21, 1)), reply("b", usage=(22, 2)), reply("c", usage=(23, 3))])
    results = asyncio.run(create_agent(model, tools=[]).abatch([ask("1"), ask("2"), ask("3")]))
    assert sorted(r["messages"][-1].content for r in results) == ["a", "b", "c"]

    tasks = real_tasks(written_session(manager))
    assert sorted(tokens(t) for t in tasks) == [(21, 1), (22, 2), (23, 3)]
    assert all(t["status"] == "completed" and len(t["agents"]) == 1 and len(t["llm_calls"]) == 1 for t in tasks)


def test_a_model_awaited_on_its_own_records_into_the_implicit_task(manager):
    model = FakeChatModel(script=[reply("a", usage=(7, 1)), reply("b c", usage=(8, 2))])

    async def main():
        await model.ainvoke("x")
        return "".join([chunk.content async for chunk in model.astream("y")])

    assert asyncio.run(main()) == "b c"
    session = written_session(manager)
    assert real_tasks(session) == []
    (implicit,) = session["tasks"]
    assert [(tokens(c), c["streamed"], c["agent_id"]) for c in implicit["llm_calls"]] == [
        ((7, 1), False, None), ((8, 2), True, None)]


def test_calls_made_in_async_nodes_without_config_belong_to_the_graph(manager):
    # A node's own code calls models as users write it: awaited without `config`, two at once with gather, and
    # synchronously from a sync node of the same async graph.
    model = FakeChatModel(model_name="node-model", script=[reply("a", usage=(11, 1)), reply("b", usage=(12, 2)),
                                                           reply("c", usage=(13, 3)), reply("d", usage=(14, 4))])

    async def draft(state: MessagesState) -> dict:
        first = await model.ainvoke(state["messages"])
        more = await asyncio.gather(model.ainvoke("again"), model.ainvoke("and again"))
        return {"messages": [first, *more]}

    def check(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("draft", draft)
    graph.add_node("check", check)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "check")
    asyncio.run(graph.compile(name="writer").ainvoke(ask()))

    task = only_task(written_session(manager))
    (writer,) = task["agents"]
    assert (writer["agent_type"], writer["agent_name"], writer["status"]) == ("graph", "writer", "completed")
    assert sorted((tokens(c), c["agent_id"], c["step_number"]) for c in task["llm_calls"]) == [
        ((11, 1), writer["agent_id"], 1), ((12, 2), writer["agent_id"], 1), ((13, 3), writer["agent_id"], 1),
        ((14, 4), writer["agent_id"], 2)]
    assert tokens(task) == (50, 10)


def test_a_sub_agent_awaited_in_an_async_node_is_nested_and_the_nodes_later_calls_stay_the_graphs(manager):
    inner = create_agent(FakeChatModel(model_name="inner-model", script=[
        reply(tools=[("add", {"a": 1, "b": 1})], usage=(40, 4)), reply("2", usage=(41, 4))]), tools=[add],
        name="helper")
    model = FakeChatModel(model_name="outer-model", script=[reply("a", usage=(10, 1)), reply("b", usage=(11, 1))])

    async def work(state: MessagesState) -> dict:
        first = await model.ainvoke(state["messages"])
        await inner.ainvoke(ask("1+1?"))
        return {"messages": [first, await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("work", work)
    graph.add_edge(START, "work")
    asyncio.run(graph.compile(name="boss").ainvoke(ask()))

    task = only_task(written_session(manager))
    boss, helper = task["agents"]
    assert (boss["agent_name"], helper["agent_name"], helper["parent_agent_id"]) == ("boss", "helper",
                                                                                     boss["agent_id"])
    by_agent = {a["agent_id"]: a["agent_name"] for a in task["agents"]}
    assert sorted((by_agent[c["agent_id"]], c["model"], c["prompt_tokens"], c["step_number"])
                  for c in task["llm_calls"]) == [
        ("boss", "outer-model", 10, 1), ("boss", "outer-model", 11, 1),
        ("helper", "inner-model", 40, 1), ("helper", "inner-model", 41, 2)]
    assert [(by_agent[t["agent_id"]], t["tool_name"]) for t in task["tools"]] == [("helper", "add")]
    assert (boss["steps"], helper["steps"]) == (1, 2) and tokens(task) == (102, 10)


def test_an_async_lambda_calling_a_model_is_a_chain_task_with_that_call(manager):
    from langchain_core.runnables import RunnableLambda

    model = FakeChatModel(script=[reply("a", usage=(5, 1)), reply("b", usage=(6, 2))])

    async def ask_twice(question: str) -> str:
        return (await model.ainvoke(question)).content + (await model.ainvoke(question)).content

    assert asyncio.run(RunnableLambda(ask_twice, name="twice").ainvoke("q")) == "ab"
    task = only_task(written_session(manager))
    (chain,) = task["agents"]
    assert (chain["agent_type"], chain["agent_name"]) == ("chain", "twice")
    assert [(tokens(c), c["agent_id"]) for c in task["llm_calls"]] == [((5, 1), chain["agent_id"]),
                                                                      ((6, 2), chain["agent_id"])]


def test_a_model_called_between_the_chunks_of_a_graph_stream_is_not_the_graphs(manager):
    agent = create_agent(FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 1})], usage=(30, 3)),
                                               reply("2", usage=(31, 3))]), tools=[add], name="streamed")
    aside = FakeChatModel(model_name="aside", script=[reply("x", usage=(1, 1)), reply("y", usage=(1, 1)),
                                                      reply("z", usage=(1, 1))])

    async def main():
        async for _ in agent.astream(ask(), stream_mode="updates"):
            await aside.ainvoke("meanwhile")

    asyncio.run(main())
    session = written_session(manager)
    task = only_task(session)
    assert [c["model"] for c in task["llm_calls"]] == ["fake-chat", "fake-chat"] and tokens(task) == (61, 6)
    (implicit,) = [t for t in session["tasks"] if t["implicit"]]
    assert [(c["model"], c["agent_id"]) for c in implicit["llm_calls"]] == [("aside", None)] * 3


# -- nesting -------------------------------------------------------------------------------------------------------
def _sub_agent_tool(inner_model):
    inner = create_agent(inner_model, tools=[add], name="researcher")

    @tool
    def research(question: str) -> str:
        """Asks the researcher."""
        return inner.invoke(ask(question))["messages"][-1].content

    @tool
    async def aresearch(question: str) -> str:
        """Asks the researcher."""
        return (await inner.ainvoke(ask(question)))["messages"][-1].content

    return research, aresearch


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_sub_agent_called_as_a_tool_is_nested_with_its_own_calls(manager, mode):
    inner_model = FakeChatModel(model_name="small-model", script=[
        reply(tools=[("add", {"a": 2, "b": 3})], usage=(40, 4)), reply("5", usage=(45, 5))])
    research, aresearch = _sub_agent_tool(inner_model)
    name = "research" if mode == "sync" else "aresearch"
    outer_model = FakeChatModel(model_name="big-model", script=[
        reply(tools=[(name, {"question": "2+3?"})], usage=(400, 40)), reply("it is 5", usage=(450, 45))])
    outer = create_agent(outer_model, tools=[research if mode == "sync" else aresearch], name="lead")
    if mode == "sync":
        outer.invoke(ask())
    else:
        asyncio.run(outer.ainvoke(ask()))

    task = only_task(written_session(manager))
    lead, researcher = task["agents"]
    assert (lead["agent_name"], lead["parent_agent_id"]) == ("lead", None)
    assert (researcher["agent_name"], researcher["parent_agent_id"]) == ("researcher", lead["agent_id"])
    by_agent = {a["agent_id"]: a["agent_name"] for a in task["agents"]}
    assert sorted((by_agent[c["agent_id"]], c["model"], c["prompt_tokens"], c["step_number"])
                  for c in task["llm_calls"]) == [
        ("lead", "big-model", 400, 1), ("lead", "big-model", 450, 2),
        ("researcher", "small-model", 40, 1), ("researcher", "small-model", 45, 2)]
    assert sorted((by_agent[t["agent_id"]], t["tool_name"], t["step_number"]) for t in task["tools"]) == [
        ("lead", name, 1), ("researcher", "add", 1)]
    assert researcher["steps"] == 2 and lead["steps"] == 2
    assert tokens(task) == (935, 94)
    assert task["token_usage"]["model_breakdown"]["small-model"]["prompt_tokens"] == 85


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_subgraph_as_a_node_is_an_agent_nested_under_the_graph(manager, mode):
    inner_model = FakeChatModel(model_name="inner-model", script=[reply("inner says hi", usage=(31, 3))])
    inner = create_agent(inner_model, tools=[], name="inner_agent")
    outer_model = FakeChatModel(model_name="outer-model", script=[reply("outer done", usage=(62, 6))])

    def summarize(state: MessagesState) -> dict:
        return {"messages": [outer_model.invoke(state["messages"])]}

    async def asummarize(state: MessagesState) -> dict:
        return {"messages": [await outer_model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("inner", inner)
    graph.add_node("summarize", summarize if mode == "sync" else asummarize)
    graph.add_edge(START, "inner")
    graph.add_edge("inner", "summarize")
    if mode == "sync":
        graph.compile(name="pipeline").invoke(ask())
    else:
        asyncio.run(graph.compile(name="pipeline").ainvoke(ask()))

    task = only_task(written_session(manager))
    pipeline, inner_rec = task["agents"]
    assert (pipeline["agent_type"], pipeline["agent_name"]) == ("graph", "pipeline")
    assert (inner_rec["agent_type"], inner_rec["parent_agent_id"]) == ("agent", pipeline["agent_id"])
    by_agent = {a["agent_id"]: a["agent_name"] for a in task["agents"]}
    assert sorted((by_agent[c["agent_id"]], c["model"], c["prompt_tokens"]) for c in task["llm_calls"]) == [
        (inner_rec["agent_name"], "inner-model", 31), ("pipeline", "outer-model", 62)]
    assert tokens(task) == (93, 9)


def test_a_langgraph_agent_called_from_a_smolagents_tool_is_nested_under_that_agent(manager):
    from fakes import ScriptedModel, call
    from smolagents import ToolCallingAgent
    from smolagents import tool as smolagents_tool

    helper = create_agent(FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 2})], usage=(7, 1)),
                                                reply("3", usage=(8, 2))]), tools=[add], name="helper")

    def ask_helper(question: str) -> str:
        """Asks the LangGraph helper.

        Args:
            question: what to ask
        """
        return helper.invoke(ask(question))["messages"][-1].content

    lead = ToolCallingAgent(tools=[smolagents_tool(ask_helper)], model=ScriptedModel(
        [call("ask_helper", question="1+2"), call("final_answer", answer="3")], usage=(100, 10)), verbosity_level=0)
    assert lead.run("go") == "3"

    task = only_task(written_session(manager))
    smol, lc = task["agents"]
    assert (smol["framework"], lc["framework"], lc["agent_name"], lc["parent_agent_id"]) == (
        "smolagents", "langchain", "helper", smol["agent_id"])
    assert sorted(tokens(c) for c in task["llm_calls"] if c["agent_id"] == lc["agent_id"]) == [(7, 1), (8, 2)]
    assert tokens(task) == (215, 23)


# -- co-existence and never changing results -------------------------------------------------------------------------
class Counting(BaseCallbackHandler):
    def __init__(self):
        self.events: List[tuple] = []

    def on_chat_model_start(self, serialized, messages, **kwargs):
        self.events.append(("model_start",))

    def on_llm_end(self, response, **kwargs):
        message = response.generations[0][0].message
        self.events.append(("model_end", dict(message.usage_metadata or {})))

    def on_tool_end(self, output, **kwargs):
        self.events.append(("tool_end", output.content))

    def on_tool_error(self, error, **kwargs):
        self.events.append(("tool_error", repr(error)))


def _observed_run(handler):
    model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 2}), ("explode", {"reason": "x"})],
                                        usage=(10, 1)), reply("done", usage=(20, 2))])
    from langgraph.prebuilt import ToolNode, create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(model, tools=ToolNode([add, explode], handle_tool_errors=True))
    result = agent.invoke(ask(), {"callbacks": [handler]})
    return [(type(m).__name__, m.content, getattr(m, "usage_metadata", None), getattr(m, "status", None),
             getattr(m, "response_metadata", None)) for m in result["messages"]]


@pytest.mark.parametrize("mode", ["enabled", "disabled", "broken"])
def test_results_and_other_handlers_events_are_the_same_with_telemetry(manager, uninstrumented, monkeypatch, mode):
    with uninstrumented:
        plain = Counting()
        expected = _observed_run(plain)
    if mode == "disabled":
        manager.disable_telemetry()
    if mode == "broken":
        def broken(*args, **kwargs):
            raise RuntimeError("telemetry bug")

        for name in ("begin_run", "model_call", "model_returned", "tool_call", "tool_returned", "record_step",
                     "end_run"):
            monkeypatch.setattr(recorder, name, broken)
    seen = Counting()
    assert _observed_run(seen) == expected
    assert sorted(seen.events, key=repr) == sorted(plain.events, key=repr)  # (the two tools run in parallel)
    if mode == "broken":
        assert get_error_handler().total_errors() > 0
    if mode == "disabled":
        assert manager.flush_data() is None
        manager.enable_telemetry()
    if mode == "enabled":
        task = only_task(written_session(manager))
        assert tokens(task) == (30, 3)


def test_an_async_llm_start_still_reaches_the_other_handlers(manager, uninstrumented):
    # langchain-core's AsyncCallbackManager.on_llm_start gives an LLM's start only to the inline handlers when there
    # are any: ours must not make the user's handler, or astream_events, miss it.
    class Starts(BaseCallbackHandler):
        def __init__(self):
            self.starts = 0

        def on_llm_start(self, serialized, prompts, **kwargs):
            self.starts += 1

    def observe():
        handler = Starts()
        chain = ChatPromptTemplate.from_template("{q}") | FakeListLLM(responses=["fine"])

        async def main():
            return [e["event"] async for e in chain.astream_events({"q": "x"}, {"callbacks": [handler]},
                                                                   version="v2")]

        return asyncio.run(main()), handler.starts

    with uninstrumented:
        expected = observe()
    assert "on_llm_start" in expected[0] and expected[1] == 1
    assert observe() == expected
    (call,) = only_task(written_session(manager))["llm_calls"]
    assert call["model"] == "FakeListLLM" and call["tokens_reported"] is False


def test_usage_and_response_metadata_are_not_mutated(manager):
    message = reply("same", usage=(5, 5), model="m-1", cached=2)
    before = (dict(message.usage_metadata), dict(message.response_metadata), message.usage_metadata)
    result = FakeChatModel(script=[message]).invoke("q")
    assert result.usage_metadata == before[0] and result.response_metadata["model_name"] == "m-1"
    written_session(manager)
    assert message.usage_metadata == before[0] and message.usage_metadata is before[2]
    assert message.response_metadata == before[1]


def test_openinference_langchain_tracer_sees_the_same_run_beside_us(manager):
    pytest.importorskip("openinference.instrumentation.langchain")
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 2})], usage=(10, 1)),
                                      reply("3", usage=(20, 2))])
        create_agent(model, tools=[add]).invoke(ask())
    finally:
        instrumentor.uninstrument()
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("FakeChatModel") == 2 and names.count("add") == 1
    task = only_task(written_session(manager))
    assert tokens(task) == (30, 3) and tools(task) == [("add", "success", 1)]


def test_a_handler_disabled_for_one_context_records_nothing_there(manager):
    model = FakeChatModel(script=[reply("a", usage=(1, 1)), reply("b", usage=(2, 2))])
    token = integration.integration.context_var.set(None)
    try:
        model.invoke("not recorded")
    finally:
        integration.integration.context_var.reset(token)
    model.invoke("recorded")
    (implicit,) = written_session(manager)["tasks"]
    assert [tokens(c) for c in implicit["llm_calls"]] == [(2, 2)]


def test_content_is_not_recorded_by_default_and_kept_clipped_when_opted_in(manager, storage_dir):
    def run():
        model = FakeChatModel(script=[reply(tools=[("add", {"a": 40, "b": 2})]), reply("the private answer is 42")])
        create_agent(model, tools=[add]).invoke(ask("a private question"))

    run()
    raw = manager.flush_data().read_text()
    assert "private" not in raw

    manager.initialize({"storage_dir": str(storage_dir), "capture_content": True, "max_string_length": 20,
                        "auto_cleanup": False, "fsync": False})
    run()
    task = real_tasks(written_session(manager))[-1]
    first, second = task["llm_calls"]
    assert (first["input_preview"], first["output_preview"]) == ("a private question", "add({'a': 40, 'b': …")
    assert second["output_preview"] == "the private answer …"
    (call,) = task["tools"]
    assert (call["arguments_preview"], call["output_preview"]) == ("{'a': 40, 'b': 2}", "42")


# -- install / uninstall ---------------------------------------------------------------------------------------
def _patched():
    """The callback-manager methods that are ours now."""
    from langchain_core.callbacks import manager as managers

    from sop_telemetry.integrations.patching import is_ours

    return sorted(f"{name}.{attr}" for name, cls in vars(managers).items() if isinstance(cls, type)
                  for attr, value in vars(cls).items() if is_ours(value))


def test_install_is_idempotent_and_uninstall_puts_the_managers_back(manager):
    from langchain_core.callbacks import CallbackManager

    patched = _patched()
    assert integration.is_installed() and "CallbackManager.on_chain_start" in patched
    assert "AsyncCallbackManagerForLLMRun.on_llm_end" in patched and len(patched) == 28
    assert integration.install() is True
    assert _patched() == patched
    model = FakeChatModel(script=[reply("a", usage=(1, 1)), reply("b", usage=(2, 2))])
    integration.uninstall()
    try:
        assert _patched() == []
        assert CallbackManager.on_chain_start.__module__ == "langchain_core.callbacks.manager"
        integration.uninstall()  # idempotent
        model.invoke("unrecorded")
        assert manager.get_collector().has_records() is False
    finally:
        integration.install()
    assert _patched() == patched
    model.invoke("recorded")
    (implicit,) = written_session(manager)["tasks"]
    assert [tokens(c) for c in implicit["llm_calls"]] == [(2, 2)]


def test_no_callback_handler_is_added_to_any_run(manager):
    from langchain_core.callbacks import BaseCallbackHandler, CallbackManager

    seen = []

    class Mine(BaseCallbackHandler):
        def on_chain_start(self, serialized, inputs, **kwargs):
            seen.append(kwargs["run_id"])

    from langchain_core.runnables import RunnableLambda

    chain = RunnableLambda(lambda x: x + 1) | RunnableLambda(lambda x: x * 2)
    assert chain.invoke(1, {"callbacks": [Mine()]}) == 4 and len(seen) == 3
    configured = CallbackManager.configure(inheritable_callbacks=[Mine()])
    assert [type(h).__name__ for h in configured.handlers] == ["Mine"]


def test_unsupported_langchain_core_is_left_alone_with_one_warning(manager, monkeypatch, caplog):
    integration.uninstall()
    monkeypatch.setattr(integration.integration, "version", lambda: "0.3.70")
    try:
        with caplog.at_level("WARNING", logger="sop_telemetry"):
            assert integration.install() is False
            assert integration.install() is False
        assert [r.getMessage() for r in caplog.records].count(
            "sop_telemetry: langchain 0.3.70 is outside the supported range (>=1.0,<2); it is not instrumented") == 1
        assert _patched() == []
    finally:
        monkeypatch.undo()
        integration.install()


def _python(code: str, tmp_path) -> str:
    env = {"SOP_TELEMETRY_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_sop_telemetry_alone_records_a_langgraph_program_and_the_file_survives_exit(tmp_path):
    _python("import sop_telemetry, sys\n"
            "from langchain.agents import create_agent\n"
            "from langchain_fakes import FakeChatModel, reply, add\n"
            "model = FakeChatModel(script=[reply(tools=[('add', {'a': 1, 'b': 2})], usage=(100, 10)),"
            " reply('3', usage=(120, 12))])\n"
            "create_agent(model, tools=[add]).invoke({'messages': [('user', 'add')]})\n", tmp_path)
    out = _python("from sop_telemetry import TelemetryDataStore\n"
                  "(s,) = TelemetryDataStore(__import__('os').environ['SOP_TELEMETRY_DIR']).iter_sessions()\n"
                  "print(s.total_tokens.prompt_tokens, s.total_tokens.completion_tokens, len(s.tasks),"
                  " s.tasks[0].status.value, [t.tool_name for t in s.tasks[0].tools])", tmp_path)
    assert out == "220 22 1 completed ['add']"


def test_import_sop_telemetry_does_not_import_langchain(tmp_path):
    assert _python("import sys, sop_telemetry; print([m for m in sys.modules if m.startswith(('langchain',"
                   " 'langgraph'))])", tmp_path) == "[]"
