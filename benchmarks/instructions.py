"""Section 1c: the machine instructions an agent run executes on its own thread, per setup, counted by callgrind.

Usage::

    from benchmarks.instructions import run_instructions
    run_instructions(runs=5)      # {"tool_calling": {"none": {...}, "sop": {...}, ...}, "code": {...}} or "skipped"

Why: section 1 times runs on a shared VM whose speed drifts by more than the 2% being measured, so its figure moves
from one full run to the next (1.4% to 3.9% for the same code). An instruction count moves far less: the
uninstrumented run counts the same whatever else the machine does (±0.01% between processes), and what a setup adds
moves by up to ±0.15 point (a setup with a writer thread interleaves with it differently in each process). It is not
time (a cache miss costs no instruction), so it is a lower bound of the timed overhead and a check on it, not a
replacement.

How: each setup runs in its own process under `valgrind --tool=callgrind --separate-threads=yes`, with collection
switched on only around `agent.run` (a callgrind client request, through a 4-line C helper compiled here against
valgrind's callgrind.h). The count is the main thread's: the writer thread, woken when a task ends, is counted
apart and not included, as section 1's "enabled" setup leaves the write out of the run. Every process first runs
the setup's warm-up runs (uncounted), like section 1. Needs valgrind, a C compiler and callgrind.h; skipped (and
said so) without them. With `--quick` each child runs natively, uncounted, once: a smoke run of the code path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

_HELPER = """#include <valgrind/callgrind.h>
void on(void) { CALLGRIND_TOGGLE_COLLECT; }
void off(void) { CALLGRIND_TOGGLE_COLLECT; }
"""
PLAN: Dict[str, Tuple[str, ...]] = {
    "tool_calling": ("none", "minimal_hooks", "sop", "sop_disabled", "openinference"),
    "code": ("none", "sop"),  # (OpenInference's ratio is measured on the ToolCallingAgent: each child costs ~40 s)
}
_WARMUP = 5


def _build_helper(directory: Path) -> Tuple[Optional[Path], str]:
    """(the helper library, "") or (None, why it could not be built)."""
    if shutil.which("valgrind") is None:
        return None, "valgrind is not installed (apt-get install valgrind)"
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler for the callgrind helper"
    source, library = directory / "cg_toggle.c", directory / "libcg_toggle.so"
    source.write_text(_HELPER)
    proc = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"the callgrind helper did not compile (valgrind's headers missing?): {proc.stderr.strip()[:200]}"
    return library, ""


def run_instructions(runs: int = 5, quick: bool = False, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    from .agent_run import openinference_available

    no_oi = openinference_available()
    plan = {kind: [s for s in setups if not (s.startswith("openinference") and no_oi)] for kind, setups in PLAN.items()}
    with tempfile.TemporaryDirectory(prefix="sop_bench_cg_") as tmp:
        directory = Path(tmp)
        if quick:
            library = None
            plan = {"tool_calling": ["none", "sop"]}
            runs = 1
        else:
            library, why = _build_helper(directory)
            if library is None:
                return {"skipped": why}
        jobs = [(kind, setup) for kind, setups in plan.items() for setup in setups]
        counts = _run_jobs(jobs, runs, library, directory, log)
    out: Dict[str, Any] = {"runs": runs, "warmup": _WARMUP, "counted": library is not None}
    if no_oi:
        out["openinference_skipped"] = no_oi
    for kind in plan:
        per_run = {setup: counts[(kind, setup)] for setup in plan[kind]}
        out[kind] = summarize(per_run)
    return out


def count_setups(module: str, setups: List[str], runs: int, warmup: int, quick: bool,
                 log: Callable[[str], None]) -> Dict[str, Any]:
    """Per setup, the instructions one run executes, every thread's, counted while `module`'s child (run as
    `python -m module --child SETUP RUNS WARMUP LIBRARY`) has collection on: each setup in its own process under
    callgrind, one after another. With `quick`, each child runs natively, once, uncounted."""
    with tempfile.TemporaryDirectory(prefix="sop_bench_cg_") as tmp:
        directory = Path(tmp)
        library = None
        if quick:
            runs, warmup = 1, 1
        else:
            library, why = _build_helper(directory)
            if library is None:
                return {"skipped": why}
        env = _child_env()
        counts: Dict[str, Optional[float]] = {}
        for setup in setups:
            out = directory / f"callgrind.{setup}"
            command = _under_callgrind(
                [sys.executable, "-m", module, "--child", setup, str(runs), str(warmup), str(library or "")],
                library, out)
            log(f"  instructions: {setup}")
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"the instruction count of {setup} failed (exit {proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-3000:]}")
            counts[setup] = None if library is None else sum(
                float(line.split()[1]) for part in directory.glob(f"callgrind.{setup}-*")
                for line in part.read_text().splitlines() if line.startswith("summary:")) / runs
    return {"runs": runs, "warmup": warmup, "counted": library is not None, **summarize(counts)}


def _child_env() -> Dict[str, str]:
    """A child's environment: this checkout first on the path, and the same dict layouts (so the same instructions)
    in every child."""
    root = Path(__file__).resolve().parent.parent
    return {**os.environ, "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def _under_callgrind(command: List[str], library: Optional[Path], out: Path) -> List[str]:
    """`command` run by callgrind, collecting nothing until the child switches it on (natively without `library`:
    --quick)."""
    if library is None:
        return command
    return ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}"] + command


@contextmanager
def child_manager() -> Iterator[Any]:
    """A child's TelemetryManager: sessions in a temporary folder, no periodic writes, no fsync; shut down after."""
    from sop_telemetry import TelemetryManager

    with tempfile.TemporaryDirectory(prefix="sop_bench_child_") as tmp:
        manager = TelemetryManager.get_instance()
        manager.initialize({"storage_dir": tmp, "auto_cleanup": False, "flush_interval": 86_400, "fsync": False})
        try:
            yield manager
        finally:
            manager.shutdown(flush=False)


