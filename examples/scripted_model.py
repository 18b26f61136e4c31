"""A scripted stand-in for an LLM, so the examples run offline: it replies with the tool calls, code or error it is
given and reports a fixed token usage per reply, as a real provider would.

Usage::

    model = ScriptedModel([("get_weather", {"city": "Paris"}), ("final_answer", {"answer": "sunny"})])
    model = ScriptedModel(["Thought: compute it.\\n<code>\\nfinal_answer(6 * 7)\\n</code>"])   # for a CodeAgent
    model = ScriptedModel([RuntimeError("model service unavailable")])                   # the call raises
"""

from __future__ import annotations

import itertools
from typing import Any, List, Sequence, Tuple, Union

from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole, Model
from smolagents.monitoring import TokenUsage

_ids = itertools.count(1)

Reply = Union[Tuple[str, dict], str, BaseException]


class ScriptedModel(Model):
    """Replies from `script`, one item per call: a tool call `(name, arguments)`, a text reply (a CodeAgent's code),
    or an exception to raise. Each reply reports `usage` = (input tokens, output tokens)."""

    def __init__(self, script: Sequence[Reply], usage: Tuple[int, int] = (850, 60),
                 model_id: str = "gpt-4o-mini") -> None:
        super().__init__(model_id=model_id)
        self.script: List[Reply] = list(script)
        self.usage = usage

    def generate(self, messages: Any, **kwargs: Any) -> ChatMessage:
        reply = self.script.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        usage = TokenUsage(input_tokens=self.usage[0], output_tokens=self.usage[1])
        if isinstance(reply, str):
            return ChatMessage(role=MessageRole.ASSISTANT, content=reply, token_usage=usage)
        name, arguments = reply
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            tool_calls=[ChatMessageToolCall(id=f"call_{next(_ids)}", type="function",
                                            function=ChatMessageToolCallFunction(name=name, arguments=arguments))],
            token_usage=usage,
        )
