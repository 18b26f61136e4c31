"""Scripted models, a tool and agent factories for the benchmarks: no network, the same replies every run.

Usage::

    model = ScriptedToolModel(tool_calls=20)
    agent = tool_calling_agent(model)
    agent.run("add numbers")      # 20 `add` calls, then final_answer; the script restarts on every run

This module is deliberately separate from tests/fakes.py: the benchmarks must run from a clean install with only the
`bench` extra, and must not change when a test's fake changes.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from smolagents import CodeAgent, MultiStepAgent, ToolCallingAgent, tool
from smolagents.models import (
    ChatMessage,
    ChatMessageToolCall,
    ChatMessageToolCallFunction,
    MessageRole,
    Model,
)
from smolagents.monitoring import TokenUsage

USAGE = (100, 10)


@tool
def add(a: int, b: int) -> int:
    """Adds two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def _tool_call_reply(index: int, name: str, arguments: dict) -> ChatMessage:
    return ChatMessage(
        role=MessageRole.ASSISTANT,
        content="",
        tool_calls=[
            ChatMessageToolCall(
                id=f"call_{index}",
                type="function",
                function=ChatMessageToolCallFunction(name=name, arguments=arguments),
            )
        ],
        token_usage=TokenUsage(input_tokens=USAGE[0], output_tokens=USAGE[1]),
    )


class ScriptedToolModel(Model):
    """`tool_calls` calls of `add`, then `final_answer`; the script starts over after the final answer, so one
    agent object can be run many times. Replies are built per call (a real model returns a fresh message)."""

    def __init__(self, tool_calls: int = 20, model_id: str = "scripted-model") -> None:
        super().__init__(model_id=model_id)
        self.tool_calls = tool_calls
        self.position = 0

    def generate(self, messages: List[Any], stop_sequences: Optional[List[str]] = None, response_format: Any = None,
                 tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
        index = self.position
        if index < self.tool_calls:
            self.position += 1
            return _tool_call_reply(index, "add", {"a": index, "b": 1})
        self.position = 0
        return _tool_call_reply(index, "final_answer", {"answer": "done"})


class ScriptedCodeModel(Model):
    """`code_steps` code replies that call `add`, then one that calls `final_answer`; restarts like the above."""

    def __init__(self, code_steps: int = 20, model_id: str = "scripted-code-model") -> None:
        super().__init__(model_id=model_id)
        self.code_steps = code_steps
        self.position = 0

    def generate(self, messages: List[Any], stop_sequences: Optional[List[str]] = None, response_format: Any = None,
                 tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
        index = self.position
        if index < self.code_steps:
            self.position += 1
            code = f"x = add(a={index}, b=1)\nprint(x)"
        else:
            self.position = 0
            code = 'final_answer("done")'
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content=f"Thought: next step.\n<code>\n{code}\n</code>",
            token_usage=TokenUsage(input_tokens=USAGE[0], output_tokens=USAGE[1]),
        )


class TrivialModel(Model):
    """The cheapest possible model: returns one prebuilt reply. Used to time the generate wrapper alone."""

    def __init__(self) -> None:
        super().__init__(model_id="trivial-model")
        self.reply = ChatMessage(role=MessageRole.ASSISTANT, content="ok",
                                 token_usage=TokenUsage(input_tokens=USAGE[0], output_tokens=USAGE[1]))

    def generate(self, messages: List[Any], stop_sequences: Optional[List[str]] = None, response_format: Any = None,
                 tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
        return self.reply


def tool_calling_agent(model: Model) -> ToolCallingAgent:
    return ToolCallingAgent(tools=[add], model=model, verbosity_level=0, max_steps=model_steps(model) + 5)


def code_agent(model: Model) -> CodeAgent:
    return CodeAgent(tools=[add], model=model, verbosity_level=0, max_steps=model_steps(model) + 5)


def section_one_agent(kind: str) -> Tuple[Model, MultiStepAgent]:
    """(model, agent) of section 1's runs: "tool_calling" (20 tool calls + final answer) or "code" (20 code steps
    calling a tool + final answer)."""
    if kind == "tool_calling":
        model: Model = ScriptedToolModel(tool_calls=20)
        return model, tool_calling_agent(model)
    model = ScriptedCodeModel(code_steps=20)
    return model, code_agent(model)


def model_steps(model: Model) -> int:
    return int(getattr(model, "tool_calls", getattr(model, "code_steps", 20)))
