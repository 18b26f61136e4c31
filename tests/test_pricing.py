"""Cost estimates: genai-prices figures for known models, None for unknown ones, the user's prices first, offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fakes import ScriptedModel, add, call, written_session
from genai_prices import Usage, calc_price
from smolagents import ToolCallingAgent

from sop_telemetry.config import ModelPrice
from sop_telemetry.pricing import PriceBook


def genai(model: str, prompt: int, completion: int) -> float:
    return float(calc_price(Usage(input_tokens=prompt, output_tokens=completion), model_ref=model).total_price)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "o3"])
def test_known_model_costs_what_genai_prices_says(model):
    assert PriceBook().cost(model, 1234, 567) == genai(model, 1234, 567)


def test_provider_prefixed_ids_find_the_model():
    book = PriceBook()
    assert book.cost("openai/gpt-4o", 1000, 100) == genai("gpt-4o", 1000, 100)
    assert book.cost("anthropic/claude-3-5-sonnet-20241022", 10, 10) == genai("claude-3-5-sonnet-20241022", 10, 10)


@pytest.mark.parametrize("model", ["scripted-model", "no-such-model-xyz", "gpt", "", None])
def test_unknown_model_costs_none(model):
    assert PriceBook().cost(model, 1000, 100) is None


def test_unreported_tokens_cost_none():
    assert PriceBook().cost("gpt-4o", None, None) is None
    assert PriceBook().cost("gpt-4o", 1000, None) == genai("gpt-4o", 1000, 0)


def test_user_prices_win_over_the_database():
    book = PriceBook({"gpt-4o": {"input_per_million": 1.0, "output_per_million": 2.0},
                      "my-model": ModelPrice(input_per_million=0.5, output_per_million=4.0)})
    assert book.cost("gpt-4o", 1_000_000, 500_000) == 2.0
    assert book.cost("openai/gpt-4o", 1_000_000, 0) == 1.0
    assert book.cost("my-model", 2_000_000, 250_000) == 2.0
    assert book.cost("gpt-4o-mini", 1000, 100) == genai("gpt-4o-mini", 1000, 100)


def _run(model_id: str, usage=(1000, 100)) -> None:
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")], usage=usage, model_id=model_id)
    ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add")


def test_written_session_carries_genai_prices_costs(manager):
    _run("gpt-4o")
    _run("scripted-model")
    data = written_session(manager)
    known, unknown = data["tasks"]
    assert [c["cost_estimate"] for c in known["llm_calls"]] == [genai("gpt-4o", 1000, 100)] * 2
    assert known["token_usage"]["cost_estimate"] == pytest.approx(2 * genai("gpt-4o", 1000, 100))
    assert [c["cost_estimate"] for c in unknown["llm_calls"]] == [None, None]
    assert unknown["token_usage"]["cost_estimate"] is None


def test_config_prices_reach_the_written_session(manager):
    manager.initialize({"prices": {"scripted-model": {"input_per_million": 3.0, "output_per_million": 15.0}}})
    _run("scripted-model", usage=(1_000_000, 100_000))
    data = written_session(manager)
    assert [c["cost_estimate"] for c in data["tasks"][0]["llm_calls"]] == [4.5, 4.5]


_OFFLINE = r"""
import json, socket, threading

attempts = []

def refuse(*args, **kwargs):
    attempts.append(args[1:2])
    raise OSError("network is off in this test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse

from sop_telemetry.pricing import PriceBook
book = PriceBook()
costs = [book.cost("gpt-4o", 1000, 100), book.cost("no-such-model", 1, 1)]
import genai_prices.data_snapshot as snapshot
print(json.dumps({"costs": costs, "attempts": len(attempts),
                  "updater": [t.name for t in threading.enumerate() if "genai" in t.name],
                  "auto_update": snapshot.get_snapshot().from_auto_update}))
"""


def test_prices_come_from_the_bundled_data_without_network():
    result = subprocess.run([sys.executable, "-c", _OFFLINE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {"costs": [genai("gpt-4o", 1000, 100), None], "attempts": 0, "updater": [],
                   "auto_update": False}
