"""LangChain and LangGraph: every graph or chain run, chat-model call and tool call, through LangChain's callbacks.

Usage::

    import sop_telemetry            # that is all: every LangChain run from now on is observed
    agent = create_agent(model, tools=[search])
    agent.invoke({"messages": [("user", "...")]})

    from sop_telemetry import registry
    registry.get("langchain").uninstall()       # and .install()

How it hooks: langchain-core's callback managers tell their handlers of each run's start and end, with the run's id
and its parent's; every runnable, model, tool and LangGraph graph goes through them, in every thread and asyncio task.
We observe those same calls (`CallbackManager.on_chain_start`, `CallbackManagerForLLMRun.on_llm_end`, ... and their
async twins) rather than add a handler: langchain-core does work for every handler on every run, which on a fast run
cost more than the 2% budget before this module did anything (docs/langchain.md has the figures). The handlers'
lists are left alone, so LangSmith's tracer, Langfuse's, OpenInference's and the user's see what they saw. Nesting
comes from the run ids: never from the thread or task an event arrives on (one exception, on Python 3.10 only: the
runs LangGraph gives the wrong parent in an async node's body are put back under the node, see _LostRunEvents). A
context that sets `recording` to False is not recorded.

What becomes what (the guide, docs/langchain.md, says why):

- a run with no parent we know (a graph, an agent, a chain invoked by the program) is an agent run: a task of its
  own, or nested under the current sop_telemetry run (a smolagents agent's tool, say) if there is one;
- a chain run one of whose children is a LangGraph node (tagged ``graph:step:N``) is a graph: a subgraph or a
  sub-agent called from a node or from a tool is an agent run nested under the run it was called in;
- a chat-model or LLM call, a tool call: a record in the nearest agent run (a model or tool invoked on its own,
  outside any run: in the current sop_telemetry run, else the session's implicit task);
- steps: each round of an agent run (its model calls in one LangGraph superstep, and the tool calls after them until
  the next model call) is an "action" step, recorded when the run ends.

Everything here runs on the caller's thread: it reads a few fields, keeps a small per-run object keyed by run id, and
hands the rest to the recorder, which builds the records later. Each observation is guarded whole; the managers'
own work, arguments, results and exceptions are untouched.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .. import recorder
from ..collector import Clock, switch
from ..error_handler import report
from ..recorder import attr, clock
from ..registry import DidNotEnable, Integration, version_in
from .patching import Patcher

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
    """What is kept of one LangChain run until it ends."""

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


class _Events:
    """What the callback managers' events (below) are turned into: one small `_Node` per LangChain run, keyed by
    the run id's integer, until the run ends; the records are queued on the recorder. Every method is guarded."""

    def __init__(self) -> None:
        # Keyed by the run id's integer: a UUID hashes in Python code, its int in C.
        self.nodes: Dict[int, _Node] = {}

    def _child(self, parent_run_id: Any, start: float, label: Any) -> _Node:
        parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
        agent = parent.agent if parent is not None else None
        if agent is not None and agent.run is None:
            agent.ensure()  # something is recorded in it: it begins now, from its own start
        return _Node(agent, start, label)

    # -- chains: agent runs and what nests them ----------------------------------------------------------
    def chain_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        try:
            nodes = self.nodes
            parent_run_id = manager.parent_run_id
            parent = nodes.get(parent_run_id.int) if parent_run_id is not None else None
            name = kwargs.get("name")
            metadata = manager.metadata
            if parent is None:
                node = _Node(_Agent(recorder.current_run(), name, _agent_type(metadata), now), now, name, True)
            else:
                node = _Node(parent.agent, now, name)
                for tag in manager.tags or ():
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
                        break
            nodes[run.run_id.int] = node
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.chain", exc)

    def chain_end(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is not None and (node.failed is not None or node.own):
                self._chain_ended(node, args[0] if args else kwargs.get("outputs"), None)
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.chain", exc)

    def chain_error(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is not None:
                self._chain_ended(node, None, args[0] if args else kwargs.get("error"))
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.chain", exc)

    def _chain_ended(self, node: _Node, outputs: Any, error: Optional[BaseException]) -> None:
        if node.failed is not None:
            self._settle(node, outputs)
        if node.own and node.agent is not None:
            node.agent.finish(error)

    # -- model calls ----------------------------------------------------------------------------------------
    def model_start(self, manager: Any, runs: Any, args: tuple, kwargs: dict, now: float) -> None:
        """A chat model's or an LLM's start: one run per prompt (`runs`), the prompts in `args[1]`."""
        try:
            metadata = manager.metadata
            serialized = args[0] if args else kwargs.get("serialized")
            inputs = args[1] if len(args) > 1 else kwargs.get("messages", kwargs.get("prompts"))
            label = _model_name(serialized, metadata, kwargs)
            superstep = metadata.get("langgraph_step") if metadata else None
            for index, run in enumerate(runs):
                node = self._child(manager.parent_run_id, now, label)
                if node.agent is not None:
                    node.step = node.agent.open_round(superstep, now)
                if _capturing(node.agent):
                    node.content = _last_content(inputs[index:index + 1] if inputs else None)
                self.nodes[run.run_id.int] = node
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.model", exc)

    def new_token(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.get(run.run_id.int)
            if node is not None:
                node.streamed = True
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.model", exc)

    def llm_end(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is None:
                return
            end = clock()
            message, usage, name = _reply(args[0] if args else kwargs.get("response"))
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

    def llm_error(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is None:
                return
            end = clock()
            error = args[0] if args else kwargs.get("error")
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
    def tool_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        try:
            serialized = args[0] if args else kwargs.get("serialized")
            node = self._child(manager.parent_run_id, now, kwargs.get("name") or (serialized or {}).get("name"))
            node.call_id = kwargs.get("tool_call_id")
            if node.agent is not None:
                node.step = node.agent.current_round()
            if _capturing(node.agent):
                node.content = args[1] if len(args) > 1 else kwargs.get("input_str")
            self.nodes[run.run_id.int] = node
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.tool", exc)

    def tool_end(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is None:
                return
            end = clock()
            output = args[0] if args else kwargs.get("output")
            error = None
            if attr(output, "status") == "error" and attr(output, "type") == "tool":
                # The tool handled its own error (handle_tool_error / handle_validation_error): only the
                # message the model gets is left of it.
                error = ("ToolError", attr(output, "content"))
            self._tool_ended(node, end, error, error is not None, output)
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.tool", exc)

    def tool_error(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            node = self.nodes.pop(run.run_id.int, None)
            if node is None:
                return
            end = clock()
            error = args[0] if args else kwargs.get("error")
            parent_run_id = run.parent_run_id
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
    def retriever_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        try:
            parent_run_id = manager.parent_run_id
            parent = self.nodes.get(parent_run_id.int) if parent_run_id is not None else None
            self.nodes[run.run_id.int] = _Node(parent.agent if parent is not None else None, 0.0)
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.retriever", exc)

    def forget(self, run: Any, args: tuple, kwargs: dict) -> None:
        try:
            self.nodes.pop(run.run_id.int, None)
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.retriever", exc)


class _Begun:
    """A LangGraph node begun in a context (see _LostRunEvents)."""

    __slots__ = ("run_id", "under", "lost_parent", "superstep")

    def __init__(self, run_id: Any, under: Optional[_Begun], lost_parent: Optional[int], superstep: Any) -> None:
        self.run_id = run_id
        self.under = under  # the entry it was begun in, if any
        self.lost_parent = lost_parent  # the parent run (its id's integer) LangGraph gives the runs in its body
        self.superstep = superstep


class _InNode:
    """A start's callback manager as seen by _Events, with the parent and superstep of the node it was made in."""

    __slots__ = ("parent_run_id", "tags", "metadata")

    def __init__(self, manager: Any, begun: _Begun) -> None:
        self.parent_run_id = begun.run_id
        self.tags = manager.tags
        self.metadata = {**(manager.metadata or {}), "langgraph_step": begun.superstep}


class _LostRunEvents(_Events):
    """_Events on Python 3.10, where an asyncio task cannot be given a context: LangGraph then awaits an async
    node's body without the node's config in context, and what the body calls without passing `config` gets the
    parent run and metadata of the config that was in context when the node began (none, or those of a run outside
    the node). Each node begun while an event loop runs is kept in a context variable, innermost first, with that
    parent; a run that starts with exactly that parent while the node runs is given the node's (docs/langchain.md,
    "Python 3.10"). Python 3.11+ uses _Events itself, untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: contextvars.ContextVar = contextvars.ContextVar("sop_telemetry_langgraph_node", default=None)
        self.runnable_config: Any = None  # langchain-core's var_child_runnable_config, looked up at install
        self.running_loop: Any = None  # asyncio's _get_running_loop

    def look_up(self) -> None:
        from asyncio.events import _get_running_loop

        from langchain_core.runnables.config import var_child_runnable_config

        self.runnable_config, self.running_loop = var_child_runnable_config, _get_running_loop

    def _innermost(self) -> Optional[_Begun]:
        """The innermost node begun in this context that still runs (an entry is not taken off at the node's end,
        which may be reported in another context: it is skipped once the node has ended)."""
        begun = self.begun.get()
        nodes = self.nodes
        while begun is not None and begun.run_id.int not in nodes:
            begun = begun.under
        return begun

    def _in_node(self, manager: Any) -> Any:
        """The start's manager, or, for a run that LangGraph left with the parent every run in a node's body gets,
        a view of it with the node's parent and superstep."""
        if self.begun.get() is None:
            return manager
        begun = self._innermost()
        parent = manager.parent_run_id
        if begun is None or begun.lost_parent != (parent.int if parent is not None else None):
            return manager
        return _InNode(manager, begun)

    def chain_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        super().chain_start(self._in_node(manager), run, args, kwargs, now)
        try:
            if self.running_loop() is None:  # a sync node's body runs in its context: nothing is lost
                return
            for tag in manager.tags or ():
                if tag.startswith(_GRAPH_STEP) and run.run_id.int in self.nodes:
                    config = self.runnable_config.get()
                    callbacks = config.get("callbacks") if isinstance(config, dict) else None
                    # A runnable configured here without `config` gets that manager's parent (a list of handlers,
                    # or none, gives none).
                    lost = getattr(callbacks, "parent_run_id", None)
                    metadata = manager.metadata
                    self.begun.set(_Begun(run.run_id, self._innermost(), lost.int if lost is not None else None,
                                          metadata.get("langgraph_step") if metadata else None))
                    break
        except Exception as exc:  # noqa: BLE001 - the guard
            report("langchain.chain", exc)

    def model_start(self, manager: Any, runs: Any, args: tuple, kwargs: dict, now: float) -> None:
        super().model_start(self._in_node(manager), runs, args, kwargs, now)

    def tool_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        super().tool_start(self._in_node(manager), run, args, kwargs, now)

    def retriever_start(self, manager: Any, run: Any, args: tuple, kwargs: dict, now: float) -> None:
        super().retriever_start(self._in_node(manager), run, args, kwargs, now)


# Which callback-manager methods are observed, and by which of _Events' methods: (class, method, event).
_STARTS = (("CallbackManager", "on_chain_start", "chain_start"),
           ("CallbackManager", "on_chat_model_start", "model_start"),
           ("CallbackManager", "on_llm_start", "model_start"),
           ("CallbackManager", "on_tool_start", "tool_start"),
           ("CallbackManager", "on_retriever_start", "retriever_start"))
_ENDS = (("CallbackManagerForChainRun", "on_chain_end", "chain_end"),
         ("CallbackManagerForChainRun", "on_chain_error", "chain_error"),
         ("CallbackManagerForLLMRun", "on_llm_new_token", "new_token"),
         ("CallbackManagerForLLMRun", "on_llm_end", "llm_end"),
         ("CallbackManagerForLLMRun", "on_llm_error", "llm_error"),
         ("CallbackManagerForToolRun", "on_tool_end", "tool_end"),
         ("CallbackManagerForToolRun", "on_tool_error", "tool_error"),
         ("CallbackManagerForRetrieverRun", "on_retriever_end", "forget"),
         ("CallbackManagerForRetrieverRun", "on_retriever_error", "forget"))

# A context that sets this to False (or None) is not recorded.
recording: contextvars.ContextVar = contextvars.ContextVar("sop_telemetry_langchain", default=True)


def _on_start(event: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper for a manager's `on_*_start`: LangChain makes the run (its id) first, then it is observed."""
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        def on_start(self: Any, *args: Any, **kwargs: Any) -> Any:
            now = Clock.perf()
            run = original(self, *args, **kwargs)
            if switch.enabled and recording.get():
                event(self, run, args, kwargs, now)
            return run
        return on_start
    return factory


def _on_start_async(event: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        async def on_start(self: Any, *args: Any, **kwargs: Any) -> Any:
            now = Clock.perf()
            run = await original(self, *args, **kwargs)
            if switch.enabled and recording.get():
                event(self, run, args, kwargs, now)
            return run
        return on_start
    return factory


def _on_end(event: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper for a run manager's end, error or token: observed first, then LangChain tells the handlers."""
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        def on_end(self: Any, *args: Any, **kwargs: Any) -> Any:
            event(self, args, kwargs)
            return original(self, *args, **kwargs)
        return on_end
    return factory


def _on_end_async(event: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        async def on_end(self: Any, *args: Any, **kwargs: Any) -> Any:
            event(self, args, kwargs)
            return await original(self, *args, **kwargs)
        return on_end
    return factory


class LangChainIntegration(Integration):
    name = "langchain"
    module = "langchain_core"
    distribution = "langchain-core"
    supported = ">=1.0,<2"
    # LangGraph is not hooked itself: its runs reach langchain-core's callback managers, and only its run metadata
    # and tags are read. Tested with the range below.
    langgraph_supported = ">=1.0,<2"

    def __init__(self) -> None:
        super().__init__()
        self.events = _LostRunEvents() if sys.version_info < (3, 11) else _Events()
        self.context_var = recording
        self.patches = Patcher(self.name)

    def setup(self) -> None:
        try:
            from langchain_core.callbacks import manager as managers
        except ImportError as exc:
            raise DidNotEnable(f"langchain_core.callbacks.manager cannot be imported: {exc}") from exc
        missing = [f"{cls}.{method}" for cls, method, _ in _STARTS + _ENDS
                   if not callable(vars(getattr(managers, cls, object)).get(method))]
        if missing:
            raise DidNotEnable(f"langchain_core's callback managers have no {', '.join(missing)}")
        self._check_langgraph()
        if isinstance(self.events, _LostRunEvents):
            self.events.look_up()
        for table, sync, asynchronous in ((_STARTS, _on_start, _on_start_async), (_ENDS, _on_end, _on_end_async)):
            for cls, method, event in table:
                handle = getattr(self.events, event)
                self.patches.wrap(getattr(managers, cls), method, sync(handle))
                async_cls = getattr(managers, "Async" + cls, None)
                if async_cls is not None and callable(vars(async_cls).get(method)):
                    self.patches.wrap(async_cls, method, asynchronous(handle))

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
        # Runs under way are not followed further: their ends are not seen, and their agent runs stay open.
        self.patches.undo()


integration = LangChainIntegration()
install, uninstall, is_installed = integration.install, integration.uninstall, integration.is_installed
