"""Section 4: memory held per recorded call, and the peak of a 100,000-call session with the caps on.

Usage::

    from benchmarks.memory import run_memory
    result = run_memory(agent_runs=50, big_calls=100_000)

Bytes per record are measured with tracemalloc on real agent runs (the scripted ToolCallingAgent: 64 records per
run): memory still allocated after `agent_runs` runs, minus what was allocated after a first run, over the records
added. The agent's own memory is reset by each run, so what grows is what telemetry holds. It is measured twice:
while the runs' events wait in the collector's queue (per event; they wait until the writer runs after a task, or
until `PENDING_LIMIT` of them are queued), and once their records are built (per record: what a session keeps).

The cap test makes one task of `big_calls` calls (half model calls, half tool calls) inside one agent run; with the
default `max_records_per_task` (10,000) each kind keeps 10,000 records and counts the rest as dropped. The peak is
tracemalloc's, over the whole run.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any, Callable, Dict

from .fake import ScriptedToolModel, TrivialModel, add, tool_calling_agent


def run_memory(agent_runs: int, big_calls: int, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    from sop_telemetry import TelemetryManager
    from sop_telemetry.integrations import smolagents as integration
    from sop_telemetry.storage import new_session_id

    manager = TelemetryManager.get_instance()
    integration.install()
    manager.enable_telemetry()
    collector = manager.get_collector()
    manager.flush_data()
    collector.roll_over(new_session_id())
    was_read_only = manager.read_only
    # No writes while measuring: the writer's temporary objects (the pydantic session, the JSON) would be counted.
    manager.read_only = True
    try:
        per_record = _per_record(collector, agent_runs)
        log("  memory: per-record done")
        collector.roll_over(new_session_id())
        capped = _capped(manager, collector, big_calls)
        log("  memory: capped session done")
        collector.roll_over(new_session_id())
    finally:
        manager.read_only = was_read_only
    return {"per_record": per_record, "capped": capped}


def _count(collector: Any) -> int:
    return sum(len(t[k]) for t in collector.snapshot()["tasks"] for k in ("llm_calls", "tools", "steps", "agents"))


def _per_record(collector: Any, agent_runs: int) -> Dict[str, Any]:
    agent = tool_calling_agent(ScriptedToolModel(tool_calls=20))
    agent.run("Add the numbers.")  # warm: first-run allocations (caches, compiled templates) are not telemetry's
    gc.collect()
    tracemalloc.start()
    try:
        agent.run("Add the numbers.")
        gc.collect()
        records_before = _count(collector)  # (builds the queued records first)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(agent_runs):
            agent.run("Add the numbers.")
        gc.collect()
        queued, events = tracemalloc.get_traced_memory()[0], len(collector.pending)
        records_after = _count(collector)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    added = records_after - records_before
    return {"records": added, "bytes": after - before, "bytes_per_record": (after - before) / max(1, added),
            "queued_events": events, "bytes_per_queued_event": (queued - before) / max(1, events),
            "agent_runs": agent_runs}


def _capped(manager: Any, collector: Any, calls: int) -> Dict[str, Any]:
    from smolagents import ToolCallingAgent

    class LoopAgent(ToolCallingAgent):
        def run(self, task: str, **kwargs: Any) -> Any:  # patched by sop_telemetry like any agent's run
            model = self.model
            messages = [{"role": "user", "content": [{"type": "text", "text": task}]}]
            for _ in range(calls // 2):
                model.generate(messages)
                add(a=1, b=2)
            return None

    agent = LoopAgent(tools=[add], model=TrivialModel(), verbosity_level=0)
    cap = collector.max_records_per_task
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        agent.run("capped")
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tasks = collector.snapshot()["tasks"]
    kept = {k: sum(len(t[k]) for t in tasks) for k in ("llm_calls", "tools")}
    dropped: Dict[str, int] = {}
    for t in tasks:
        for kind, n in t["dropped_records"].items():
            dropped[kind] = dropped.get(kind, 0) + n
    stats_dropped = manager.get_storage_stats().get("dropped_records", {})
    expected_drop = max(0, calls // 2 - cap)
    return {
        "calls": calls,
        "max_records_per_task": cap,
        "kept": kept,
        "dropped": dropped,
        "drops_counted": dropped.get("llm_calls") == expected_drop and dropped.get("tools") == expected_drop
        and stats_dropped.get("llm_calls") == expected_drop,
        "held_mb": (current - base) / 1e6,
        "peak_mb": (peak - base) / 1e6,
    }
