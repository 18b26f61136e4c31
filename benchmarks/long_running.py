"""Section 10: one long-running process, many short tasks: is everything it pays for bounded?

Usage::

    from benchmarks.long_running import run_long_running
    result = run_long_running(sizes=((1_000, "agent"), (10_000, "agent"), (100_000, "collector")), repeats=2)
    python -m benchmarks.long_running child 1000 agent on /tmp/dir      # one run, its figures as JSON

Each run is a fresh interpreter running `tasks` short tasks back to back, telemetry on (`SOP_TELEMETRY_DIR`) or off
(`SOP_TELEMETRY_DISABLED=1`, the operator's switch): "agent" is one ToolCallingAgent reused, with a scripted model
(two tool calls, then the final answer), as a service answering requests would; "collector" is the recorder API
(`start_task`, one model call, two tool calls, `end_task`), for the size where the agent would take too long;
"big" is the same with 20 model calls and 40 tool calls a task, whose parts end at `max_session_bytes` rather
than at `max_tasks_per_session`: the largest files a process writes with the default bounds.
After 20 warm-up tasks and one write, the "on" child runs the second tenth of its tasks ("start") and the last
tenth ("end") in blocks of 25 alternating with as many tasks with telemetry switched off, and takes the CPU time
telemetry adds per task from thread CPU clocks: the main thread's, on minus off, plus the writer thread's (see
`_window`); thread clocks and interleaving keep the load of other processes out of the difference. Each child
measures its peak RSS and the bytes it passed to write() (/proc/self/io, the final write at exit included). The
parent then counts the files and bytes left on disk, checks that they hold every task exactly once, and times
`sop-telemetry show` on the largest file and `report` on a directory holding only it, and on them all
(subprocesses, interpreter start included). Each figure is the median of `repeats`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .stats import median

WARM = 20  # tasks run (and written) before the measured ones


def run_long_running(sizes: Sequence[Tuple[int, str]], repeats: int = 2,
                     log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    rows = []
    for tasks, kind in sizes:
        runs: Dict[str, List[Dict[str, Any]]] = {"off": [], "on": []}
        disk: Dict[str, Any] = {}
        for _ in range(repeats):
            for mode in ("off", "on"):
                with tempfile.TemporaryDirectory(prefix="sop_long_") as tmp:
                    runs[mode].append(_run_child(tasks, kind, mode, tmp))
                    if mode == "on" and not disk:
                        disk = _on_disk(Path(tmp), tasks + WARM)
            log(f"  long-running: {tasks} {kind} tasks, on and off")
        rows.append(_row(tasks, kind, runs, disk))
    return {"rows": rows, "rss_growth": _rss_growth(rows)}


def _rss_growth(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per kind run at two sizes or more: the added peak RSS (on minus off) at the smallest and the largest size."""
    out = {}
    for kind in {r["kind"] for r in rows}:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["tasks"])
        if len(mine) > 1:
            first, last = mine[0], mine[-1]
            out[kind] = {"tasks": [first["tasks"], last["tasks"]],
                         "added_mb": [first["peak_rss_on_mb"] - first["peak_rss_off_mb"],
                                      last["peak_rss_on_mb"] - last["peak_rss_off_mb"]]}
    return out


