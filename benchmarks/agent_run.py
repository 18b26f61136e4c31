"""Section 1: what telemetry adds to a whole agent run, side by side with no telemetry and with OpenInference.

Usage::

    from benchmarks.agent_run import run_agent_overhead
    result = run_agent_overhead("tool_calling", iterations=200, warmup=5, repeats=3)
    result["cpu"]["setups"]["sop"]["added_pct"]

All setups live in one process and are switched in turn (the order shuffled per iteration), so each iteration gives
one paired sample per setup: its time minus the uninstrumented run's time in the same iteration. A sample is the
fastest of a few timed runs (`repeats`). After each switch one untimed run warms the setup up (`Setups.warm_up`):
moving methods in and out of classes throws away what the interpreter specialized for them, and the first run after
that is not a typical one. After each timed run of sop_telemetry, whose write of the session is waited for outside
the timing, one untimed run that writes nothing (`Setups.cool_down`) keeps that write's effect on the caches (about
1 ms on the next run on this machine) from landing in the next timed run, whichever setup it belongs to; it is
counted, with the write itself, in ``sop_with_write`` and in the flush section.
Both the wall time and the process CPU time (every thread) of `agent.run` are taken; the CPU figure is the headline
because on a shared machine wall time also measures the neighbours. Switching is outside the timed region, and so
is a young-generation GC (the heap is frozen first, so that collections stay cheap and out of the runs):

- ``none``: sop_telemetry's integration uninstalled, OpenInference uninstrumented;
- ``sop``: ``install()``, telemetry enabled, runs back to back: each timed run ends within the pause the writer
  takes after the previous run's write, so its end does not wake the writer, which writes the session when the
  pause is over, outside the timing;
- ``sop_idle``: the same, but each timed run ends with the writer idle (its pause waited out before the run), so its
  end wakes the writer: a system call on the agent's thread, which a program whose tasks are further apart than the
  writer's pause pays at every task's end;
- ``sop_with_write``: as ``sop_idle``, timed until the session file is written, so the writer's CPU time for the run
  counts (but not what the write costs the run after it);
- ``sop_unwritten`` (a diagnostic): the same hooks as ``sop``, but the session is never written: the manager is
  read-only during its runs (a task's end does not wake the writer) and each run's events are dropped unbuilt
  afterwards. ``sop`` minus ``sop_unwritten`` is what the writer's work between runs costs the runs after it, through
  the caches and the allocator's state, which the untimed cool-down run does not fully absorb;
- ``sop_disabled``: ``install()`` then ``disable_telemetry()``;
- ``minimal_hooks``: the cheapest hook possible at every place sop_telemetry hooks to time a call (generate,
  generate_stream, a tool's ``__call__``, ``_generate_planning_step``, ``run``): read the clock, call the original,
  read the clock, append the two figures to a list; generated with the original's own parameters where it can be, as
  sop_telemetry's are. No telemetry written in Python at these call sites costs less, so ``sop`` minus
  ``minimal_hooks`` is what sop_telemetry's own bookkeeping adds;
- ``openinference`` / ``openinference_batch``: ``SmolagentsInstrumentor().instrument(tracer_provider=...)`` with an
  SDK TracerProvider and an InMemorySpanExporter behind a SimpleSpanProcessor (as the OpenInference docs show, minus
  the network) or a BatchSpanProcessor.

OpenInference wraps `generate` only on the model classes smolagents exports, so a user's own Model subclass gets no
LLM spans; to compare like with like, its own `_ModelWrapper` is also applied to the scripted model class here (what
it does for every exported model). Its `uninstrument()` restores originals by `setattr` on each class, which leaves
copies of inherited methods on subclasses; every attribute either tool touches is snapshotted while clean and put
back after each switch, and checked, so no setup runs with another's leftovers.

Background work is kept out of the next setup's timing: after a run, the writer's own write of the session is waited
for (not forced: a forced extra write would leave the writer a stale wake-up that lands in a later run), and so is,
when a sop_telemetry setup is switched off, the end of the writer's pause (when it is over the writer looks once for
something to write, a GIL acquisition that belongs to sop_telemetry's runs); OpenInference's batch processor is
force-flushed.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from sop_telemetry.integrations.patching import as_method

from .fake import section_one_agent
from .stats import bootstrap_ci, cpu_time, freeze_heap, median, minimal_hook_factory, perf, quiet_gc, trimmed_mean

_ORDER = ("none", "minimal_hooks", "sop", "sop_idle", "sop_unwritten", "sop_with_write", "sop_disabled",
          "openinference", "openinference_batch")
_HOOKED = ("generate", "generate_stream", "__call__", "_generate_planning_step", "run")
_ATTRS = ("run", "_step_stream", "_finalize_step", "_generate_planning_step", "generate", "generate_stream", "__call__",
          "__init_subclass__")
_ABSENT = object()
_WRITTEN = ("sop", "sop_idle", "sop_with_write")  # sop_telemetry setups whose sessions are written
_IDLE = ("sop_idle", "sop_with_write")  # ...each of whose timed runs ends with the writer idle (see warm_up)
_SOP = _WRITTEN + ("sop_unwritten", "sop_disabled")


def openinference_available() -> Optional[str]:
    """None if OpenInference and the OpenTelemetry SDK can be imported, else why not."""
    try:
        import openinference.instrumentation.smolagents  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return f"OpenInference column skipped: {exc} (pip install -e '.[bench]')"
    return None


class _Snapshot:
    """What the smolagents classes and the executor module look like with no instrumentation, to restore exactly."""

    def __init__(self, classes: List[type]) -> None:
        from smolagents import local_python_executor

        self.entries: List[Tuple[Any, str, Any]] = [
            (cls, attr, vars(cls).get(attr, _ABSENT)) for cls in classes for attr in _ATTRS
        ]
        self.entries += [(local_python_executor, attr, vars(local_python_executor).get(attr, _ABSENT))
                         for attr in ("timeout", "ThreadPoolExecutor")]

    def restore(self) -> int:
        """Puts every attribute back; returns how many had to be fixed (0 when the last uninstall was exact)."""
        fixed = 0
        for owner, attr, value in self.entries:
            now = vars(owner).get(attr, _ABSENT)
            if now is value:
                continue
            fixed += 1
            if value is _ABSENT:
                delattr(owner, attr)
            else:
                setattr(owner, attr, value)
        return fixed


def _fresh_session(collector: Any) -> None:
    """A new session for the next run. It refuses while a task is open, which after a run would mean that the run's
    events were built only in part: a harness error, to be told, not measured through."""
    from sop_telemetry.storage import new_session_id

    if collector.roll_over(new_session_id()) is None:
        still = [t["task_id"] for t in collector.snapshot()["tasks"] if t["status"] == "running"]
        raise RuntimeError(f"a task is still open after the run: {still}")


def _drop_queued(collector: Any) -> int:
    """Drops the run's queued events unbuilt (nothing of it is written) and starts a fresh session; returns how
    many events there were."""
    queued = len(collector.pending)
    collector.pending.clear()
    _fresh_session(collector)
    return queued


def _all_subclasses(*bases: type) -> List[type]:
    seen: List[type] = []
    todo = list(bases)
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(type.__subclasses__(cls))
    return seen


class Setups:
    """Switches the process between the setups; `activate(name)` always starts from the clean snapshot."""

    def __init__(self, model_classes: List[type], use_openinference: bool) -> None:
        from smolagents.agents import MultiStepAgent
        from smolagents.models import Model
        from smolagents.tools import Tool

        from sop_telemetry import TelemetryManager
        from sop_telemetry.integrations import smolagents as integration

        self.integration = integration
        self.manager = TelemetryManager.get_instance()
        self.model_classes = model_classes
        integration.install()
        self._hook_targets = [(owner, attr, original) for owner, attr, original, _ in
                              integration.integration.patches.patched if attr in _HOOKED]
        integration.uninstall()
        self._minimal_sink: List[tuple] = []
        self.snapshot = _Snapshot(_all_subclasses(Model, Tool, MultiStepAgent))
        self.active = "none"
        self.leftovers: Dict[str, int] = {}
        self.names = ["none", "minimal_hooks", "sop", "sop_idle", "sop_unwritten", "sop_with_write", "sop_disabled"]
        self.writes = {True: 0, False: 0}  # the sop setups' writes, by whether they were fsynced as they were made
        self._oi: Dict[str, Any] = {}
        if use_openinference:
            self._setup_openinference()
            self.names += ["openinference", "openinference_batch"]

    def _setup_openinference(self) -> None:
        from openinference.instrumentation.smolagents import SmolagentsInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        for name, processor_class in (("openinference", SimpleSpanProcessor),
                                      ("openinference_batch", BatchSpanProcessor)):
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(processor_class(exporter))
            self._oi[name] = (provider, exporter)
        self._instrumentor = SmolagentsInstrumentor()

    def activate(self, name: str) -> None:
        self._deactivate()
        if name in _SOP:
            self.integration.install()
            if name == "sop_disabled":
                self.manager.disable_telemetry()
            else:
                self.manager.enable_telemetry()
            if name in _WRITTEN:
                self._spy_writes()
            self.manager.read_only = name == "sop_unwritten"
        elif name == "minimal_hooks":
            make = minimal_hook_factory(self._minimal_sink)
            for owner, attr, original in self._hook_targets:
                setattr(owner, attr, make(as_method(original)))
        elif name.startswith("openinference"):
            import wrapt
            from openinference.instrumentation.smolagents._wrappers import _ModelWrapper

            provider, _ = self._oi[name]
            self._instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
            for cls in self.model_classes:
                wrapt.wrap_function_wrapper(cls, "generate", _ModelWrapper(tracer=self._instrumentor._tracer))
        self.active = name

    def _spy_writes(self) -> None:
        """Counts the setup's session writes by whether they were fsynced as they were made."""
        from sop_telemetry.storage import TelemetryDataStore

        original, counts = TelemetryDataStore.write, self.writes

        def write(store: Any, session_id: str, payload: Any, sync: bool = True) -> Any:
            try:
                return original(store, session_id, payload, sync)
            finally:
                counts[sync and store.fsync] += 1

        self._unspy = lambda: setattr(TelemetryDataStore, "write", original)
        TelemetryDataStore.write = write  # type: ignore[method-assign]

    def warm_up(self, name: str, agent: Any) -> None:
        """Untimed runs after each switch. Moving methods in and out of classes invalidates what the interpreter
        has specialized for them, so the first run after a switch is not a typical one; and the run before it may
        have left the caches cold (a session just written by the writer thread costs the next run about 1 ms).
        sop_telemetry's warm-up run records nothing to disk: its queued events are dropped unbuilt, so that no
        write lands right before the timed run.

        Here and in `cool_down` the writer is also put in the state the setup measures it in when a timed run
        ends. After a write it pauses (20 times as long as the write took: about 40 ms here); a task that ends
        in that pause does not wake it, one that ends while it is idle does (a system call on the agent's thread,
        15-30 µs here). ``sop`` measures runs back to back: one written run after the warm-up, so that the first
        timed run, like every later one, ends within the pause after the previous run's write. ``sop_idle`` and
        ``sop_with_write`` measure the other case: the pause is waited out before each timed run."""
        if name in _SOP and name != "sop_disabled":
            self._quiet_run(name, agent)
            if name == "sop":  # a written run, then what follows every timed run
                agent.run("Add the numbers.")
                self.after_run(name)
                self.cool_down(name, agent)
            return
        agent.run("Add the numbers.")
        self.after_run(name)

    def cool_down(self, name: str, agent: Any) -> None:
        """After a timed run of sop_telemetry (and the write it set off, already waited for): one more run that
        writes nothing, so that the caches that write disturbed are warm again before the next timed run, as
        they are after the other setups' runs; for the setups that measure a task's end with the writer idle, after
        the writer's pause is over."""
        if name in _WRITTEN:
            if name in _IDLE:
                self._await_idle_writer()
            self._quiet_run(name, agent)

    def _quiet_run(self, name: str, agent: Any) -> None:
        """A run whose events are dropped unbuilt, the manager read-only meanwhile: its end wakes no writer."""
        self.manager.read_only = True
        try:
            agent.run("Add the numbers.")
        finally:
            self.manager.read_only = name == "sop_unwritten"
        _drop_queued(self.manager.get_collector())

    def wait(self, name: str) -> None:
        """Inside the timed region of `sop_with_write`: until the run's session is on disk, so that the writer
        thread's CPU time for it is counted (process CPU time counts every thread)."""
        if name == "sop_with_write":
            self._await_write()

    def _await_write(self, timeout: float = 60.0) -> None:
        """Until the writer thread has written the run's task (the public `wait_until_written`: nothing is written
        on this thread). Generous: the write ends with an fsync, which a VM's shared disk can stall for seconds."""
        if not self.manager.wait_until_written(timeout=timeout):
            raise RuntimeError(f"the writer did not write the run's task within {timeout:g} s: {self._writer_state()}")

    def _await_idle_writer(self, timeout: float = 60.0) -> None:
        """Until the writer has ended the pause it takes after a write and waits for the next task's end: when
        the pause is over it looks once for something to write, and that look (a GIL acquisition) belongs to
        sop_telemetry's runs, not to the next setup's."""
        start = perf()
        while self.manager.writer_state not in ("idle", "stopped"):
            if perf() - start > timeout:
                raise RuntimeError(f"the writer did not go idle within {timeout:g} s: {self._writer_state()}")
            time.sleep(0.001)

    def _writer_state(self) -> str:
        from sop_telemetry.error_handler import get_error_handler

        stats = self.manager.get_storage_stats()
        return (f"writer {self.manager.writer_state}, read_only={self.manager.read_only}, session "
                f"{stats.get('current_session_id')} ({stats.get('current_session_tasks')} tasks, unwritten changes: "
                f"{stats.get('unwritten_changes')}), errors={get_error_handler().get_error_summary()}")

    def _deactivate(self) -> None:
        name = self.active
        if name in _WRITTEN:
            self._unspy()
            self._await_idle_writer()
        if name in _SOP:
            self.integration.uninstall()
            self.manager.enable_telemetry()
            self.manager.read_only = False
        elif name.startswith("openinference"):
            self._instrumentor.uninstrument()
        fixed = self.snapshot.restore()
        if fixed:
            self.leftovers[name] = self.leftovers.get(name, 0) + fixed
        self.active = "none"

    def after_run(self, name: str) -> Dict[str, int]:
        """Outside the timed region: drains background work and counts what the run recorded."""
        if name == "minimal_hooks":
            calls = len(self._minimal_sink)
            self._minimal_sink.clear()
            return {"timed_calls": calls}
        if name == "sop_unwritten":
            return {"queued_events": _drop_queued(self.manager.get_collector())}
        if name in _WRITTEN:
            collector = self.manager.get_collector()
            tasks = collector.snapshot()["tasks"]
            counts = {kind: sum(len(t[kind]) for t in tasks) for kind in ("llm_calls", "tools", "steps", "agents")}
            # The writer saw the task's end (woken by it, or when its pause was over): its write is waited for here
            # (sop_with_write waited inside the timing), not forced, so that nothing of it spills into the next
            # run. Then a fresh session, so that every run is a short script's.
            if name != "sop_with_write":
                self._await_write()
            _fresh_session(collector)
            return counts
        if name.startswith("openinference"):
            provider, exporter = self._oi[name]
            provider.force_flush()
            spans = len(exporter.get_finished_spans())
            exporter.clear()
            return {"spans": spans}
        return {}

    def close(self) -> None:
        self._deactivate()
        self.integration.install()
        self.manager.enable_telemetry()
        for provider, _ in self._oi.values():
            provider.shutdown()


