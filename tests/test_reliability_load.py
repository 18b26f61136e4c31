"""Load: many agents at once, and one session with far more calls than it may keep.

- 32 threads each run their own agent, each reply holding parallel tool calls: every task complete, every record in
  the task of the thread that made it, no deadlock (joined with a deadline), totals exact.
- A 100,000-call session (slow) and a 5,000-call one (default run): memory bounded by `max_records_per_task` even
  when every call is made inside one step, the file written, the drop counters and the token totals exact.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fakes import ScriptedModel, SlowEcho, add, call
from smolagents import Tool, ToolCallingAgent

from sop_telemetry.error_handler import get_error_handler

THREADS = 32
DEADLINE = 120.0


def _agent_for(index: int, barrier: threading.Barrier) -> ToolCallingAgent:
    # Everything that identifies the thread is in its records: the model id, and the tool arguments' results.
    model = ScriptedModel(
        [
            # Parallel calls in one reply; the two slow_echo calls meet at a barrier, so they must overlap.
            [call("slow_echo", text=f"echo-{index}"), call("add", a=index, b=1000), call("slow_echo", text=f"{index}")],
            [call("add", a=index, b=2000), call("slow_echo", text=f"again-{index}"), call("slow_echo", text="-")],
            call("final_answer", answer=f"done-{index}"),
        ],
        usage=(100 + index, 10 + index),
        model_id=f"model-{index}",
    )
    return ToolCallingAgent(tools=[add, SlowEcho(barrier)], model=model, verbosity_level=0, max_tool_threads=3)


def test_32_threads_of_agents_with_parallel_tool_calls(manager, storage_dir):
    results: Dict[int, Any] = {}
    errors: Dict[int, BaseException] = {}
    start = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        try:
            # parties=2: the two calls of one reply must be in flight together, or the barrier times out.
            agent = _agent_for(index, threading.Barrier(2))
            start.wait(timeout=DEADLINE)
            results[index] = (agent.run(f"thread {index}"), agent)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[index] = exc

    threads = [threading.Thread(target=worker, args=(i,), name=f"agent-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert not [t.name for t in threads if t.is_alive()], "deadlock: threads still running after the deadline"
    assert not errors, errors
    for index, (output, agent) in results.items():
        assert output == f"done-{index}"
        # The tools really ran side by side (a barrier of 2 inside one reply), and returned this thread's values.
        observations = [s.observations for s in agent.memory.steps if getattr(s, "observations", None)]
        assert f"echo-{index}" in observations[0] and str(index + 1000) in observations[0]

    path = manager.flush_data()
    assert path is not None
    session = json.loads(Path(path).read_text())
    tasks = [t for t in session["tasks"] if not t.get("implicit")]
    assert len(tasks) == THREADS
    assert not [t for t in session["tasks"] if t.get("implicit")], "records made outside any task"
    by_thread: Dict[int, dict] = {}
    for task in tasks:
        index = int(task["description"].split()[-1])
        by_thread[index] = task
        assert task["status"] == "completed"
        (agent,) = task["agents"]
        assert agent["model"] == f"model-{index}" and agent["steps"] == 3
        # Every record of the task was made by this thread's agent run.
        assert [c["model"] for c in task["llm_calls"]] == [f"model-{index}"] * 3
        for record in task["llm_calls"] + task["tools"] + task["steps"]:
            assert record["agent_id"] == agent["agent_id"]
        assert sorted(t["tool_name"] for t in task["tools"]) == ["add"] * 2 + ["final_answer"] + ["slow_echo"] * 4
        assert all(t["status"] == "success" for t in task["tools"])
        assert [s["tool_calls"] for s in task["steps"]] == [3, 3, 1]
        assert [s["step_number"] for s in task["steps"]] == [1, 2, 3]
        assert task["token_usage"]["prompt_tokens"] == 3 * (100 + index)
        assert task["token_usage"]["completion_tokens"] == 3 * (10 + index)
    assert sorted(by_thread) == list(range(THREADS))
    assert len({t["agents"][0]["agent_id"] for t in tasks}) == THREADS
    total = session["total_tokens"]
    assert total["prompt_tokens"] == sum(3 * (100 + i) for i in range(THREADS))
    assert total["completion_tokens"] == sum(3 * (10 + i) for i in range(THREADS))
    assert total["total_tokens"] == total["prompt_tokens"] + total["completion_tokens"]
    assert len(total["model_breakdown"]) == THREADS
    assert get_error_handler().get_error_summary() == {}


class _CallsTheModel(Tool):
    """A tool that calls an inner model `n` times: every call lands in one step of the outer agent."""

    name = "summarize_all"
    description = "Calls a model once per document."
    inputs = {"n": {"type": "integer", "description": "How many documents."}}
    output_type = "integer"

    def __init__(self, inner: Any, probe: Dict[str, int]) -> None:
        super().__init__()
        self.inner = inner
        self.probe = probe

    def forward(self, n: int) -> int:
        halfway = n // 2
        for i in range(n):
            if i == halfway:
                tracemalloc.start()
            self.inner.generate([])
        self.probe["grew"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return n


class _Cheap:
    """A reply with exact usage, made cheaply: the bookkeeping is what is measured here, not the fake."""

    class token_usage:  # noqa: N801 - read as an attribute, like ChatMessage.token_usage
        input_tokens = 7
        output_tokens = 3


class _InnerModel(ScriptedModel):
    def generate(self, messages: List[Any], **kwargs: Any) -> Any:
        return _Cheap


def _many_calls(manager: Any, storage_dir: Path, calls: int, cap: int) -> None:
    manager.initialize({"storage_dir": str(storage_dir), "auto_cleanup": False, "fsync": False,
                        "max_records_per_task": cap})
    probe: Dict[str, int] = {}
    inner = _InnerModel([], model_id="inner")
    outer = ScriptedModel([call("summarize_all", n=calls), call("final_answer", answer="ok")], model_id="outer",
                          usage=(1, 1))
    agent = ToolCallingAgent(tools=[_CallsTheModel(inner, probe)], model=outer, verbosity_level=0)
    # Calls wait in the collector's queue until it holds `pending_limit` of them (then they are built, or only
    # counted when over the cap): a small limit here, so that the queue is not what this measures.
    manager.get_collector().pending_limit = 128
    assert agent.run("many calls") == "ok"

    # Memory: the second half of the calls (all over the cap) kept next to nothing per call, beyond one queue's worth.
    queue = 128 * 400
    assert probe["grew"] < 200 * (calls // 2) ** 0.5 + 64_000 + queue, \
        f"{probe['grew']} bytes for {calls // 2} dropped calls"
    path = manager.flush_data()
    assert path is not None
    (task,) = json.loads(Path(path).read_text())["tasks"]
    assert task["status"] == "completed"
    assert len(task["llm_calls"]) == cap
    records = 2 + calls
    assert task["dropped_records"] == {"llm_calls": records - cap}
    usage = task["token_usage"]
    assert usage["prompt_tokens"] == 7 * calls + 2 and usage["completion_tokens"] == 3 * calls + 2
    assert usage["model_breakdown"]["inner"]["total_tokens"] == 10 * calls
    assert usage["model_breakdown"]["outer"]["total_tokens"] == 4
    # The step that made the calls says how many it made and what they cost, dropped ones included.
    first = task["steps"][0]
    assert first["llm_calls"] == calls + 1
    assert (first["prompt_tokens"], first["completion_tokens"]) == (7 * calls + 1, 3 * calls + 1)


def test_a_5000_call_step_stays_within_the_caps(manager, storage_dir):
    _many_calls(manager, storage_dir, calls=5_000, cap=100)


@pytest.mark.slow
def test_a_100000_call_session_stays_within_the_caps(manager, storage_dir):
    _many_calls(manager, storage_dir, calls=100_000, cap=10_000)