def counted_runs(run: Callable[[], Any], runs: int, warmup: int, library: str,
                 before: Callable[[], Any] = lambda: None, after: Callable[[], Any] = lambda: None) -> None:
    """`warmup` uncounted calls of `run`, then `runs` counted ones: callgrind collects only inside them (switched by
    the helper `library`; nothing is switched without one), with the GC quiet. `before` and `after` each call, never
    counted."""
    import ctypes

    from .stats import quiet_gc

    helper = ctypes.CDLL(library) if library else None
    for counted in [False] * warmup + [True] * runs:
        before()
        with quiet_gc():
            if counted and helper is not None:
                helper.on()
            run()
            if counted and helper is not None:
                helper.off()
        after()


def _run_jobs(jobs: List[Tuple[str, str]], runs: int, library: Optional[Path], directory: Path,
              log: Callable[[str], None]) -> Dict[Tuple[str, str], Optional[float]]:
    """Runs the children, as many at a time as there are CPUs (an instruction count does not mind the load)."""
    env = _child_env()
    waiting, running = list(jobs), []
    counts: Dict[Tuple[str, str], Optional[float]] = {}
    width = max(1, min(2, os.cpu_count() or 1))
    while waiting or running:
        while waiting and len(running) < width:
            kind, setup = waiting.pop(0)
            out = directory / f"callgrind.{kind}.{setup}"
            command = _under_callgrind([sys.executable, "-m", "benchmarks.instructions", "--child", kind, setup,
                                        str(runs), str(library or "")], library, out)
            log(f"  instructions: {kind} / {setup}")
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((kind, setup, out, proc))
        kind, setup, out, proc = running.pop(0)
        output, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"the instruction count of {kind}/{setup} failed (exit {proc.returncode}):\n"
                               f"{output[-3000:]}")
        counts[(kind, setup)] = _main_thread_total(out) / runs if library is not None else None
    return counts


def _main_thread_total(out: Path) -> float:
    """The "summary:" line of the main thread's file (callgrind names them <file>-01, -02... by thread)."""
    for line in Path(f"{out}-01").read_text().splitlines():
        if line.startswith("summary:"):
            return float(line.split()[1])
    raise RuntimeError(f"no summary in {out}-01")


def summarize(per_run: Dict[str, Optional[float]]) -> Dict[str, Any]:
    base = per_run.get("none")
    setups: Dict[str, Dict[str, Optional[float]]] = {}
    for setup, count in per_run.items():
        added = None if count is None or base is None else count - base
        setups[setup] = {"per_run": count, "added": added,
                         "added_pct": None if added is None or not base else 100.0 * added / base}
    out: Dict[str, Any] = {"setups": setups}
    sop, oi = setups.get("sop", {}).get("added"), setups.get("openinference", {}).get("added")
    if sop and oi is not None and sop > 0:
        out["openinference_over_sop"] = oi / sop
    return out


def _child(kind: str, setup: str, runs: int, library: str) -> None:
    """One setup's runs, inside valgrind (or natively with no library: --quick)."""
    import sop_telemetry  # noqa: F401 - before smolagents, as a user would

    from .agent_run import Setups
    from .fake import section_one_agent

    with child_manager():
        model, agent = section_one_agent(kind)
        setups = Setups([type(model)], use_openinference=setup.startswith("openinference"))
        setups.activate(setup)
        try:
            def after() -> None:
                setups.after_run(setup)
                setups.cool_down(setup, agent)

            counted_runs(lambda: agent.run("Add the numbers."), runs, _WARMUP, library,
                         before=lambda: setups.warm_up(setup, agent), after=after)
        finally:
            setups.close()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit("usage: python -m benchmarks.instructions --child KIND SETUP RUNS LIBRARY")