Row = Dict[str, Tuple[float, float]]  # one iteration: (wall, CPU) seconds per setup


def sample(setups: Setups, agent: Any, iterations: int, warmup: int, repeats: int, openinference_every: int = 1,
           seed: int = 1, progress: Callable[[int], None] = lambda i: None
           ) -> Tuple[List[Row], Dict[str, Dict[str, int]], Dict[str, List[bool]]]:
    """The interleaved timing of `setups.names` on `agent` (closes `setups`): per iteration after `warmup`, a row of
    (wall, CPU) seconds per setup, each the fastest of `repeats` timed runs, which keeps out most of what this
    machine's neighbours add to a run (the noise only ever adds); also what each setup's first timed run recorded,
    and, for the written setups, whether each timed run ended within the writer's pause."""
    manager = setups.manager
    freeze_heap()
    rows: List[Row] = []
    recorded: Dict[str, Dict[str, int]] = {}
    paused: Dict[str, List[bool]] = {"sop": [], "sop_idle": []}  # was the writer in its pause when a timed run ended
    rng = random.Random(seed)
    try:
        for i in range(warmup + iterations):
            order = [n for n in setups.names if not n.startswith("openinference") or i % openinference_every == 0]
            rng.shuffle(order)
            row: Row = {}
            for name in order:
                setups.activate(name)
                setups.warm_up(name, agent)
                best = (float("inf"), float("inf"))
                for _ in range(repeats):
                    with quiet_gc():
                        c0, t0 = cpu_time(), perf()
                        agent.run("Add the numbers.")
                        # Read at the run's end (in every setup, alike): by the time the timing is over, a writer
                        # the run's end woke may have written and begun its next pause.
                        pausing = manager.writer_state == "pausing"
                        setups.wait(name)
                        t1, c1 = perf(), cpu_time()
                    best = (min(best[0], t1 - t0), min(best[1], c1 - c0))
                    if name in paused:
                        paused[name].append(pausing)
                    counts = setups.after_run(name)
                    if counts and name not in recorded:
                        recorded[name] = counts
                    setups.cool_down(name, agent)
                row[name] = best
            if i >= warmup:
                rows.append(row)
            if i and i % 50 == 0:
                progress(i)
    finally:
        setups.close()
    return rows, recorded, paused


