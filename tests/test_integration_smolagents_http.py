"""smolagents' real model clients (OpenAIServerModel over the openai package) talking HTTP to a scripted local
OpenAI-compatible server: what a provider really answers (no usage, zero usage, a 500 quoting the request's key)
is recorded as it should be."""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from fakes import add
from openai_server import OpenAIServer, error_reply, tool_call_reply
from smolagents import ToolCallingAgent
from smolagents.utils import AgentGenerationError

pytest.importorskip("openai", reason="needs the openai package (test extra)")
from smolagents.models import OpenAIServerModel  # noqa: E402

CLIP = 500  # the default max_string_length


def _model(server: OpenAIServer, key: str = "sk-local-test-key") -> OpenAIServerModel:
    return OpenAIServerModel("local-model", api_base=server.base_url, api_key=key, client_kwargs={"max_retries": 0})


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_reporting_zero_tokens_is_recorded_as_not_reported(manager, stream):
    # What LiteLLM answers for a reply without usage (Usage(0, 0, 0)), and what some local servers send.
    replies = [tool_call_reply("add", {"a": 1, "b": 2}, usage=(0, 0)),
               tool_call_reply("final_answer", {"answer": "3"}, usage=(12, 3))]
    with OpenAIServer(replies) as server:
        agent = ToolCallingAgent(tools=[add], model=_model(server), verbosity_level=0, stream_outputs=stream)
        assert agent.run("add") == "3"
    (task,) = manager.get_session_data().tasks
    calls = [(c.tokens_reported, c.prompt_tokens, c.completion_tokens, c.streamed) for c in task.llm_calls]
    assert calls == [(False, None, None, stream), (True, 12, 3, stream)]
    usage = task.token_usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.unreported_calls) == (12, 3, 1)


@pytest.mark.parametrize("known", ["in_the_environment", "learned_later"])
def test_a_key_that_a_clip_cuts_through_is_masked_in_the_file_and_the_log(manager, caplog, monkeypatch, known):
    # A provider's 500 reply echoing the request's Authorization header, the key starting at character 485 of the
    # error message: the clip at 500 would keep 14 of its characters. A key in the environment is masked before the
    # clip; a model's own key is learned when the run's records are built, after the error was clipped on the
    # agent's thread, and its beginning is masked when the file is written.
    caplog.set_level(logging.DEBUG, logger="sop_telemetry")
    key = f"sk-test-SECRET-{secrets.token_hex(8)}"  # not remembered by an earlier test
    if known == "in_the_environment":
        monkeypatch.setenv("PROVIDER_API_KEY", key)
    with OpenAIServer([error_reply(500, "PROBE")]) as server:
        model = _model(server, key)
        with pytest.raises(Exception) as probe:
            model.client.chat.completions.create(model="local-model", messages=[])
        before = str(probe.value).index("PROBE")
        quote = "Authorization: Bearer "

        def echo(headers):
            sent = headers["authorization"].removeprefix("Bearer ")
            return error_reply(500, "x" * (485 - before - len(quote)) + quote + sent + " was refused")

        server.replies = [echo]
        with pytest.raises(AgentGenerationError):
            ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add")
    path = manager.flush_data()
    text = path.read_text()
    (task,) = json.loads(text)["tasks"]
    (call,) = task["llm_calls"]
    message = call["error_message"]
    assert message.index(quote) == 485 - len(quote)
    if known == "in_the_environment":
        assert message.endswith("Bearer *** was refused")
    else:
        assert len(message) < CLIP and message.endswith("Bearer ***…")
    assert key[:4] not in text and key[:4] not in caplog.text
