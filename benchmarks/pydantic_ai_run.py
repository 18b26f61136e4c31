"""Section 8: what telemetry adds to a whole pydantic-ai agent run, beside pydantic-ai's own OpenTelemetry spans.

Usage::

    from benchmarks.pydantic_ai_run import run_pydantic_ai_overhead
    result = run_pydantic_ai_overhead(iterations=100, warmup=5, repeats=3)
    result["cpu"]["setups"]["sop"]["added_pct"]

The run: an async FunctionModel scripted for five requests, the first four asking for five tool calls each (run in
parallel by pydantic-ai), the fifth answering; 20 async tools calls and 5 model requests, each reply with explicit
usage. All setups live in one process and take turns, in a shuffled order per iteration; each iteration gives one
paired sample per setup (its time minus the uninstrumented run's in the same iteration), a sample being the
fastest of `repeats` timed runs. Both the wall time and the process CPU time (every thread) are taken:

- ``none``: sop_telemetry's pydantic-ai integration uninstalled, the agent not instrumented;
- ``sop``: the integration installed, telemetry enabled; the run's records are built and its session written after
  the timing (the manager is read-only during the timed run, so that the task's end does not wake the writer into
  it; then it writes): what the run itself pays, as for runs back to back in section 1;
- ``sop_idle``: the same, but the task's end wakes the idle writer, which builds the records and writes the session
  on its thread while the run finishes: process CPU time counts whatever of that lands before the run returns;
- ``sop_with_write``: the records built and the session written on the agent's thread (`flush_data()`) inside the
  timing: the whole cost of recording the run;
- ``native``: pydantic-ai's own instrumentation (`agent.instrument = InstrumentationSettings(...)`, what
  `Agent.instrument_all()` and Logfire turn on for every agent) with an SDK TracerProvider, a SimpleSpanProcessor and an
  InMemorySpanExporter (cleared after each run): no network, the spans' own cost only. sop_telemetry uninstalled.

After every timed run, whatever the setup, the harness pauses 30 ms (the writer's wake-up and pause after a write
then fall outside the next timed run, and every setup's runs start from the same idle state).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable, Dict, List, Tuple

from .agent_run import _fresh_session, added
from .stats import cpu_time, freeze_heap, median, perf, quiet_gc, trimmed_mean

SETUPS = ("none", "sop", "sop_idle", "sop_with_write", "native")
_PROMPT = "Look the five numbers up four times, then answer."
_ROUNDS, _TOOLS = 4, 5
_PAUSE = 0.03


def _agents() -> Tuple[Any, Any, Any]:
    """(plain agent, natively instrumented agent, its span exporter), on the same scripted model and tools."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.usage import RequestUsage

    async def reply(messages: list, info: Any) -> ModelResponse:
        done = sum(1 for message in messages if message.kind == "response")
        usage = RequestUsage(input_tokens=200 + 40 * done, output_tokens=20)
        if done < _ROUNDS:
            return ModelResponse(parts=[ToolCallPart(f"lookup_{i}", {"key": f"k{done}{i}"}) for i in range(_TOOLS)],
                                 usage=usage)
        return ModelResponse(parts=[TextPart("42")], usage=usage)

    def build(instrument: Any = None) -> Any:
        agent = Agent(FunctionModel(reply, model_name="scripted"), name="bench")
        agent.instrument = instrument
        for i in range(_TOOLS):
            async def lookup(key: str) -> str:
                return key.upper()

            agent.tool_plain(name=f"lookup_{i}")(lookup)
        return agent

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return build(), build(instrument=InstrumentationSettings(tracer_provider=provider)), exporter


