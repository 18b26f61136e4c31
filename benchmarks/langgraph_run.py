"""Section 9: what telemetry adds to a whole LangGraph agent run, beside no telemetry and OpenInference.

Usage::

    from benchmarks.langgraph_run import run_langgraph_overhead
    result = run_langgraph_overhead(iterations=100, warmup=5, repeats=3)
    result["cpu"]["setups"]["sop"]["added_pct"]

The run: `langchain.agents.create_agent` with three tools and a scripted chat model (no network) that asks for 11
tool calls over 10 replies (one with two calls, run in parallel) and then answers: 11 model calls, each reply
reporting its usage. The setups, switched in turn in one process (the order shuffled per iteration, untimed runs
after each switch and between timed runs, each sample the fastest of `repeats` timed runs, GC off), as in section 1:

- ``none``: sop_telemetry's LangChain integration uninstalled, OpenInference uninstrumented;
- ``sop``: the integration installed, telemetry enabled, the manager read-only during the timed run (the run's end
  does not wake the writer, as in section 1's runs back to back); the session is written after it, outside the
  timing, and a fresh one begun: what the hooks and the queueing cost the agent's threads;
- ``sop_with_write``: the same, timed until the session file is written (`flush_data()`): records built, JSON
  written and renamed;
- ``openinference``: OpenInference's `LangChainInstrumentor().instrument(tracer_provider=...)` with an SDK
  TracerProvider and an InMemorySpanExporter behind a SimpleSpanProcessor; the exporter is cleared after each run.

The headline is the median of the paired differences with ``none`` in CPU time (every thread), as a percentage of
``none``'s median; wall time is kept beside it.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from .agent_run import added
from .stats import cpu_time, freeze_heap, median, perf, quiet_gc, trimmed_mean

_ORDER = ("none", "sop", "sop_with_write", "openinference")
Row = Dict[str, Tuple[float, float]]


def langgraph_available() -> Optional[str]:
    """None if LangGraph and langchain can be imported, else why not."""
    try:
        import langchain.agents  # noqa: F401
        import langgraph  # noqa: F401
    except ImportError as exc:
        return f"LangGraph section skipped: {exc} (pip install -e '.[bench]')"
    return None


def openinference_available() -> Optional[str]:
    try:
        import openinference.instrumentation.langchain  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return f"OpenInference column skipped: {exc} (pip install -e '.[bench]')"
    return None


def _script() -> List[Any]:
    """Ten replies asking for tools (the fourth asks for two at once), then the answer; each with its usage."""
    from langchain_core.messages import AIMessage

    calls = [[("add", {"a": 1, "b": 2})], [("multiply", {"a": 3, "b": 4})], [("lookup", {"key": "x"})],
             [("add", {"a": 5, "b": 6}), ("multiply", {"a": 7, "b": 8})], [("lookup", {"key": "y"})],
             [("add", {"a": 9, "b": 1})], [("multiply", {"a": 2, "b": 2})], [("lookup", {"key": "z"})],
             [("add", {"a": 3, "b": 3})], [("multiply", {"a": 4, "b": 4})]]
    replies: List[Any] = []
    for index, round_calls in enumerate(calls):
        replies.append(AIMessage(
            content="", tool_calls=[{"name": name, "args": args, "id": f"c{index}_{n}", "type": "tool_call"}
                                    for n, (name, args) in enumerate(round_calls)],
            usage_metadata={"input_tokens": 100 + index, "output_tokens": 10, "total_tokens": 110 + index}))
    replies.append(AIMessage(content="All done.",
                             usage_metadata={"input_tokens": 200, "output_tokens": 5, "total_tokens": 205}))
    return replies


def build_agent() -> Any:
    """The benchmark's agent: its model replays the script from the start at every run."""
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool

    script = _script()

    class ScriptedChatModel(GenericFakeChatModel):
        model_name: str = "bench-model"
        messages: Any = iter(())
        position: int = 0

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
            reply = script[self.position % len(script)]
            self.position += 1
            return ChatResult(generations=[ChatGeneration(message=reply)])

    @tool
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiplies two numbers."""
        return a * b

    @tool
    def lookup(key: str) -> str:
        """Looks a key up."""
        return {"x": "1", "y": "2"}.get(key, "?")

    model = ScriptedChatModel()
    agent = create_agent(model, tools=[add, multiply, lookup], name="bench_agent")

    def run() -> Any:
        model.position = 0
        return agent.invoke({"messages": [("user", "Do the sums.")]})

    return run


class Setups:
    """Switches the process between the setups."""

    def __init__(self, use_openinference: bool) -> None:
        from sop_telemetry import TelemetryManager
        from sop_telemetry.integrations import langchain as integration

        self.integration = integration
        self.manager = TelemetryManager.get_instance()
        self.names = ["none", "sop", "sop_with_write"]
        self.exporter: Any = None
        if use_openinference:
            from openinference.instrumentation.langchain import LangChainInstrumentor
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            self.exporter = InMemorySpanExporter()
            self.provider = TracerProvider()
            self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self.instrumentor = LangChainInstrumentor()
            self.names.append("openinference")
        self.active = ""
        self.activate("none")

    def activate(self, name: str) -> None:
        if name == self.active:
            return
        if self.active == "openinference":
            self.instrumentor.uninstrument()
        if name.startswith("sop"):
            self.integration.install()
        else:
            self.integration.uninstall()
        if self.active in _HANDLERS or name in _HANDLERS:
            _register_handler(name if name in _HANDLERS else None)
        if name == "openinference":
            self.instrumentor.instrument(tracer_provider=self.provider)
        self.active = name

    def after(self, name: str, timed: bool) -> Dict[str, int]:
        """Outside the timing (unless `timed`: sop_with_write's write): the run's session written, counted, and a
        fresh one begun; OpenInference's spans counted and cleared."""
        counts: Dict[str, int] = {}
        if name.startswith("sop"):
            collector = self.manager.get_collector()
            collector.materialize()
            snapshot = collector.snapshot()
            counts = {kind: sum(len(t[kind]) for t in snapshot["tasks"]) for kind in ("llm_calls", "tools", "steps")}
            counts["tasks"] = len(snapshot["tasks"])
            if not timed:
                self.manager.flush_data()
            from sop_telemetry.storage import new_session_id

            if collector.roll_over(new_session_id()) is None:
                raise RuntimeError("a task is still open after the run")
        elif name == "openinference":
            counts = {"spans": len(self.exporter.get_finished_spans())}
            self.exporter.clear()
        return counts

    def close(self) -> None:
        self.activate("none")
        self.integration.install()


_handler_var: Any = None


def _register_handler(name: Optional[str]) -> None:
    """Puts the diagnostic handler `name` in every callback manager, as a callback handler registered with
    langchain-core's configure hook is (None: takes it out)."""
    global _handler_var
    import contextvars

    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.tracers import context

    if _handler_var is not None:
        context._configure_hooks[:] = [hook for hook in context._configure_hooks if hook[0] is not _handler_var]
        _handler_var = None
    if name is None:
        return
    ignoring = name == "handler_ignoring"

    class Handler(BaseCallbackHandler):
        run_inline = True
        ignore_llm = ignore_chain = ignore_agent = ignore_retriever = ignore_chat_model = ignore_retry = ignoring

        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            pass  # (the base class's raises NotImplementedError, and LangChain falls back to on_llm_start)

    # The default is the handler (not a value set here): every thread and task sees it, as LangSmith's hook does.
    _handler_var = contextvars.ContextVar("sop_bench_handler", default=Handler())  # noqa: B039
    context.register_configure_hook(_handler_var, True)


def _untimed(setups: Setups, name: str, run: Callable[[], Any]) -> None:
    """A run between sop_telemetry's session write and the next timed run, in every setup: the write leaves the
    caches cold for whatever runs next (section 1 does the same). Its task is written with the next one's, except
    in sop_with_write, whose timed write must be of one task."""
    setups.manager.read_only = name == "sop"
    run()
    setups.manager.read_only = False
    if name == "sop_with_write":
        setups.after(name, False)


def sample(setups: Setups, run: Callable[[], Any], iterations: int, warmup: int, repeats: int, seed: int = 1,
           progress: Callable[[int], None] = lambda i: None) -> Tuple[List[Row], Dict[str, Dict[str, int]]]:
    """Per iteration after `warmup`, a row of (wall, CPU) seconds per setup, each the fastest of `repeats` timed
    runs; and what each setup's first run recorded."""
    manager = setups.manager
    freeze_heap()
    rows: List[Row] = []
    recorded: Dict[str, Dict[str, int]] = {}
    rng = random.Random(seed)
    try:
        for i in range(warmup + iterations):
            order = list(setups.names)
            rng.shuffle(order)
            row: Row = {}
            for name in order:
                setups.activate(name)
                run()
                recorded.setdefault(name, setups.after(name, False))
                _untimed(setups, name, run)
                best = (float("inf"), float("inf"))
                for _ in range(repeats):
                    manager.read_only = name == "sop"
                    with quiet_gc():
                        c0, t0 = cpu_time(), perf()
                        run()
                        if name == "sop_with_write":
                            manager.flush_data()
                        t1, c1 = perf(), cpu_time()
                    manager.read_only = False
                    best = (min(best[0], t1 - t0), min(best[1], c1 - c0))
                    setups.after(name, name == "sop_with_write")
                    _untimed(setups, name, run)
                row[name] = best
            if i >= warmup:
                rows.append(row)
            progress(i)
    finally:
        setups.close()
    return rows, recorded


def summarize(rows: List[Row], which: int) -> Dict[str, Any]:
    base = median([row["none"][which] for row in rows])
    setups: Dict[str, Any] = {}
    for name in [n for n in _ORDER if n in rows[0]]:
        values = [row[name][which] for row in rows]
        entry: Dict[str, Any] = {"median_ms": median(values) * 1e3, "trimmed_mean_ms": trimmed_mean(values) * 1e3,
                                 "samples": len(values)}
        if name != "none":
            entry.update(added([row[name][which] - row["none"][which] for row in rows], base))
        setups[name] = entry
    out: Dict[str, Any] = {"setups": setups}
    sop, oi = setups.get("sop"), setups.get("openinference")
    if sop and oi and sop["added_ms"] > 0:
        out["openinference_over_sop"] = oi["added_ms"] / sop["added_ms"]
        low, high = sop["added_ms_ci95"]
        if high > 0:
            out["openinference_over_sop_conservative"] = oi["added_ms"] / high
    return out


def run_langgraph_overhead(iterations: int, warmup: int, repeats: int = 3,
                           log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    skipped = langgraph_available()
    if skipped:
        log(skipped)
        return {"skipped": skipped}
    oi_skipped = openinference_available()
    if oi_skipped:
        log(oi_skipped)
    run = build_agent()
    setups = Setups(use_openinference=oi_skipped is None)
    step = max(1, (warmup + iterations) // 10)
    rows, recorded = sample(setups, run, iterations, warmup, repeats,
                            progress=lambda i: log(f"   {i + 1}/{warmup + iterations}") if (i + 1) % step == 0
                            else None)
    return {"iterations": iterations, "warmup": warmup, "repeats": repeats, "recorded": recorded,
            "cpu": summarize(rows, 1), "wall": summarize(rows, 0),
            "openinference": "skipped" if oi_skipped else "SimpleSpanProcessor + InMemorySpanExporter"}


_NAMES = {"none": "no telemetry", "sop": "sop_telemetry enabled", "sop_with_write": "sop_telemetry + its file write",
          "openinference": "OpenInference (SimpleSpanProcessor)",
          "handler_ignoring": "diagnostic: a callback handler that ignores every event",
          "handler_noop": "diagnostic: a callback handler whose methods do nothing"}
# The diagnostics: what langchain-core charges for a callback handler being there at all (docs/langchain.md).
_HANDLERS = ("handler_ignoring", "handler_noop")


def targets(r: Dict[str, Any]) -> List[Tuple[str, str, str, Optional[bool]]]:
    """The section's targets, in report.targets' shape: <= 2% of the run, >= 10x less than OpenInference."""
    g = r.get("langgraph")
    if not g or g.get("skipped"):
        return []
    cpu, wall = g["cpu"], g["wall"]
    sop = cpu["setups"]["sop"]
    out = [("LangGraph agent run overhead, sop_telemetry enabled (CPU time)",
            f"{sop['added_pct']:.2f}% (+{sop['added_ms']:.3f} ms; wall {wall['setups']['sop']['added_pct']:.2f}%)",
            "<= 2%", sop["added_pct"] <= 2.0)]
    ratio = cpu.get("openinference_over_sop")
    if "openinference" not in cpu["setups"]:
        out.append(("LangGraph: OpenInference added / sop_telemetry added", "skipped", ">= 10x", None))
    elif ratio is None:
        out.append(("LangGraph: OpenInference added / sop_telemetry added", "sop adds nothing measurable", ">= 10x",
                    True))
    else:
        cons = cpu.get("openinference_over_sop_conservative")
        out.append(("LangGraph: OpenInference added / sop_telemetry added (CPU)",
                    f"{ratio:.1f}x (conservative {cons if cons is None else round(cons, 1)}x; wall "
                    f"{wall.get('openinference_over_sop') or float('nan'):.1f}x)", ">= 10x", ratio >= 10.0))
    ins = r.get("langgraph_instructions")
    if ins and ins.get("counted"):
        base, sop = ins["setups"]["none"], ins["setups"]["sop"]
        out.append(("LangGraph agent run overhead, sop_telemetry enabled (instructions, every thread)",
                    f"{sop['added_pct']:.2f}% (+{sop['added']:,.0f} of {base['per_run']:,.0f})", "<= 2%",
                    sop["added_pct"] <= 2.0))
        ratio = ins.get("openinference_over_sop")
        if ratio is not None:
            out.append(("LangGraph: OpenInference added / sop_telemetry added (instructions)", f"{ratio:.1f}x",
                        ">= 10x", ratio >= 10.0))
    return out


def render(r: Dict[str, Any]) -> str:
    from .report import table

    g = r.get("langgraph")
    if not g:
        return ""
    if g.get("skipped"):
        return f"\n9. LangGraph agent run\n   skipped: {g['skipped']}"
    rows = []
    for name, c in g["cpu"]["setups"].items():
        w = g["wall"]["setups"][name]
        if name == "none":
            rows.append([_NAMES[name], f"{w['median_ms']:.2f}", f"{c['median_ms']:.2f}", "-", "-", "-", "-"])
        else:
            low, high = c["added_ms_ci95"]
            rows.append([_NAMES[name], f"{w['median_ms']:.2f}", f"{c['median_ms']:.2f}", f"{c['added_ms']:.3f}",
                         f"{low:.3f} to {high:.3f}", f"{c['added_pct']:.2f}%", f"{w['added_pct']:.2f}%"])
    text = table(f"\n9. LangGraph agent run: create_agent, 11 model calls, 11 tool calls; {g['iterations']} "
                 f"interleaved samples per setup (each the fastest of {g['repeats']} runs)",
                 ["setup", "wall ms", "CPU ms", "+CPU ms (median)", "95% interval", "+CPU %", "+wall %"], rows)
    ratio = g["cpu"].get("openinference_over_sop")
    if ratio is not None:
        text += (f"\n   OpenInference adds {ratio:.1f}x the CPU time sop_telemetry adds (conservative: "
                 f"{g['cpu'].get('openinference_over_sop_conservative') or float('nan'):.1f}x)")
    text += f"\n   recorded per run: {g['recorded']}"
    ins = r.get("langgraph_instructions")
    if ins and ins.get("counted"):
        for name, c in ins["setups"].items():
            added = "" if name == "none" else f" (+{c['added']:,.0f}, {c['added_pct']:.2f}%)"
            text += f"\n   instructions per run, {_NAMES[name]}: {c['per_run']:,.0f}{added}"
    return text


# -- instructions (callgrind) -------------------------------------------------------------------------------------
def run_langgraph_instructions(runs: int = 5, warmup: int = 5, quick: bool = False,
                               log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    """The instructions a LangGraph agent run executes, per setup, each in its own process under callgrind (as
    section 1c): every thread's, since LangGraph runs the tool calls on its pool, with the manager read-only during
    the run so that the writer's work (built and written after it) is not counted. Load-independent, unlike the
    timing; a lower bound of the timed overhead (a cache miss costs no instruction)."""
    from .instructions import count_setups

    skipped = langgraph_available()
    if skipped:
        return {"skipped": skipped}
    setups = ["none", "sop", *_HANDLERS] + ([] if openinference_available() else ["openinference"])
    log("9b. LangGraph agent run: instructions per run (callgrind)")
    return count_setups("benchmarks.langgraph_run", setups, runs, warmup, quick, log)


def _child(setup: str, runs: int, warmup: int, library: str) -> None:
    import sop_telemetry  # noqa: F401 - before LangChain, as a user would

    from .instructions import child_manager, counted_runs

    with child_manager() as manager:
        run = build_agent()
        setups = Setups(use_openinference=setup == "openinference")
        setups.activate(setup)

        def before() -> None:
            manager.read_only = True  # the writer is not woken by the run's end: its work is not the run's

        def after() -> None:
            manager.read_only = False
            setups.after(setup, False)

        try:
            counted_runs(run, runs, warmup, library, before, after)
        finally:
            setups.close()


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit("usage: python -m benchmarks.langgraph_run --child SETUP RUNS WARMUP LIBRARY")
