"""`python -m benchmarks`: runs every section, prints the tables and the targets, writes the figures as JSON.

Usage::

    python -m benchmarks                 # the full run (a few minutes), figures in benchmarks/results/latest.json
    python -m benchmarks --quick         # seconds: every section with tiny repetitions (CI smoke; figures meaningless)
    python -m benchmarks --json out.json --only agent,per_call
    python -m benchmarks --only agent --agent-samples 4   # section 1 with 4x the samples: a tighter interval

Nothing here asserts a timing: the exit status is 0 whenever the benchmark ran, whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

SECTIONS = ("agent", "ablation", "instructions", "per_call", "flush", "memory", "imports", "sessions", "otlp",
            "pydantic_ai", "langgraph", "long_running")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

FULL = {
    "agent_tool_calling": {"iterations": 200, "warmup": 5, "repeats": 3},
    "agent_code": {"iterations": 80, "warmup": 3, "repeats": 3},
    "ablation": {"iterations": 200, "warmup": 3, "repeats": 3},
    "instructions": {"runs": 5},
    "per_call": {"calls": 5_000, "batches": 20, "run_calls": 1_000},
    "per_call_cold": {"rounds": 100, "samples": 5},
    "flush": {"sizes": (1_000, 10_000), "repeats": 5},
    "memory": {"agent_runs": 50, "big_calls": 100_000},
    "imports": {"runs": 15},
    "sessions": {"sessions": 1_000, "repeats": 3},
    "otlp": {"iterations": 100, "warmup": 10},
    "pydantic_ai": {"iterations": 100, "warmup": 5, "repeats": 3},
    "langgraph": {"iterations": 100, "warmup": 5, "repeats": 3},
    "langgraph_instructions": {"runs": 5, "warmup": 3},
    "pydantic_ai_instructions": {"runs": 5, "warmup": 3},
    "long_running": {"sizes": ((1_000, "agent"), (10_000, "agent"), (10_000, "collector"), (100_000, "collector"),
                               (3_000, "big")),
                     "repeats": 1},
}
QUICK = {
    "agent_tool_calling": {"iterations": 4, "warmup": 1, "repeats": 1, "openinference_every": 2},
    "agent_code": {"iterations": 2, "warmup": 1, "repeats": 1, "openinference_every": 1},
    "ablation": {"iterations": 2, "warmup": 1, "repeats": 1},
    "instructions": {"runs": 1, "quick": True},
    "per_call": {"calls": 200, "batches": 2, "run_calls": 50},
    "per_call_cold": {"rounds": 2, "samples": 2},
    "flush": {"sizes": (1_000,), "repeats": 1},
    "memory": {"agent_runs": 2, "big_calls": 22_000},
    "imports": {"runs": 2},
    "sessions": {"sessions": 20, "repeats": 1},
    "otlp": {"iterations": 3, "warmup": 1},
    "pydantic_ai": {"iterations": 2, "warmup": 1, "repeats": 1},
    "langgraph": {"iterations": 3, "warmup": 1, "repeats": 1},
    "langgraph_instructions": {"quick": True},
    "pydantic_ai_instructions": {"quick": True},
    "long_running": {"sizes": ((50, "agent"), (500, "collector")), "repeats": 1},
}


def _parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run of every section")
    parser.add_argument("--json", metavar="PATH", type=Path, default=None,
                        help="where to write the figures (default: benchmarks/results/latest.json)")
    parser.add_argument("--only", metavar="SECTIONS", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--agent-samples", metavar="FACTOR", type=float, default=1.0,
                        help="multiplies section 1's samples (e.g. 4 for a tighter interval; time grows alike)")
    return parser.parse_args(argv)


def main(argv: List[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    plan = {k: dict(v) for k, v in (QUICK if args.quick else FULL).items()}
    for key in ("agent_tool_calling", "agent_code"):
        plan[key]["iterations"] = max(1, round(plan[key]["iterations"] * args.agent_samples))
    # OpenInference's LLM spans carry more attributes than OpenTelemetry's default limit (128), and the SDK warns once
    # per span; printing thousands of warnings would be charged to OpenInference's runs, so they are silenced.
    logging.getLogger("opentelemetry.attributes").setLevel(logging.ERROR)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    import sop_telemetry  # noqa: F401 - before smolagents, as a user would
    from sop_telemetry import TelemetryManager

    # isort: split
    import smolagents

    started = time.perf_counter()
    results: Dict[str, Any] = {"meta": {
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "smolagents": smolagents.__version__,
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "command": "python -m benchmarks" + (" --quick" if args.quick else "")
        + (f" --agent-samples {args.agent_samples:g}" if args.agent_samples != 1.0 else ""),
        "plan": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in plan.items()},
    }}
    with tempfile.TemporaryDirectory(prefix="sop_bench_") as tmp:
        tmp_path = Path(tmp)
        manager = TelemetryManager.get_instance()
        # No periodic background writes (flush_interval): section 1 waits for the write each run sets off, and a
        # timed write landing in between would be taken for it.
        manager.initialize({"storage_dir": str(tmp_path / "telemetry"), "auto_cleanup": False,
                            "flush_interval": 86_400})
        try:
            if "agent" in wanted:
                from .agent_run import run_agent_overhead

                for kind in ("tool_calling", "code"):
                    log(f"1. agent run overhead: {kind}")
                    results[f"agent_{kind}"] = run_agent_overhead(kind, log=log, **plan[f"agent_{kind}"])
            if "ablation" in wanted:
                from .ablation import run_ablation

                log("1d. where the overhead goes (ablation)")
                results["ablation"] = run_ablation(log=log, **plan["ablation"])
            if "instructions" in wanted:
                from .instructions import run_instructions

                log("1c. instructions per agent run (callgrind)")
                results["instructions"] = run_instructions(log=log, **plan["instructions"])
            if "per_call" in wanted:
                from .per_call import run_cold_calls, run_per_call

                log("2. per-call cost")
                results["per_call"] = run_per_call(log=log, **plan["per_call"])
                results["per_call_cold"] = run_cold_calls(log=log, **plan["per_call_cold"])
            if "flush" in wanted:
                from .flush import run_flush

                log("3. flush")
                results["flush"] = run_flush(tmp_path / "telemetry", log=log, **plan["flush"])
            if "memory" in wanted:
                from .memory import run_memory

                log("4. memory")
                results["memory"] = run_memory(log=log, **plan["memory"])
            if "imports" in wanted:
                from .imports import run_imports

                log("5. import")
                results["imports"] = run_imports(**plan["imports"])
            if "sessions" in wanted:
                from .sessions import run_sessions

                log("6. many sessions")
                results["sessions"] = run_sessions(tmp_path / "many", log=log, **plan["sessions"])
            if "otlp" in wanted:
                try:
                    import opentelemetry.exporter.otlp.proto.http  # noqa: F401
                except ImportError:
                    log("7. live OTLP export skipped: pip install -e '.[otel]'")
                else:
                    from .otlp_dead_collector import run_otlp_dead_collector

                    log("7. live OTLP export to a healthy, dead and silent collector")
                    results["otlp"] = run_otlp_dead_collector(**plan["otlp"])
            if "pydantic_ai" in wanted:
                try:
                    import pydantic_ai  # noqa: F401
                except ImportError:
                    log("8. pydantic-ai run overhead skipped: pip install -e '.[bench]'")
                else:
                    from .pydantic_ai_run import run_pydantic_ai_overhead

                    log("8. pydantic-ai run overhead")
                    results["pydantic_ai"] = run_pydantic_ai_overhead(log=log, **plan["pydantic_ai"])
                    from .pydantic_ai_run import run_pydantic_ai_instructions

                    results["pydantic_ai_instructions"] = run_pydantic_ai_instructions(
                        log=log, **plan["pydantic_ai_instructions"])
            if "langgraph" in wanted:
                from .langgraph_run import run_langgraph_overhead

                log("9. LangGraph agent run overhead")
                results["langgraph"] = run_langgraph_overhead(log=log, **plan["langgraph"])
                from .langgraph_run import run_langgraph_instructions

                results["langgraph_instructions"] = run_langgraph_instructions(log=log,
                                                                               **plan["langgraph_instructions"])
            if "long_running" in wanted:
                from .long_running import run_long_running

                log("10. long-running process")
                results["long_running"] = run_long_running(log=log, **plan["long_running"])
        finally:
            manager.shutdown(flush=False)
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)

    from .report import render, targets

    results["targets"] = [{"target": what, "measured": measured, "limit": limit,
                           "result": None if ok is None or args.quick else ("PASS" if ok else "FAIL")}
                          for what, measured, limit, ok in targets(results)]
    print(render(results))
    if "otlp" in results:
        from .otlp_dead_collector import _table as otlp_table

        print("\n7. " + otlp_table(results["otlp"]))
    if "langgraph" in results:
        from .langgraph_run import render as render_langgraph

        print(render_langgraph(results))
    if "long_running" in results:
        from .long_running import table as long_running_table

        print("\n10. " + long_running_table(results["long_running"]))
    print(f"\n({results['meta']['seconds']} s)")
    out = args.json or DEFAULT_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