def run_pydantic_ai_overhead(iterations: int, warmup: int, repeats: int = 3, seed: int = 1,
                             log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    from sop_telemetry import TelemetryManager
    from sop_telemetry.integrations import pydantic_ai as integration

    manager = TelemetryManager.get_instance()
    collector = manager.get_collector()
    plain, native, exporter = _agents()
    loop = asyncio.new_event_loop()
    rng = random.Random(seed)
    rows: List[Dict[str, Tuple[float, float]]] = []
    recorded: Dict[str, int] = {}
    spans = 0

    def run(agent: Any) -> None:
        assert loop.run_until_complete(agent.run(_PROMPT)).output == "42"

    freeze_heap()
    try:
        for i in range(warmup + iterations):
            order = list(SETUPS)
            rng.shuffle(order)
            row: Dict[str, Tuple[float, float]] = {}
            for name in order:
                sop = name.startswith("sop")
                if sop:
                    integration.install()
                else:
                    integration.uninstall()
                agent = native if name == "native" else plain
                run(agent)  # untimed: the first run after moving methods in or out of classes is not typical
                if sop:
                    manager.flush_data()
                    _fresh_session(collector)
                exporter.clear()
                time.sleep(_PAUSE)
                best = (float("inf"), float("inf"))
                for _ in range(repeats):
                    manager.read_only = name == "sop"
                    with quiet_gc():
                        c0, t0 = cpu_time(), perf()
                        run(agent)
                        if name == "sop_with_write":
                            manager.flush_data()
                        t1, c1 = perf(), cpu_time()
                    manager.read_only = False
                    best = (min(best[0], t1 - t0), min(best[1], c1 - c0))
                    if sop:
                        if name == "sop" and "sop" not in recorded:
                            session = manager.get_session_data()
                            recorded["llm_calls"] = sum(len(t.llm_calls) for t in session.tasks)
                            recorded["tools"] = sum(len(t.tools) for t in session.tasks)
                            recorded["prompt_tokens"] = session.total_tokens.prompt_tokens
                        manager.flush_data()
                        _fresh_session(collector)
                    if name == "native":
                        spans = len(exporter.get_finished_spans())
                        exporter.clear()
                    time.sleep(_PAUSE)
                row[name] = best
            if i >= warmup:
                rows.append(row)
            if i and i % 25 == 0:
                log(f"  pydantic-ai: {i}/{warmup + iterations} iterations")
    finally:
        integration.install()
        loop.close()
    out: Dict[str, Any] = {"wall": _summarize(rows, 0), "cpu": _summarize(rows, 1), "runs": len(rows),
                           "repeats": repeats, "recorded_per_run": recorded, "native_spans_per_run": spans}
    for which in ("wall", "cpu"):
        setups = out[which]["setups"]
        if setups["sop"]["added_ms"] > 0:
            setups["native"]["over_sop"] = setups["native"]["added_ms"] / setups["sop"]["added_ms"]
    return out


# -- instructions (callgrind) -------------------------------------------------------------------------------------
INSTRUCTION_SETUPS = ("none", "sop", "sop_with_write", "native")


def run_pydantic_ai_instructions(runs: int = 5, warmup: int = 3, quick: bool = False,
                                 log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Section 8b: the instructions the run executes per setup, every thread's, each setup in its own process under
    callgrind (as section 9b). `sop` has the manager read-only during the run (the writer's work, done after it, is
    not counted: the run itself); `sop_with_write` writes the session inside the count (everything); `native` is
    pydantic-ai's own instrumentation. Load-independent, unlike the timing."""
    from .instructions import count_setups

    log("8b. pydantic-ai run: instructions per run (callgrind)")
    return count_setups("benchmarks.pydantic_ai_run", list(INSTRUCTION_SETUPS), runs, warmup, quick, log)


def _child(setup: str, runs: int, warmup: int, library: str) -> None:
    import sop_telemetry  # noqa: F401 - before pydantic-ai, as a user would
    from sop_telemetry.integrations import pydantic_ai as integration

    from .instructions import child_manager, counted_runs

    with child_manager() as manager:
        collector = manager.get_collector()
        plain, native, exporter = _agents()
        if not setup.startswith("sop"):
            integration.uninstall()
        agent = native if setup == "native" else plain
        loop = asyncio.new_event_loop()

        def run() -> None:
            assert loop.run_until_complete(agent.run(_PROMPT)).output == "42"
            if setup == "sop_with_write":
                manager.flush_data()

        def before() -> None:
            manager.read_only = setup == "sop"  # the writer is not woken by the run's end

        def after() -> None:
            manager.read_only = False
            if setup.startswith("sop"):
                manager.flush_data()
                _fresh_session(collector)
            exporter.clear()

        try:
            counted_runs(run, runs, warmup, library, before, after)
        finally:
            loop.close()


def _summarize(rows: List[Dict[str, Tuple[float, float]]], which: int) -> Dict[str, Any]:
    base = median([row["none"][which] for row in rows])
    setups: Dict[str, Any] = {}
    for name in SETUPS:
        values = [row[name][which] for row in rows]
        entry: Dict[str, Any] = {"median_ms": median(values) * 1e3, "trimmed_mean_ms": trimmed_mean(values) * 1e3}
        if name != "none":
            entry.update(added([row[name][which] - row["none"][which] for row in rows], base))
        setups[name] = entry
    return {"setups": setups}


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit("usage: python -m benchmarks.pydantic_ai_run --child SETUP RUNS WARMUP LIBRARY")