def run_agent_overhead(kind: str, iterations: int, warmup: int, repeats: int = 3, openinference_every: int = 4,
                       seed: int = 1, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Times `agent.run` for every setup, interleaved; returns the figures. OpenInference costs tens of times more
    than the rest, so it is timed on every `openinference_every`-th iteration only; its ratio needs far less
    precision than sop_telemetry's few percent."""
    skipped = openinference_available()
    model, agent = section_one_agent(kind)
    setups = Setups([type(model)], use_openinference=skipped is None)
    rows, recorded, paused = sample(setups, agent, iterations, warmup, repeats, openinference_every, seed,
                                    lambda i: log(f"  {kind}: {i}/{warmup + iterations} iterations"))
    out: Dict[str, Any] = {"wall": summarize(rows, 0), "cpu": summarize(rows, 1), "recorded": recorded,
                           "runs": len(rows), "repeats": repeats, "openinference_every": openinference_every}
    out["writer_paused_at_run_end"] = {name: sum(v) / len(v) for name, v in paused.items() if v}
    # At most one fsync a second (TelemetryConfig.fsync_interval): the other writes are synced later, in a batch.
    out["writes"] = {"fsynced_at_once": setups.writes[True], "fsync_deferred": setups.writes[False]}
    if setups.leftovers:
        out["leftovers_restored"] = setups.leftovers
    if skipped:
        out["openinference_skipped"] = skipped
    return out


def added(diffs: List[float], base: float) -> Dict[str, Any]:
    """What a setup adds, from its paired differences (seconds) with a baseline whose median is `base`: their
    median in ms, its bootstrap 95% interval, and the median as a percentage of `base`."""
    middle = median(diffs)
    low, high = bootstrap_ci(diffs)
    return {"added_ms": middle * 1e3, "added_ms_ci95": [low * 1e3, high * 1e3], "added_pct": middle / base * 100.0}


def summarize(rows: List[Row], which: int) -> Dict[str, Any]:
    """Per setup: median and trimmed mean of its run times (`which`: 0 wall, 1 CPU), and of its differences with
    `none` in the same iterations."""
    base_median = median([row["none"][which] for row in rows])
    setups: Dict[str, Any] = {}
    names = {name for row in rows for name in row}
    for name in sorted(names, key=list(_ORDER).index):
        values = [row[name][which] for row in rows if name in row]
        entry: Dict[str, Any] = {"median_ms": median(values) * 1e3, "trimmed_mean_ms": trimmed_mean(values) * 1e3,
                                 "samples": len(values)}
        if name != "none":
            # The median of the paired differences is the headline (the noise here is skewed: a neighbour only
            # ever adds time); the trimmed mean is kept beside it.
            diffs = [row[name][which] - row["none"][which] for row in rows if name in row]
            entry.update(added(diffs, base_median), added_ms_trimmed_mean=trimmed_mean(diffs) * 1e3,
                         ratio=median(values) / base_median)
        setups[name] = entry
    out: Dict[str, Any] = {"setups": setups}
    sop = setups["sop"]
    for name in ("openinference", "openinference_batch"):
        if name in setups:
            # Against the upper end of sop_telemetry's interval too: when sop's cost is near the noise, the point
            # ratio is unstable and the conservative one is what can be claimed.
            oi = setups[name]
            out[f"{name}_over_sop"] = oi["added_ms"] / sop["added_ms"] if sop["added_ms"] > 0 else None
            high = sop["added_ms_ci95"][1]
            out[f"{name}_over_sop_conservative"] = oi["added_ms_ci95"][0] / high if high > 0 else None
    return out
