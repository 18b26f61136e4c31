"""Section 6: reading many stored sessions: ids, loading them all, and the `sop-telemetry list` command.

Usage::

    from benchmarks.sessions import run_sessions
    result = run_sessions(tmp_dir, sessions=1_000, repeats=3)

The directory is filled with `sessions` copies of one real session (one scripted agent run: 64 records), each under
its own id, written through `TelemetryDataStore.write`. Then, each the median of `repeats`:
`TelemetryManager.get_all_session_ids()` (a manager of its own pointed at the directory),
`sop_telemetry.analysis.load_sessions(directory=...)` read to the end, and `sop-telemetry list --dir ...` run as a
subprocess (interpreter start included: that is what a user waits for). A piece that does not exist yet is
reported as skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .stats import median, perf


def _one_session(manager: Any) -> bytes:
    from sop_telemetry.storage import new_session_id

    from .fake import ScriptedToolModel, tool_calling_agent

    collector = manager.get_collector()
    manager.flush_data()
    collector.roll_over(new_session_id())
    tool_calling_agent(ScriptedToolModel(tool_calls=20)).run("Add the numbers.")
    path = manager.flush_data()
    collector.roll_over(new_session_id())
    return Path(path).read_bytes()


def fill_directory(directory: Path, count: int, manager: Any) -> None:
    from sop_telemetry.storage import TelemetryDataStore, new_session_id

    template = json.loads(_one_session(manager))
    store = TelemetryDataStore(directory, fsync=False)
    now = time.time()
    for i in range(count):
        sid = new_session_id(now - (count - i) * 60.0)
        template["session_id"] = sid
        store.write(sid, json.dumps(template, separators=(",", ":")))


def _cli() -> Optional[list]:
    exe = shutil.which("sop-telemetry", path=os.path.dirname(sys.executable))
    if exe is not None:
        return [exe]
    try:
        import sop_telemetry.cli  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "sop_telemetry.cli"]


def run_sessions(directory: Path, sessions: int, repeats: int,
                 log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    from sop_telemetry import TelemetryManager

    directory.mkdir(parents=True, exist_ok=True)
    fill_directory(directory, sessions, TelemetryManager.get_instance())
    log(f"  sessions: {sessions} files written")
    out: Dict[str, Any] = {"sessions": sessions,
                           "bytes_per_file": sum(p.stat().st_size for p in directory.glob("*.json")) / sessions}

    reader = TelemetryManager()
    reader.read_only = True
    reader.initialize({"storage_dir": str(directory), "auto_cleanup": False})
    times = []
    for _ in range(repeats):
        t0 = perf()
        ids = reader.get_all_session_ids()
        times.append(perf() - t0)
    out["get_all_session_ids_ms"] = median(times) * 1e3
    out["ids_found"] = len(ids)

    try:
        from sop_telemetry.analysis import load_sessions
    except ImportError as exc:
        out["load_sessions_skipped"] = f"sop_telemetry.analysis not available: {exc}"
    else:
        times = []
        for _ in range(repeats):
            t0 = perf()
            loaded = sum(1 for _ in load_sessions(directory=directory))
            times.append(perf() - t0)
        out["load_sessions_ms"] = median(times) * 1e3
        out["load_sessions_count"] = loaded

    command = _cli()
    if command is None:
        out["cli_list_skipped"] = "the sop-telemetry command is not available yet"
    else:
        times = []
        for _ in range(repeats):
            t0 = perf()
            proc = subprocess.run([*command, "list", "--dir", str(directory)], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "200"})
            times.append(perf() - t0)
        if proc.returncode != 0:
            out["cli_list_skipped"] = f"sop-telemetry list failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
        else:
            out["cli_list_ms"] = median(times) * 1e3
            out["cli_list_lines"] = len(proc.stdout.splitlines())
    log("  sessions: reads done")
    return out
