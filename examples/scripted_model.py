"""A scripted stand-in for an LLM, so the examples run offline: it replies with the tool calls it is given and
reports a fixed token usage per reply, as a real provider would."""

from __future__ import annotations

import itertools
from typing import Any, List, Sequence, Tuple

from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole, Model
from smolagents.monitoring import TokenUsage

_ids = itertools.count(1)


class ScriptedModel(Model):
    def __init__(self, script: Sequence[Tuple[str, dict]], usage: Tuple[int, int] = (850, 60),
                 model_id: str = "gpt-4o-mini") -> None:
        super().__init__(model_id=model_id)
        self.script: List[Tuple[str, dict]] = list(script)
        self.usage = usage

    def generate(self, messages: Any, **kwargs: Any) -> ChatMessage:
        name, arguments = self.script.pop(0)
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            tool_calls=[ChatMessageToolCall(id=f"call_{next(_ids)}", type="function",
                                            function=ChatMessageToolCallFunction(name=name, arguments=arguments))],
            token_usage=TokenUsage(input_tokens=self.usage[0], output_tokens=self.usage[1]),
        )
