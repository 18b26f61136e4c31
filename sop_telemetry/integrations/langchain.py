"""LangChain and LangGraph: every graph or chain run, chat-model call and tool call, through LangChain's callbacks.

Usage::

    import sop_telemetry            # that is all: the handler below is given to every LangChain run from now on
    agent = create_agent(model, tools=[search])
    agent.invoke({"messages": [("user", "...")]})

    from sop_telemetry import registry
    registry.get("langchain").uninstall()       # and .install()

How it hooks: one `SopCallbackHandler` is registered with `langchain_core.tracers.context.register_configure_hook`
through a context variable whose default is the handler, so LangChain's callback manager adds it to every run it
configures, in every thread and asyncio task, beside the user's handlers, LangSmith's tracer and OpenInference's; a
context that sets the variable to None opts out. LangChain tells the handler each run's id and its parent's, and
nesting comes from those ids: never from the thread or task an event arrives on. (One exception, on Python 3.10
only: the runs that LangGraph gives the wrong parent in an async node's body are put back under the node, found
through a context variable; see _node_here.)

What becomes what (the guide, docs/langchain.md, says why):

- a run with no parent we know (a graph, an agent, a chain invoked by the program) is an agent run: a task of its
  own, or nested under the current sop_telemetry run (a smolagents agent's tool, say) if there is one;
- a chain run one of whose children is a LangGraph node (tagged ``graph:step:N``) is a graph: a subgraph or a
  sub-agent called from a node or from a tool is an agent run nested under the run it was called in;
- a chat-model or LLM call, a tool call: a record in the nearest agent run (a model or tool invoked on its own,
  outside any run: in the current sop_telemetry run, else the session's implicit task);
- steps: each round of an agent run (its model calls in one LangGraph superstep, and the tool calls after them until
  the next model call) is an "action" step, recorded when the run ends.

Everything here runs inside LangChain's callbacks, on the caller's thread: it reads a few fields, keeps a small
per-run object keyed by run id, and hands the rest to the recorder, which builds the records later. Each callback is
guarded whole; LangChain would log an exception from a handler, but it never gets one from this one.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from .. import recorder
from ..collector import switch
from ..error_handler import report
from ..recorder import attr, clock
from ..registry import DidNotEnable, Integration, version_in

logger = logging.getLogger("sop_telemetry")

FRAMEWORK = "langchain"
_GRAPH_STEP = "graph:step:"


class _Agent:
    """An agent run (a graph, an agent, or a chain invoked on its own) and its steps. Begun with the recorder only
    when something is recorded in it (a graph's first node, a call): a prompt or a parser invoked on its own records
    nothing. `rounds` holds, per step, [number, start, end, superstep, is_final, error]."""

    __slots__ = ("run", "parent", "name", "kind", "start", "rounds", "lock")

    def __init__(self, parent: Any, name: Any, kind: str, start: float) -> None:
        self.run: Any = None
        self.parent = parent  # the enclosing _Agent, or the sop_telemetry run current when it began (or None)
        self.name = name
        self.kind = kind
        self.start = start
        self.rounds: List[list] = []
        self.lock = threading.Lock()

    def ensure(self) -> Any:
        """The recorder's run, begun now (with the start noted earlier) if it was not yet."""
        run = self.run
        if run is None:
            with self.lock:
                run = self.run
                if run is None:
                    parent = self.parent
                    if isinstance(parent, _Agent):
                        parent = parent.ensure()
                    start = time.time() - (clock() - self.start)
                    run = self.run = recorder.begin_run(FRAMEWORK, self.kind, self.name, task=self.name or "",
                                                        parent=parent, start=start)
        return run

    def open_round(self, superstep: Any, now: float) -> int:
        """The step a model call starting now belongs to: the current one if it began in the same LangGraph
        superstep (parallel model nodes), else a new one."""
        with self.lock:
            rounds = self.rounds
            if rounds and superstep is not None and rounds[-1][3] == superstep:
                return rounds[-1][0]
            number = len(rounds) + 1
            rounds.append([number, now, now, superstep, False, None])
            return number

    def current_round(self) -> Optional[int]:
        rounds = self.rounds
        return rounds[-1][0] if rounds else None

    def ended(self, number: Optional[int], end: float, final: Optional[bool] = None,
              error: Optional[BaseException] = None) -> None:
        if number is None:
            return
        with self.lock:
            entry = self.rounds[number - 1]
            if end > entry[2]:
                entry[2] = end
            if final is not None:
                entry[4] = final
            if error is not None and entry[5] is None:
                entry[5] = error

    def finish(self, error: Optional[BaseException]) -> None:
        """Records the run's steps and ends it (if it was begun: else nothing was recorded in it)."""
        run = self.run
        if run is None:
            return
        rounds = self.rounds
        if error is not None and rounds and rounds[-1][5] is None and not isinstance(error, GeneratorExit):
            rounds[-1][5] = error  # (a stream closed early is a cancelled run, not a failed step)
        last = len(rounds)
        for number, start, end, _superstep, final, step_error in rounds:
            recorder.record_step(number, "action", start, end, run=run, error=step_error,
                                 is_final_answer=bool(final and number == last and error is None))
        stop = "max_steps" if type(error).__name__ == "GraphRecursionError" else None
        recorder.end_run(run, error=error, stop_reason=stop)


class _Node:
    """What the handler keeps of one LangChain run until it ends."""

    __slots__ = ("agent", "own", "start", "label", "step", "call_id", "failed", "streamed", "content")

    def __init__(self, agent: Optional[_Agent], start: float, label: Any = None, own: bool = False) -> None:
        self.agent = agent  # the agent run this run's records go to (None: outside any)
        self.own = own  # whether this run is that agent run itself
        self.start = start
        self.label = label  # a chain's or tool's name; the model a call asked for
        self.step: Optional[int] = None
        self.call_id: Any = None  # a tool run's tool_call_id
        # Failed tool calls among this run's children, waiting for this run's end to tell whether their error went
        # back to the model (a ToolMessage with status "error" in this run's output) or on up.
        self.failed: Optional[list] = None
        self.streamed = False
        self.content: Any = None  # with capture_content on: the call's input (its last message, its arguments)


def _agent_type(metadata: Optional[dict]) -> str:
    """"agent" for langchain.agents.create_agent, "graph" for another LangGraph graph, "chain" otherwise; read from
    the `ls_integration` key LangGraph and create_agent put in their run's metadata."""
    kind = metadata.get("ls_integration") if metadata else None
    if kind == "langchain_create_agent":
        return "agent"
    if kind == "langgraph":
        return "graph"
    return "chain"


def _model_name(serialized: Optional[dict], metadata: Optional[dict], kwargs: dict) -> Any:
    """The model a call asked for (the reply's own name, read at its end, wins): LangChain's `ls_model_name`, else
    the invocation parameters' model, else the model class."""
    name = metadata.get("ls_model_name") if metadata else None
    if name:
        return name
    params = kwargs.get("invocation_params")
    if isinstance(params, dict):
        for key in ("model", "model_name", "model_id", "deployment_name"):
            if params.get(key):
                return params[key]
    if serialized:
        ids = serialized.get("id")
        if isinstance(ids, list) and ids:
            return ids[-1]
        return serialized.get("name")
    return None


def _reply(response: Any) -> tuple:
    """(message or None, usage or None, the model's name for itself or None) of an LLMResult. The usage is that of
    the first generation that has one (with n candidates, LangChain's providers put the whole call's usage on each),
    else the provider's `llm_output` (LLMs, older chat models); the name, the reply's `response_metadata` or the
    `llm_output`'s."""
    try:  # the usual case, read plainly: one reply that carries its usage
        message = response.generations[0][0].message
        usage = message.usage_metadata
        if usage:
            return message, dict(usage), _name_in(message.response_metadata, response.llm_output)
    except Exception:  # noqa: BLE001 - anything else: read piece by piece below
        pass
    output = attr(response, "llm_output")
    message = usage = None
    for candidates in attr(response, "generations") or ():
        for generation in candidates or ():
            found = attr(generation, "message")
            if found is None:
                continue
            if message is None:
                message = found
            found_usage = attr(found, "usage_metadata")
            if found_usage:
                message, usage = found, dict(found_usage)
                break
        if usage is not None:
            break
    if usage is None and isinstance(output, dict):
        reported = output.get("token_usage") or output.get("usage")
        if isinstance(reported, dict) and reported:
            usage = dict(reported)
    return message, usage, _name_in(attr(message, "response_metadata"), output)


def _name_in(metadata: Any, output: Any) -> Optional[str]:
    for source in (metadata, output):
        if isinstance(source, dict):
            name = source.get("model_name") or source.get("model")
            if isinstance(name, str) and name:
                return name
    return None


def _capturing(agent: Optional[_Agent]) -> bool:
    run = agent.run if agent is not None else None
    collector = getattr(run, "collector", None)
    return bool(collector.capture_content) if collector is not None else recorder.capturing()


def _last_content(items: Any) -> Any:
    """What a model was asked: the content of the last message (or prompt) of its first input."""
    first = items[0] if isinstance(items, list) and items else None
    last = first[-1] if isinstance(first, list) and first else first
    return attr(last, "content") if last is not None and not isinstance(last, str) else last


def _said(message: Any) -> Any:
    """What a model answered: its text, else the tool calls it asked for."""
    text = attr(message, "content") or attr(message, "text")
    if text:
        return text
    calls = attr(message, "tool_calls")
    return ", ".join(f"{call.get('name')}({call.get('args')})" for call in calls) if calls else None


def _error_messages(output: Any, depth: int = 0) -> Dict[Any, bool]:
    """The tool call ids of the ToolMessages with status "error" in a run's output (a ToolNode's: a dict of
    messages, a list of them or of Commands)."""
    found: Dict[Any, bool] = {}
    if depth > 3:
        return found
    if attr(output, "type") == "tool":
        if attr(output, "status") == "error":
            found[attr(output, "tool_call_id")] = True
        return found
    items: Any
    if isinstance(output, dict):
        items = output.values()
    elif isinstance(output, (list, tuple)):
        items = output
    else:
        update = attr(output, "update")  # a LangGraph Command
        if update is None:
            return found
        items = (update,)
    for item in items:
        found.update(_error_messages(item, depth + 1))
    return found


_SORTING_CODE: Any = None  # the code of langchain-core's AsyncCallbackManager.on_llm_start (see run_inline)

# Before Python 3.11 an asyncio task cannot be given a context, and LangGraph then runs an async node's body without
# the node's config in context: what the body calls without passing `config` reaches the handler with the parent of
# the config that was in context when the node began (none, or a run outside the node). There the handler keeps,
# per context, the LangGraph nodes begun in it (innermost first) to put those runs back under their node.
_NODE_LOST = sys.version_info < (3, 11)
_node_here: contextvars.ContextVar = contextvars.ContextVar("sop_telemetry_langgraph_node", default=None)
_runnable_config: Any = None  # langchain-core's var_child_runnable_config, on Python 3.10
_running_loop: Any = None  # asyncio's _get_running_loop, on Python 3.10


def _parent_in_context() -> Optional[int]:
    """The parent run a runnable called here without `config` gets: that of the callback manager in the runnable
    config in context (a list of handlers, or none, gives none)."""
    config = _runnable_config.get()
    parent = getattr(config.get("callbacks"), "parent_run_id", None) if isinstance(config, dict) else None
    return parent.int if parent is not None else None


class _Begun:
    """(Python 3.10) A LangGraph node begun in a context. Its end cannot take it off (langchain-core reports an async
    end from a shielded task, in a copy of the context): it is skipped once the node has ended."""

    __slots__ = ("key", "under", "lost_parent", "superstep")

    def __init__(self, key: int, under: Optional[_Begun], metadata: Optional[dict]) -> None:
        self.key = key  # the node's run id's integer
        self.under = under  # the entry it was begun in, if any
        self.lost_parent = _parent_in_context()  # the parent LangGraph gives the runs in its body
        self.superstep = metadata.get("langgraph_step") if metadata else None


def _make_handler_class() -> type:
    global _SORTING_CODE, _runnable_config, _running_loop
    from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackHandler

    _SORTING_CODE = getattr(getattr(AsyncCallbackManager, "on_llm_start", None), "__code__", None)
    if _NODE_LOST:
        from asyncio.events import _get_running_loop
        from langchain_core.runnables.config import var_child_runnable_config

        _runnable_config, _running_loop = var_child_runnable_config, _get_running_loop

    class SopCallbackHandler(BaseCallbackHandler):
        """sop_telemetry's LangChain callback handler: see the module's docstring."""

        raise_error = False

        @property
        def run_inline(self) -> bool:  # type: ignore[override]
            """True: called on the event's own thread or event loop, never through an executor (cheap, in order).
            Except where langchain-core's AsyncCallbackManager.on_llm_start sorts its handlers: when any handler is
            inline it gives an LLM's start to the inline ones only, and every other handler (Langfuse's, a user's,
            astream_events') would miss it because of us. There we say False: it then calls us with the others,
            and inline all the same (see ahandle_event)."""
            frame = sys._getframe(1)
            caller = frame.f_back  # (the comprehension that reads this has its own frame before Python 3.12)
            return not (frame.f_code is _SORTING_CODE or caller is not None and caller.f_code is _SORTING_CODE)

        # Read by the callback manager for every event; plain attributes are cheaper than the base class's
        # properties. Custom events are not runs.
        ignore_llm = ignore_chain = ignore_agent = ignore_retriever = ignore_chat_model = ignore_retry = False
        ignore_custom_event = True

        def __init__(self) -> None:
            super().__init__()
            # Keyed by the run id's integer: a UUID hashes in Python code, its int in C.
            self.nodes: Dict[int, _Node] = {}

        def _or_lost(self, parent_run_id: Any, parent: Optional[_Node]) -> Optional[_Node]:
            """(Python 3.10) The node whose body made this run (see _lost), else its parent as reported."""
            if _node_here.get() is None:
                return parent
            lost = self._lost(parent_run_id)
            return parent if lost is None else lost[0]

        def _lost(self, parent_run_id: Any) -> Optional[tuple]:
            """(Python 3.10) (the LangGraph node whose body made this run, its superstep) if LangGraph gave the run
            the parent that every run in that body gets instead of the node; else None."""
            begun, node = self._innermost()
            if begun is None or begun.lost_parent != (parent_run_id.int if parent_run_id is not None else None):
                return None
            return node, begun.superstep

        def _innermost(self) -> tuple:
            """(Python 3.10) (entry, node) of the innermost LangGraph node begun in this context and still running,
            or (None, None)."""
            begun = _node_here.get()
            nodes = self.nodes
            while begun is not None:
                node = nodes.get(begun.key)
                if node is not None:
                    return begun, node
                begun = begun.under
            return None, None

        def _child(self, parent: Optional[_Node], start: float, label: Any) -> _Node:
            agent = parent.agent if parent is not None else None
            if agent is not None and agent.run is None:
                agent.ensure()  # something is recorded in it: it begins now, from its own start
            return _Node(agent, start, label)

        # -- chains: agent runs and what nests them ----------------------------------------------------------
        def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: Any, parent_run_id: Any = None,
                           tags: Optional[List[str]] = None, metadata: Optional[dict] = None,
                           **kwargs: Any) -> None:
            if not switch.enabled:
                return
            try:
                now = clock()
                nodes = self.nodes
                parent = nodes.get(parent_run_id.int) if parent_run_id is not None else None
                if _NODE_LOST:
                    parent = self._or_lost(parent_run_id, parent)
                name = kwargs.get("name")
                if parent is None:
                    node = _Node(_Agent(recorder.current_run(), name, _agent_type(metadata), now), now, name, True)
                else:
                    node = _Node(parent.agent, now, name)
                    for tag in tags or ():
                        if tag.startswith(_GRAPH_STEP):
                            # A LangGraph node: its parent is a graph, an agent run of its own.
                            graph = parent.agent
                            if graph is None or not parent.own:
                                graph = parent.agent = _Agent(parent.agent, parent.label, _agent_type(metadata),
                                                              parent.start)
                                parent.own = True
                            node.agent = graph
                            if graph.run is None:
                                graph.ensure()
                            if _NODE_LOST and _running_loop() is not None:  # (a sync node's context is whole)
                                _node_here.set(_Begun(run_id.int, self._innermost()[0], metadata))
                            break
                nodes[run_id.int] = node
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.chain", exc)

        def on_chain_end(self, outputs: Any, *, run_id: Any, **kwargs: Any) -> None:
            self._chain_ended(run_id, outputs, None)

        def on_chain_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
            self._chain_ended(run_id, None, error)

        def _chain_ended(self, run_id: Any, outputs: Any, error: Optional[BaseException]) -> None:
            try:
                node = self.nodes.pop(run_id.int, None)
                if node is None:
                    return
                if node.failed is not None:
                    self._settle(node, outputs)
                if node.own and node.agent is not None:
                    node.agent.finish(error)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.chain", exc)

        # -- model calls ----------------------------------------------------------------------------------------
        def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, parent_run_id: Any = None,
                                tags: Optional[List[str]] = None, metadata: Optional[dict] = None,
                                **kwargs: Any) -> None:
            self._model_start(serialized, messages, run_id, parent_run_id, metadata, kwargs)

        def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: Any, parent_run_id: Any = None,
                         tags: Optional[List[str]] = None, metadata: Optional[dict] = None, **kwargs: Any) -> None:
            self._model_start(serialized, prompts, run_id, parent_run_id, metadata, kwargs)

        def _model_start(self, serialized: Any, inputs: Any, run_id: Any, parent_run_id: Any,
                         metadata: Optional[dict], kwargs: dict) -> None:
            if not switch.enabled:
                return
            try:
                now = clock()
                parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
                superstep = metadata.get("langgraph_step") if metadata else None
                if _NODE_LOST and _node_here.get() is not None:
                    lost = self._lost(parent_run_id)
                    if lost is not None:  # (and the metadata is that of the config LangGraph left in context)
                        parent, superstep = lost
                node = self._child(parent, now, _model_name(serialized, metadata, kwargs))
                if node.agent is not None:
                    node.step = node.agent.open_round(superstep, now)
                if _capturing(node.agent):
                    node.content = _last_content(inputs)
                self.nodes[run_id.int] = node
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.model", exc)

        def on_llm_new_token(self, token: Any, *, run_id: Any, **kwargs: Any) -> None:
            try:
                node = self.nodes.get(run_id.int)
                if node is not None:
                    node.streamed = True
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.model", exc)

        def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
            try:
                node = self.nodes.pop(run_id.int, None)
                if node is None:
                    return
                end = clock()
                message, usage, name = _reply(response)
                agent = node.agent
                run = agent.run if agent is not None else None
                if node.streamed or node.content is not None or not recorder.model_returned(
                        run, name or node.label, usage, node.step, node.start, end):
                    recorder.model_call(name or node.label, usage, node.start, end, run=run, streamed=node.streamed,
                                        step=node.step, input=node.content,
                                        output=_said(message) if node.content is not None else None)
                if agent is not None:
                    agent.ended(node.step, end, final=not attr(message, "tool_calls"))
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.model", exc)

        def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
            try:
                node = self.nodes.pop(run_id.int, None)
                if node is None:
                    return
                end = clock()
                # What a stream delivered before it broke, usage included if the provider sent it.
                _message, usage, name = _reply(kwargs.get("response"))
                agent = node.agent
                recorder.model_call(name or node.label, usage, node.start, end,
                                    run=agent.run if agent is not None else None, streamed=node.streamed,
                                    step=node.step, error=error)
                if agent is not None:
                    agent.ended(node.step, end, error=error)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.model", exc)

        # -- tool calls -----------------------------------------------------------------------------------------
        def on_tool_start(self, serialized: Any, input_str: Any, *, run_id: Any, parent_run_id: Any = None,
                          tags: Optional[List[str]] = None, metadata: Optional[dict] = None,
                          **kwargs: Any) -> None:
            if not switch.enabled:
                return
            try:
                parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
                if _NODE_LOST:
                    parent = self._or_lost(parent_run_id, parent)
                node = self._child(parent, clock(), kwargs.get("name") or (serialized or {}).get("name"))
                node.call_id = kwargs.get("tool_call_id")
                if node.agent is not None:
                    node.step = node.agent.current_round()
                if _capturing(node.agent):
                    node.content = input_str
                self.nodes[run_id.int] = node
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.tool", exc)

        def on_tool_end(self, output: Any, *, run_id: Any, **kwargs: Any) -> None:
            try:
                node = self.nodes.pop(run_id.int, None)
                if node is None:
                    return
                end = clock()
                error = None
                if attr(output, "status") == "error" and attr(output, "type") == "tool":
                    # The tool handled its own error (handle_tool_error / handle_validation_error): only the
                    # message the model gets is left of it.
                    error = ("ToolError", attr(output, "content"))
                self._tool_ended(node, end, error, error is not None, output)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.tool", exc)

        def on_tool_error(self, error: BaseException, *, run_id: Any, parent_run_id: Any = None,
                          **kwargs: Any) -> None:
            try:
                node = self.nodes.pop(run_id.int, None)
                if node is None:
                    return
                end = clock()
                parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
                if node.call_id is not None and parent is not None:
                    # Whether the error goes back to the model is known when the caller (a ToolNode) ends.
                    if parent.failed is None:
                        parent.failed = []
                    parent.failed.append((node, end, error))
                else:
                    self._tool_ended(node, end, error, False)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.tool", exc)

        def _tool_ended(self, node: _Node, end: float, error: Any, returned: bool, output: Any = None) -> None:
            agent = node.agent
            run = agent.run if agent is not None else None
            if error is not None or node.content is not None or not recorder.tool_returned(
                    run, node.label, node.step, node.start, end):
                if node.content is not None and output is not None:
                    output = attr(output, "content") if attr(output, "type") == "tool" else output
                recorder.tool_call(node.label, node.start, end, run=run, step=node.step, error=error,
                                   error_returned_to_model=returned, arguments=node.content,
                                   output=output if node.content is not None else None)
            if agent is not None:
                agent.ended(node.step, end)

        def _settle(self, caller: _Node, outputs: Any) -> None:
            handed_back = _error_messages(outputs) if outputs is not None else {}
            for node, end, error in caller.failed or ():
                self._tool_ended(node, end, error, node.call_id in handed_back)
            caller.failed = None

        # -- retrievers: runs that may have children --------------------------------------------------------
        def on_retriever_start(self, serialized: Any, query: Any, *, run_id: Any, parent_run_id: Any = None,
                               **kwargs: Any) -> None:
            if not switch.enabled:
                return
            try:
                parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
                if _NODE_LOST:
                    parent = self._or_lost(parent_run_id, parent)
                self.nodes[run_id.int] = _Node(parent.agent if parent is not None else None, 0.0)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.retriever", exc)

        def on_retriever_end(self, documents: Any, *, run_id: Any, **kwargs: Any) -> None:
            self._forget(run_id)

        def on_retriever_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
            self._forget(run_id)

        def _forget(self, run_id: Any) -> None:
            try:
                self.nodes.pop(run_id.int, None)
            except Exception as exc:  # noqa: BLE001 - the guard
                report("langchain.retriever", exc)

    return SopCallbackHandler