def _run_child(tasks: int, kind: str, mode: str, directory: str) -> Dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY_")}
    if mode == "off":
        env["SOP_TELEMETRY_DISABLED"] = "1"
    env["SOP_TELEMETRY_DIR"] = directory
    done = subprocess.run([sys.executable, "-m", "benchmarks.long_running", "child", str(tasks), kind, mode, directory],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _on_disk(directory: Path, tasks: int) -> Dict[str, Any]:
    from sop_telemetry.storage import TelemetryDataStore

    store = TelemetryDataStore(directory)
    files = store.session_files()
    keys, parts = [], set()
    for session in store.iter_sessions():
        parts.add((session.series_id, session.part))
        keys.extend((t.task_id, t.start_time) for t in session.tasks if not t.implicit)
    largest = max(files, key=lambda row: row[2])
    return {
        "files": len(files),
        "parts": len(parts),
        "bytes_on_disk": sum(p.stat().st_size for p in directory.iterdir() if p.is_file()),
        "largest_file_bytes": largest[2],
        "tasks_on_disk": len(keys),
        "exactly_once": len(keys) == len(set(keys)) == tasks,
        "startup_s": _cli(directory.parent, "stats"),  # (the command with nothing to read)
        "show_s": _cli(directory, "show", largest[0]),
        "report_largest_s": _report_one(largest[1]),
        "report_s": _cli(directory, "report"),
    }


def _report_one(path: Path) -> Dict[str, float]:
    """`sop-telemetry report` over a directory that holds only `path`."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="sop_long_one_") as one:
        shutil.copy(path, one)
        return _cli(Path(one), "report")


def _cli(directory: Path, *args: str) -> Dict[str, float]:
    """Wall and CPU seconds (user + system) of one `sop-telemetry` command, interpreter start included. The CPU
    time is what it takes on an idle machine; the wall time also counts waiting for a CPU on a busy one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sop_telemetry", "--dir", str(directory), *args],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def _row(tasks: int, kind: str, runs: Dict[str, List[Dict[str, Any]]], disk: Dict[str, Any]) -> Dict[str, Any]:
    def med(mode: str, key: str) -> float:
        return median([r[key] for r in runs[mode]])

    def window(name: str, key: str) -> float:
        return median([r[name][key] for r in runs["on"]])

    start, end = window("start", "added_us"), window("end", "added_us")
    written = med("on", "bytes_written") - med("off", "bytes_written")
    return {
        "tasks": tasks, "kind": kind,
        "cpu_per_task_off_us": [window("start", "off_us"), window("end", "off_us")],
        "added_cpu_start_us": start, "added_cpu_end_us": end,
        "writer_cpu_us": [window("start", "writer_us"), window("end", "writer_us")],
        "end_over_start": end / start if start > 0 else None,
        "peak_rss_off_mb": med("off", "peak_rss_mb"), "peak_rss_on_mb": med("on", "peak_rss_mb"),
        "bytes_written": written,
        "written_over_on_disk": written / disk["bytes_on_disk"] if disk.get("bytes_on_disk") else None,
        **disk,
    }


def table(result: Dict[str, Any]) -> str:
    from .report import _f
    from .report import table as draw

    rows = [[f"{r['tasks']:,} {r['kind']}", f"{_f(r['added_cpu_start_us'], 0)} → {_f(r['added_cpu_end_us'], 0)}",
             f"{_f(r['writer_cpu_us'][0], 0)} → {_f(r['writer_cpu_us'][1], 0)}",
             _f(r["end_over_start"]), f"{_f(r['peak_rss_off_mb'], 0)} → {_f(r['peak_rss_on_mb'], 0)}",
             f"{r['bytes_written'] / 1e6:.1f} / {r['bytes_on_disk'] / 1e6:.1f}", _f(r["written_over_on_disk"]),
             f"{r['files']} ({r['largest_file_bytes'] / 1e6:.1f} MB)", "yes" if r["exactly_once"] else "NO",
             " / ".join(f"{r[k]['cpu']:.2f} ({r[k]['wall']:.2f})"
                        for k in ("startup_s", "show_s", "report_largest_s", "report_s"))]
            for r in result["rows"]]
    return draw("Long-running process (section 10): telemetry on vs off, one process",
                ["tasks", "added CPU/task µs start → end", "of it the writer's", "end/start", "peak RSS MB off → on",
                 "MB written / on disk", "ratio", "files (largest)", "each task once",
                 "CLI s, CPU (wall): start / show largest / report largest / report all"], rows)


def _child(tasks: int, kind: str, mode: str, directory: str) -> Dict[str, Any]:
    import sop_telemetry  # noqa: F401 - as a user would, before the framework
    from sop_telemetry import TelemetryManager

    manager = TelemetryManager.get_instance()
    manager.initialize({"storage_dir": directory, "auto_cleanup": False})
    if kind == "agent":
        from .fake import ScriptedToolModel, tool_calling_agent

        agent = tool_calling_agent(ScriptedToolModel(tool_calls=2))

        def one(n: int) -> None:
            agent.run("Add the numbers.")
    else:
        collector = manager.get_collector()
        calls = 20 if kind == "big" else 1

        def one(n: int) -> None:
            collector.start_task(f"t{n}", "a short task")
            for _ in range(calls):
                collector.record_llm_call("scripted-model", prompt_tokens=120, completion_tokens=20, duration=0.01)
                collector.record_tool_usage("add", 0.001)
                collector.record_tool_usage("add", 0.001)
            collector.end_task(f"t{n}")

    # Warm: a few tasks and one write first (the first write imports the price data: a one-off second of CPU on
    # the writer's thread that would otherwise land in the "start" window), as in a service that has been up a while.
    for n in range(WARM):
        one(-1 - n)
    manager.flush_data()
    tenth = max(1, tasks // 10)
    figures: Dict[str, Any] = {}
    n = 0
    while n < tasks:
        if mode == "on" and n in (tenth, tasks - tenth):
            figures["start" if n == tenth else "end"] = _window(manager, one, n, tenth)
            n += tenth
        else:
            one(n)
            n += 1
    figures["peak_rss_mb"] = _peak_rss_mb()
    manager.shutdown()  # the exit's write, counted in the bytes
    figures["bytes_written"] = _written_bytes()
    return figures


def _window(manager: Any, one: Callable[[int], None], first: int, count: int, block: int = 25) -> Dict[str, float]:
    """Runs tasks `first` .. `first + count` recorded, in blocks of `block` alternating with as many unrecorded
    (telemetry switched off), and returns the CPU time telemetry adds per recorded task: the main thread's, on minus
    off (thread CPU clocks, so the load of other processes cancels out), plus the writer thread's over the window."""
    writer = next((t for t in threading.enumerate() if t.name == "sop_telemetry-writer"), None)
    clock = time.pthread_getcpuclockid(writer.ident) if writer is not None and writer.ident else None
    writer_before = time.clock_gettime(clock) if clock is not None else 0.0
    spent = {True: 0.0, False: 0.0}
    done = {True: 0, False: 0}
    while done[True] < count:
        for on in (True, False):
            (manager.enable_telemetry if on else manager.disable_telemetry)()
            size = min(block, count - done[True]) if on else block
            began = time.thread_time()
            for i in range(size):
                one(first + done[True] + i if on else -1)
            spent[on] += time.thread_time() - began
            done[on] += size
    manager.enable_telemetry()
    writer_cpu = (time.clock_gettime(clock) - writer_before) if clock is not None else 0.0
    main = spent[True] / done[True] - spent[False] / done[False]
    return {"added_us": (main + writer_cpu / done[True]) * 1e6, "main_added_us": main * 1e6,
            "writer_us": writer_cpu / done[True] * 1e6, "off_us": spent[False] / done[False] * 1e6}


def _peak_rss_mb() -> float:
    """This process's peak RSS since it started its program: VmHWM (ru_maxrss would count the parent's RSS at the
    fork, which survives exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _written_bytes() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        figures = _child(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        print(json.dumps(figures))
