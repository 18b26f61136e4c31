"""A scripted LangChain chat model and small tools for tests: no network, exact and known token figures.

Usage::

    model = FakeChatModel(script=[reply(tools=[("add", {"a": 1, "b": 2})], usage=(100, 10)),
                                  reply("3", usage=(120, 5))])
    agent = create_agent(model, tools=[add])
    agent.invoke({"messages": [("user", "add 1 and 2")]})

The model is langchain-core's own GenericFakeChatModel with `bind_tools` and a `_stream` that yields what a provider
streams: content word by word, then the tool calls as `tool_call_chunks`, with `usage_metadata` on the last chunk
(`stream_usage="last"`, as OpenAI with stream_usage=True), split over the first and last chunks (`"split"`, as
Anthropic: input tokens with the first, output tokens with the last), or on none (`None`, as OpenAI by default).
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import ToolException, tool

_ids = itertools.count(1)


def reply(text: str = "", tools: Sequence[Tuple[str, dict]] = (), usage: Optional[Tuple[int, int]] = (100, 10),
          model: Optional[str] = None, cached: Optional[int] = None, reasoning: Optional[int] = None) -> AIMessage:
    """One scripted reply: text and/or tool calls `(name, args)`, with `usage` (input, output) tokens (None: the
    reply carries no usage), the provider's model name in its response metadata, and token details if given."""
    usage_metadata: Any = None
    if usage is not None:
        usage_metadata = {"input_tokens": usage[0], "output_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
        if cached is not None:
            usage_metadata["input_token_details"] = {"cache_read": cached}
        if reasoning is not None:
            usage_metadata["output_token_details"] = {"reasoning": reasoning}
    return AIMessage(
        content=text,
        tool_calls=[{"name": name, "args": args, "id": f"call_{next(_ids)}", "type": "tool_call"}
                    for name, args in tools],
        usage_metadata=usage_metadata,
        response_metadata={"model_name": model} if model is not None else {},
    )


class FakeChatModel(GenericFakeChatModel):
    """Replies from `script` (AIMessages, or exceptions to raise), in order, thread-safely."""

    script: List[Any]
    model_name: str = "fake-chat"
    stream_usage: Optional[str] = "last"  # "last", "split" or None: see the module docstring
    messages: Iterator[Any] = iter(())  # GenericFakeChatModel's own script; `script` is used instead

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self._lock = threading.Lock()
        self._position = 0

    @property
    def calls(self) -> int:
        """How many replies were taken from the script."""
        return self._position

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "FakeChatModel":
        return self

    def _next(self) -> AIMessage:
        with self._lock:
            if self._position >= len(self.script):
                raise RuntimeError("script exhausted")
            item = self.script[self._position]
            self._position += 1
        if isinstance(item, BaseException):
            raise item
        return item

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        return ChatResult(generations=[ChatGeneration(message=self._next())])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        message = self._next()
        words = [word for word in (message.content or "").split(" ") if word] or [""]
        usage = message.usage_metadata
        chunks = [AIMessageChunk(content=word if i == 0 else " " + word, id=message.id) for i, word in enumerate(words)]
        last = AIMessageChunk(
            content="", id=message.id, response_metadata=dict(message.response_metadata),
            tool_call_chunks=[{"name": call["name"], "args": json.dumps(call["args"]), "id": call["id"], "index": i,
                               "type": "tool_call_chunk"} for i, call in enumerate(message.tool_calls)],
            chunk_position="last",
        )
        if usage is not None and self.stream_usage == "last":
            last.usage_metadata = usage
        elif usage is not None and self.stream_usage == "split":
            chunks[0].usage_metadata = {"input_tokens": usage["input_tokens"], "output_tokens": 0,
                                        "total_tokens": usage["input_tokens"]}
            last.usage_metadata = {"input_tokens": 0, "output_tokens": usage["output_tokens"],
                                   "total_tokens": usage["output_tokens"]}
        for chunk in chunks + [last]:
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.content, chunk=generation)
            yield generation


@tool
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiplies two numbers."""
    return a * b


@tool
def refuse(reason: str) -> str:
    """Always fails with a ToolException."""
    raise ToolException(f"refused: {reason}")


@tool
def explode(reason: str) -> str:
    """Always fails with a plain exception."""
    raise ValueError(f"exploded: {reason}")
