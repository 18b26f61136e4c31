"""Section 3: writing a session (time, file size) and reading it back; and on which thread writes happen.

Usage::

    from benchmarks.flush import run_flush
    result = run_flush(storage_dir, sizes=(1_000, 10_000), repeats=5)

A session of N recorded calls is made by running the scripted ToolCallingAgent (20 tool calls and the final answer:
21 model calls, 21 tool calls, 21 steps and 1 agent record per run) until the session holds N records, so the file
has the shape of real use. `flush_data()` is then timed with the configuration's defaults (fsync on): "cold" as the
first write of those records (after `initialize()`, which drops the finished tasks' JSON kept between writes), and
"flush" as every later write (the background writer's case: it rewrites the file at each task end, and finished
tasks come from that cache). The uncached work is split into its stages to show where the time goes. Loading is timed through
`TelemetryDataStore.load` (read + validate) and `TelemetrySession.from_json` on bytes already in memory.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

from .stats import median, perf


def _records(collector: Any) -> int:
    return sum(len(t[k]) for t in collector.snapshot()["tasks"] for k in ("llm_calls", "tools", "steps", "agents"))


def fill_session(manager: Any, records: int) -> int:
    """Runs the scripted agent until the current session holds at least `records` records; returns the count."""
    from .fake import ScriptedToolModel, tool_calling_agent

    agent = tool_calling_agent(ScriptedToolModel(tool_calls=20))
    collector = manager.get_collector()
    per_run = 64
    runs = max(1, -(-records // per_run))
    for _ in range(runs):
        agent.run("Add the numbers.")
    return _records(collector)


def run_flush(storage_dir: Path, sizes: Sequence[int], repeats: int,
              log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    from sop_telemetry import TelemetryManager, TelemetrySession
    from sop_telemetry.integrations import smolagents as integration
    from sop_telemetry.storage import TelemetryDataStore, new_session_id

    manager = TelemetryManager.get_instance()
    integration.install()
    manager.enable_telemetry()
    out: Dict[str, Any] = {"write_thread": _write_thread(manager)}
    collector = manager.get_collector()
    for size in (64, *sizes):
        manager.flush_data()
        collector.roll_over(new_session_id())
        held = fill_session(manager, size)
        manager.flush_data()  # drains the writer (woken at every task end) and warms the code paths
        cold_times, warm_times = [], []
        for _ in range(repeats):
            manager.initialize()  # forgets the finished tasks' JSON kept from earlier writes (config unchanged)
            t0 = perf()
            manager.flush_data()
            cold_times.append(perf() - t0)
        for _ in range(repeats):
            t0 = perf()
            path = manager.flush_data()
            warm_times.append(perf() - t0)
        assert path is not None
        size_bytes = Path(path).stat().st_size
        stages = _stages(manager, repeats)
        store = TelemetryDataStore(Path(path).parent)
        sid = Path(path).stem
        data = Path(path).read_bytes()
        load_times, parse_times = [], []
        for _ in range(repeats):
            t0 = perf()
            session = store.load(sid)
            load_times.append(perf() - t0)
            t0 = perf()
            TelemetrySession.from_json(data)
            parse_times.append(perf() - t0)
        assert sum(len(t.llm_calls) + len(t.tools) + len(t.steps) + len(t.agents) for t in session.tasks) == held
        label = "one_run" if size == 64 else str(size)
        out[label] = {
            "records": held,
            "tasks": len(session.tasks),
            "flush_ms": median(warm_times) * 1e3,
            "flush_cold_ms": median(cold_times) * 1e3,
            "file_bytes": size_bytes,
            "bytes_per_record": size_bytes / held,
            "load_ms": median(load_times) * 1e3,
            "from_json_ms": median(parse_times) * 1e3,
            "stages_ms": stages,
            "fsync": manager.config.fsync,
        }
        log(f"  flush: {label} records done")
    manager.flush_data()
    collector.roll_over(new_session_id())
    return out


def _stages(manager: Any, repeats: int) -> Dict[str, float]:
    """The parts of one write, timed separately on the current session: the plain-data snapshot, building the
    pydantic session from it (`build_session`, which takes its own snapshot), and serializing it."""
    collector = manager.get_collector()
    snap, build, dump = [], [], []
    for _ in range(repeats):
        t0 = perf()
        collector.snapshot()
        t1 = perf()
        session = collector.build_session()
        t2 = perf()
        session.to_json()
        t3 = perf()
        snap.append(t1 - t0)
        build.append(t2 - t1)
        dump.append(t3 - t2)
    return {"snapshot": median(snap) * 1e3, "build_session": median(build) * 1e3, "to_json": median(dump) * 1e3}


def _write_thread(manager: Any) -> Dict[str, Any]:
    """Runs one agent and reports which thread wrote its session (the writer, woken when the task ended), and what
    the agent's thread spent on writing (nothing, if the write is off its thread)."""
    from sop_telemetry.storage import TelemetryDataStore, new_session_id

    from .fake import ScriptedToolModel, tool_calling_agent

    agent = tool_calling_agent(ScriptedToolModel(tool_calls=20))
    manager.flush_data()
    manager.get_collector().roll_over(new_session_id())
    seen: Dict[str, Any] = {}
    written = threading.Event()
    original = TelemetryDataStore.write

    def spy(self: Any, session_id: str, payload: Any, sync: bool = True) -> Any:
        t0 = perf()
        try:
            return original(self, session_id, payload, sync)
        finally:
            seen.setdefault("thread", threading.current_thread().name)
            seen.setdefault("store_write_ms", (perf() - t0) * 1e3)
            written.set()

    TelemetryDataStore.write = spy  # type: ignore[method-assign]
    try:
        agent.run("Add the numbers.")
        main_thread = threading.current_thread().name
        written.wait(timeout=10)  # an event, not a sleep: returns as soon as the writer has written
    finally:
        TelemetryDataStore.write = original  # type: ignore[method-assign]
    thread = seen.get("thread")
    return {"thread": thread, "agent_thread": main_thread, "off_agent_thread": thread is not None
            and thread != main_thread}
