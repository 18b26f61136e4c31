"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for smolagents' real model classes over HTTP.

Usage::

    with OpenAIServer([tool_call_reply("add", {"a": 1, "b": 2}, usage=(0, 0)),
                       tool_call_reply("final_answer", {"answer": "3"}, usage=(12, 3))]) as server:
        model = OpenAIServerModel("local-model", api_base=server.base_url, api_key="sk-local",
                                  client_kwargs={"max_retries": 0})
        ToolCallingAgent(tools=[add], model=model).run("add")
        server.requests   # (headers, JSON body) of each request, in order

Each POST to /v1/chat/completions takes the next reply: `(status, body)` (a streamed request gets the body's message
as server-sent events, its usage in a last chunk when it has one), or a callable given the request's headers that
returns one (header names in lower case).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

Reply = Tuple[int, Dict[str, Any]]


def _usage(usage: Optional[Tuple[int, int]]) -> Dict[str, Any]:
    if usage is None:
        return {}
    return {"usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def tool_call_reply(name: str, arguments: Dict[str, Any], usage: Optional[Tuple[int, int]]) -> Reply:
    """A completion that calls one tool; `usage` None leaves the usage field out."""
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}
    return 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "local-model",
                 "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}], **_usage(usage)}


def error_reply(status: int, message: str) -> Reply:
    return status, {"error": {"message": message, "type": "server_error"}}


class OpenAIServer:
    def __init__(self, replies: List[Union[Reply, Callable[[Dict[str, str]], Reply]]]) -> None:
        self.replies = list(replies)
        self.requests: List[Tuple[Dict[str, str], Dict[str, Any]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                headers = {name.lower(): value for name, value in self.headers.items()}
                server.requests.append((headers, body))
                reply = server.replies.pop(0) if server.replies else error_reply(500, "script exhausted")
                status, payload = reply(headers) if callable(reply) else reply
                if body.get("stream") and status == 200:
                    self._stream(payload)
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, payload: Dict[str, Any]) -> None:
                message = payload["choices"][0]["message"]
                delta: Dict[str, Any] = {"role": "assistant", "content": message.get("content")}
                if message.get("tool_calls"):
                    delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                base = {"id": payload["id"], "object": "chat.completion.chunk", "created": 0, "model": payload["model"]}
                chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                          {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
                if "usage" in payload:
                    chunks.append({**base, "choices": [], "usage": payload["usage"]})
                data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
