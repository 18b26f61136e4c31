"""Scripted models and small tools for tests: no network, exact and known token figures.

Usage::

    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")], usage=(100, 10))
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    agent.run("add")
    assert model.reported == [(100, 10), (100, 10)]
"""

from __future__ import annotations

import itertools
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from smolagents import Tool, ToolCallingAgent, tool
from smolagents.models import (
    ChatMessage,
    ChatMessageStreamDelta,
    ChatMessageToolCall,
    ChatMessageToolCallFunction,
    MessageRole,
    Model,
)
from smolagents.monitoring import TokenUsage

_ids = itertools.count(1)


def call(name: str, **arguments: Any) -> Tuple[str, dict]:
    """One tool call in a scripted reply."""
    return (name, arguments)


def tool_calls_message(calls: Sequence[Tuple[str, dict]], usage: Optional[Tuple[int, int]]) -> ChatMessage:
    return ChatMessage(
        role=MessageRole.ASSISTANT,
        content="",
        tool_calls=[
            ChatMessageToolCall(
                id=f"call_{next(_ids)}",
                type="function",
                function=ChatMessageToolCallFunction(name=name, arguments=args),
            )
            for name, args in calls
        ],
        token_usage=TokenUsage(input_tokens=usage[0], output_tokens=usage[1]) if usage is not None else None,
    )


class ScriptedModel(Model):
    """Replies from a script. Each item is a tool call `(name, args)`, a list of them (parallel calls), a string
    (plain text, e.g. a plan or code), a ChatMessage, or an exception instance to raise. `usage` is the
    (input, output) tokens reported per reply (None: no usage); a dict {reply index: usage} overrides it."""

    def __init__(self, script: Iterable[Any], usage: Optional[Tuple[int, int]] = (100, 10),
                 model_id: Optional[str] = "scripted-model", usage_by_index: Optional[dict] = None, **kwargs: Any):
        super().__init__(model_id=model_id, **kwargs)
        self.script: List[Any] = list(script)
        self.usage = usage
        self.usage_by_index = usage_by_index or {}
        self.reported: List[Optional[Tuple[int, int]]] = []
        self.calls = 0
        self._lock = threading.Lock()

    def _next(self) -> Tuple[Any, Optional[Tuple[int, int]]]:
        with self._lock:
            index = self.calls
            self.calls += 1
            if not self.script:
                raise RuntimeError("script exhausted")
            item = self.script.pop(0)
        usage = self.usage_by_index.get(index, self.usage)
        return item, usage

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        item, usage = self._next()
        if isinstance(item, BaseException):
            raise item
        self.reported.append(usage)
        if isinstance(item, ChatMessage):
            return item
        token_usage = TokenUsage(input_tokens=usage[0], output_tokens=usage[1]) if usage is not None else None
        if isinstance(item, str):
            return ChatMessage(role=MessageRole.ASSISTANT, content=item, token_usage=token_usage)
        calls = item if isinstance(item, list) else [item]
        return tool_calls_message(calls, usage)

    @property
    def reported_totals(self) -> Tuple[int, int]:
        known = [u for u in self.reported if u is not None]
        return sum(u[0] for u in known), sum(u[1] for u in known)


class StreamingScriptedModel(ScriptedModel):
    """Streams text replies in chunks. `per_delta_usage=False` (API models): one final delta carries the whole
    usage; True (local models): each delta carries its share, and the shares add up to the reply's usage."""

    def __init__(self, script: Iterable[Any], chunks: int = 5, per_delta_usage: bool = False, **kwargs: Any):
        super().__init__(script, **kwargs)
        self.chunks = chunks
        self.per_delta_usage = per_delta_usage

    def generate_stream(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None,
                        **kwargs):
        item, usage = self._next()
        if isinstance(item, BaseException):
            raise item
        self.reported.append(usage)
        text = item if isinstance(item, str) else str(item)
        size = max(1, len(text) // self.chunks + 1)
        pieces = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        if usage is not None and self.per_delta_usage:
            n = len(pieces)
            shares = [(usage[0] if i == 0 else 0, usage[1] // n + (1 if i < usage[1] % n else 0)) for i in range(n)]
            for piece, share in zip(pieces, shares, strict=True):
                yield ChatMessageStreamDelta(content=piece, token_usage=TokenUsage(*share))
            return
        for piece in pieces:
            yield ChatMessageStreamDelta(content=piece)
        if usage is not None:
            yield ChatMessageStreamDelta(content="", token_usage=TokenUsage(input_tokens=usage[0],
                                                                            output_tokens=usage[1]))


def code_reply(code: str) -> str:
    """A CodeAgent reply that runs `code`."""
    return f"Thought: run it.\n<code>\n{code}\n</code>"


@tool
def add(a: int, b: int) -> int:
    """Adds two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


@tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: What to say when failing.
    """
    raise ValueError(f"exploded: {reason}")


class SlowEcho(Tool):
    """A Tool subclass (not @tool) that waits on an event so that parallel calls overlap."""

    name = "slow_echo"
    description = "Echoes its text back."
    inputs = {"text": {"type": "string", "description": "What to echo."}}
    output_type = "string"

    def __init__(self, barrier: Optional[threading.Barrier] = None):
        super().__init__()
        self.barrier = barrier

    def forward(self, text: str) -> str:
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        return text


def written_session(manager: Any) -> dict:
    """Flushes and returns the session file's JSON exactly as written on disk."""
    path = manager.flush_data()
    assert path is not None, "nothing was written"
    return json.loads(Path(path).read_text())


@contextmanager
def uninstalled(integration: Any) -> Iterator[None]:
    """The body runs with `integration` (a module of sop_telemetry.integrations) uninstalled; it is installed again
    after, whatever happened."""
    integration.uninstall()
    try:
        yield
    finally:
        integration.install()


def run_team(task: str = "delegate") -> str:
    """A manager agent with a managed sub-agent: three tools called in parallel from one reply (two of them wait for
    each other, so they really overlap), a tool that fails, a delegation, a final answer."""
    sub_model = ScriptedModel([call("add", a=2, b=2), call("final_answer", answer="4")], usage=(10, 1),
                              model_id="sub-model")
    sub = ToolCallingAgent(tools=[add], model=sub_model, name="calculator", description="does sums",
                           verbosity_level=0)
    boss_model = ScriptedModel([
        [call("slow_echo", text="a"), call("slow_echo", text="b"), call("add", a=1, b=2)],
        call("explode", reason="boom"),
        call("calculator", task="2+2"),
        call("final_answer", answer="done"),
    ], usage=(200, 20), model_id="boss-model")
    boss = ToolCallingAgent(tools=[SlowEcho(threading.Barrier(2)), add, explode], model=boss_model,
                            managed_agents=[sub], name="boss", verbosity_level=0, max_tool_threads=3)
    return boss.run(task)
