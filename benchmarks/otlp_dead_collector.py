"""Does live OTLP export slow an agent down when the collector is dead or hangs? Run time of one agent run with export
off, and with live export to a healthy, a dead (closed port) and a silent (accepts, never answers) collector.

Usage::

    python -m benchmarks.otlp_dead_collector                     # 300 interleaved iterations, a table
    python -m benchmarks.otlp_dead_collector --iterations 50 --json out.json

    from benchmarks.otlp_dead_collector import run_otlp_dead_collector
    result = run_otlp_dead_collector(iterations=300)              # figures as a dict (for benchmarks/__main__)

All setups live in one process and one TelemetryManager; before each run the manager's live exporter is switched
(outside the timed region; the exporters are made once, up front), and the order of the setups is shuffled in every
iteration, so each iteration gives one paired sample per setup: its run time minus the export-off run's time in the
same iteration. The agent is a ToolCallingAgent with a scripted model (3 tool calls, then the final answer): no
network except the loopback sockets of the collectors. Needs the `otel` extra (and smolagents).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

SETUPS = ("off", "healthy", "dead", "silent")


def _agent() -> Any:
    """A ToolCallingAgent whose scripted model makes 3 tool calls, then the final answer (benchmarks/fake.py)."""
    from .fake import ScriptedToolModel, tool_calling_agent

    return tool_calling_agent(ScriptedToolModel(tool_calls=3, model_id="bench-model"))


class _Healthy:
    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dead_endpoint() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def _summary(values: List[float]) -> Dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=10) if len(ordered) >= 10 else [ordered[0]] * 9
    return {"median_ms": statistics.median(ordered) * 1e3, "p10_ms": q[0] * 1e3, "p90_ms": q[-1] * 1e3}


def _submit_cost(silent_port: int, n: int = 20_000) -> Dict[str, float]:
    """Microseconds the agent's thread spends handing one ended task to the exporter: queued, and dropped because
    the queue is full (the exporter's thread is stuck on a collector that never answers, so nothing drains)."""
    from sop_telemetry.error_handler import get_error_handler
    from sop_telemetry.otel import LiveOtlpExporter

    task = {"task_id": "t", "start_time": time.time(), "agents": [], "tools": [], "llm_calls": [], "steps": []}
    result = {}
    for name, max_queue in (("queued", n + 1), ("dropped", 1)):
        exporter = LiveOtlpExporter(endpoint=f"http://127.0.0.1:{silent_port}", max_queue=max_queue, timeout=30)
        exporter.submit("s", task)  # starts the thread, which then hangs on the silent collector
        started = time.perf_counter()
        for _ in range(n):
            exporter.submit("s", task)
        result[name] = (time.perf_counter() - started) / n * 1e6
        exporter.shutdown(timeout=0)
    get_error_handler().reset_error_state()
    return result


def run_otlp_dead_collector(iterations: int = 300, warmup: int = 10, seed: int = 7) -> Dict[str, Any]:
    import sop_telemetry  # noqa: F401 - instruments smolagents
    from sop_telemetry import TelemetryManager
    from sop_telemetry.otel import LiveOtlpExporter

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    healthy = _Healthy()
    storage = tempfile.TemporaryDirectory(prefix="sop_bench_otlp_")
    manager = TelemetryManager._reset_instance()
    # A new session file every iteration (4 tasks), so that the writer's work does not grow with the iterations.
    manager.initialize({"storage_dir": storage.name, "fsync": False, "auto_cleanup": False,
                        "max_tasks_per_session": len(SETUPS)})
    exporters: Dict[str, Optional[Any]] = {
        "off": None,
        "healthy": LiveOtlpExporter(endpoint=healthy.endpoint),
        "dead": LiveOtlpExporter(endpoint=_dead_endpoint()),
        "silent": LiveOtlpExporter(endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}"),
    }
    agent = _agent()
    times: Dict[str, List[float]] = {name: [] for name in SETUPS}
    rng = random.Random(seed)
    try:
        for i in range(warmup + iterations):
            order = list(SETUPS)
            rng.shuffle(order)
            sample: Dict[str, float] = {}
            for name in order:
                # The one private seam left: the live exporters are built once and switched, so that each keeps
                # its connection and back-off state across iterations, as in a long-lived process.
                manager._otlp = exporters[name]
                gc.collect()
                gc.disable()
                started = time.perf_counter()
                agent.run("add numbers")
                elapsed = time.perf_counter() - started
                gc.enable()
                sample[name] = elapsed
            manager._otlp = None
            manager.flush_data()  # the session file's writing stays out of the next timed run
            if i >= warmup:
                for name, value in sample.items():
                    times[name].append(value)
        off = times["off"]
        result: Dict[str, Any] = {"iterations": iterations, "setups": {},
                                  "submit_us": _submit_cost(silent.getsockname()[1])}
        for name in SETUPS:
            row = _summary(times[name])
            deltas = [t - o for t, o in zip(times[name], off, strict=True)]
            row["median_paired_delta_ms"] = statistics.median(deltas) * 1e3
            exporter = exporters[name]
            if exporter is not None:
                stats = exporter.stats()
                row.update({k: stats[k] for k in ("exported_tasks", "failed_tasks", "dropped_tasks", "queued")})
            result["setups"][name] = row
        return result
    finally:
        for exporter in exporters.values():
            if exporter is not None:
                exporter.shutdown(timeout=0)
        manager.shutdown(flush=False)
        healthy.close()
        silent.close()
        storage.cleanup()


def _table(result: Dict[str, Any]) -> str:
    lines = [f"Agent run with live OTLP export, {result['iterations']} interleaved iterations (ms per run)",
             f"{'setup':<9}{'median':>9}{'p10':>9}{'p90':>9}{'Δ vs off':>10}   exported/failed/dropped/queued"]
    for name, row in result["setups"].items():
        counts = "" if name == "off" else (f"{row['exported_tasks']}/{row['failed_tasks']}/"
                                           f"{row['dropped_tasks']}/{row['queued']}")
        lines.append(f"{name:<9}{row['median_ms']:>9.3f}{row['p10_ms']:>9.3f}{row['p90_ms']:>9.3f}"
                     f"{row['median_paired_delta_ms']:>+10.3f}   {counts}")
    submit = result["submit_us"]
    lines.append(f"agent-thread cost of handing over one task: {submit['queued']:.2f} µs queued, "
                 f"{submit['dropped']:.2f} µs dropped (queue full)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run_otlp_dead_collector(args.iterations, args.warmup)
    print(_table(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