class LangChainIntegration(Integration):
    name = "langchain"
    module = "langchain_core"
    distribution = "langchain-core"
    supported = ">=1.0,<2"
    # LangGraph is not hooked itself: its runs reach the handler through langchain-core's callbacks, and only its
    # run metadata and tags are read. Tested with the range below.
    langgraph_supported = ">=1.0,<2"

    def __init__(self) -> None:
        super().__init__()
        self.handler: Any = None
        # Its default is the handler; a context that sets it to None is not recorded.
        self.context_var: Optional[contextvars.ContextVar] = None

    def setup(self) -> None:
        try:
            from langchain_core.tracers import context as tracer_context
        except ImportError as exc:
            raise DidNotEnable(f"langchain_core.tracers.context cannot be imported: {exc}") from exc
        register = getattr(tracer_context, "register_configure_hook", None)
        hooks = getattr(tracer_context, "_configure_hooks", None)
        if register is None or not isinstance(hooks, list):
            raise DidNotEnable("langchain_core has no register_configure_hook")
        self._check_langgraph()
        if self.handler is None:
            self.handler = _make_handler_class()()
            # The default is the handler: a variable set in one thread would not be seen in LangGraph's pool.
            self.context_var = contextvars.ContextVar("sop_telemetry_langchain", default=self.handler)
        register(self.context_var, True)

    def _check_langgraph(self) -> None:
        try:
            from importlib.metadata import version

            found = version("langgraph")
        except Exception:  # noqa: BLE001 - not installed: LangChain alone is recorded all the same
            return
        if not version_in(found, self.langgraph_supported):
            logger.warning("sop_telemetry: langgraph %s is outside the tested range (%s); its runs are recorded "
                           "through langchain-core's callbacks, but graphs may not be told from chains",
                           found, self.langgraph_supported)

    def teardown(self) -> None:
        from langchain_core.tracers import context as tracer_context

        hooks = getattr(tracer_context, "_configure_hooks", None)
        if isinstance(hooks, list):
            hooks[:] = [hook for hook in hooks if hook[0] is not self.context_var]
        # Runs under way keep the handler in their managers; their ends still find their nodes.


integration = LangChainIntegration()
install, uninstall, is_installed = integration.install, integration.uninstall, integration.is_installed
