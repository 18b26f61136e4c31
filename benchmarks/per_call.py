"""Section 2: what each wrapper costs per call, in microseconds, against a bare wrapt pass-through as the floor.

Usage::

    from benchmarks.per_call import run_per_call
    result = run_per_call(calls=5000, batches=20, run_calls=1000)
    result["model_generate"]["enabled_added_us"]

For each wrapped method (model `generate`, tool `__call__`, agent `run`) and for a step (smolagents' `_finalize_step`,
which sop_telemetry does not hook: a step's record is built from the agent's memory when its run ends) four variants
are timed on the same objects: ``bare`` (nothing installed), ``wrapt`` (a `wrapt.FunctionWrapper` that only calls the
original: the floor any wrapt-based instrumentation pays), ``disabled`` (sop_telemetry installed,
`disable_telemetry()`) and ``enabled`` (recording). Calls are made inside a running agent, as in real use, so the
enabled wrappers see a task, an agent and a step number: the timing loop is the body of an agent's `run` (a
`ToolCallingAgent` subclass whose `run` sop_telemetry patches like any other). `agent_run` itself is timed as
top-level runs of such an agent whose `run` returns at once: each one opens and closes a task. Figures are process
CPU time per call, the median over batches, variants interleaved batch by batch.

With telemetry enabled a call only queues what it saw; its record is built later, usually on the writer thread
(sop_telemetry.collector). Both are timed: ``enabled`` is the call itself, on the agent's thread, and
``built_later_us`` the building of its record, timed per batch (the queue is kept from building any record inside
the timing loop); ``total_us`` is their sum, what one recorded call costs the process wherever it is paid.

Inside a real run the same calls cost several times more: between two hooked calls smolagents' own work evicts
the hook's code and data from the CPU's caches. `run_cold_calls` times that: each call is preceded by a workload
that does the same (`_evict`) and timed alone (wall time, median of `samples`), for ``bare``, ``minimal`` (the
cheapest Python hook that times a call, section 1's "minimal timing hooks"), ``disabled`` and ``enabled``; its
figures are the median over `rounds` rounds of each variant's difference with ``bare``. Summed over a run's calls
they account for section 1's overhead, which the tight-loop figures do not.

Each batch of calls is its own agent run, so a task holds at most `calls` records (below the per-task cap: dropping
is a different, rarer path, covered by the memory section). The session is rolled over between batches and the
background writer is kept asleep (`read_only`) so that writing, measured in the flush section, does not land in
these loops.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List

from .fake import TrivialModel, add
from .stats import median, minimal_hook_factory, per_call_us, perf

VARIANTS = ("bare", "wrapt", "disabled", "enabled")


def _loop_agent_class() -> type:
    from smolagents import ToolCallingAgent

    class LoopAgent(ToolCallingAgent):
        """An agent whose `run` executes `self.body` instead of a model loop."""

        body: Callable[[], Any] = staticmethod(lambda: None)

        def run(self, task: str, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
            return self.body()

    return LoopAgent


def _passthrough(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrapped(*args, **kwargs)


class _Targets:
    """The classes and attributes timed here, and ways to put a bare wrapt wrapper or the minimal timing hook on
    exactly those (`unwrap()` takes either off)."""

    def __init__(self) -> None:
        from smolagents.tools import Tool

        self.loop_class = _loop_agent_class()
        self.hooked = [(TrivialModel, "generate"), (Tool, "__call__"), (self.loop_class, "run")]
        self._saved: List[Any] = []
        self.minimal_sink: List[tuple] = []

    def wrap_minimal(self) -> None:
        make = minimal_hook_factory(self.minimal_sink)
        for owner, attr in self.hooked:
            self._saved.append((owner, attr, vars(owner)[attr]))
            setattr(owner, attr, make(vars(owner)[attr]))

    def wrap_floor(self) -> None:
        import wrapt

        for owner, attr in self.hooked:
            self._saved.append((owner, attr, vars(owner)[attr]))
            wrapt.wrap_function_wrapper(owner, attr, _passthrough)

    def unwrap(self) -> None:
        while self._saved:
            owner, attr, original = self._saved.pop()
            setattr(owner, attr, original)


def run_per_call(calls: int, batches: int, run_calls: int, log: Callable[[str], None] = lambda s: None
                 ) -> Dict[str, Any]:
    from smolagents.memory import ActionStep
    from smolagents.monitoring import Timing

    from sop_telemetry import TelemetryManager
    from sop_telemetry.collector import PENDING_LIMIT
    from sop_telemetry.integrations import smolagents as integration
    from sop_telemetry.storage import new_session_id

    manager = TelemetryManager.get_instance()
    integration.uninstall()
    targets = _Targets()
    model = TrivialModel()
    outer = targets.loop_class(tools=[add], model=model, verbosity_level=0)
    inner = targets.loop_class(tools=[add], model=model, verbosity_level=0)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    step = ActionStep(step_number=1, timing=Timing(start_time=0.0), observations_images=None)

    def gen() -> None:
        model.generate(messages)

    def tool() -> None:
        add(a=1, b=2)

    def run() -> None:
        inner.run("top-level run")

    def finalize() -> None:
        # As smolagents does: the finished step goes into the agent's memory, from which its record is built when
        # the run ends (built_later_us, with the timing loop's run ended).
        outer._finalize_step(step)
        outer.memory.steps.append(step)

    bodies: Dict[str, Callable[[], None]] = {"model_generate": gen, "tool_call": tool, "agent_run": run,
                                             "finalize_step": finalize}
    results: Dict[str, Dict[str, List[float]]] = {name: {v: [] for v in VARIANTS} for name in bodies}
    built: Dict[str, List[float]] = {name: [] for name in bodies}
    with _measuring(manager, integration, targets):
        # Interleaved by batch: each variant gets one batch per round, so drift (the other core busy) is shared.
        for round_no in range(batches):
            for variant in VARIANTS:
                _switch(variant, integration, manager, targets)
                collector = manager.get_collector()
                collector.materialize()
                collector.pending_limit = 10 ** 9  # every record of a batch is built after it, and timed apart
                for name, body in bodies.items():
                    n = run_calls if name == "agent_run" else calls
                    if name == "agent_run":
                        # A top-level run: the timing loop itself runs outside any agent, each call opens a task.
                        figures = per_call_us(run, n, 1)
                    else:
                        outer.memory.steps.clear()
                        outer.body = lambda body=body, n=n: per_call_us(body, n, 1)
                        figures = outer.run("timing loop")
                    results[name][variant] += figures
                    if variant == "enabled":
                        built[name].append(per_call_us(collector.materialize, 1, 1)[0] / n)
                collector.pending_limit = PENDING_LIMIT
                if collector.has_records():
                    collector.roll_over(new_session_id())
            if round_no and round_no % 5 == 0:
                log(f"  per-call: round {round_no}/{batches}")
    out: Dict[str, Any] = {}
    for name, per_variant in results.items():
        med = {v: median(vals) for v, vals in per_variant.items()}
        out[name] = {
            **{f"{v}_us": med[v] for v in VARIANTS},
            "wrapt_floor_added_us": med["wrapt"] - med["bare"],
            "disabled_over_floor_us": med["disabled"] - med["wrapt"],
            "disabled_added_us": med["disabled"] - med["bare"],
            "enabled_added_us": med["enabled"] - med["bare"],
            "enabled_over_floor_us": med["enabled"] - med["wrapt"],
            "built_later_us": median(built[name]),
            "total_us": med["enabled"] - med["bare"] + median(built[name]),
            "calls_per_batch": run_calls if name == "agent_run" else calls,
            "batches": batches,
        }
    return out


COLD_VARIANTS = ("bare", "minimal", "disabled", "enabled")
_scratch: List[dict] = []


def _evict() -> int:
    """Walks about 2 MB of small objects and serializes a document: what smolagents does between two hooked calls
    (building the model's messages, checking a tool's arguments) on a smaller scale, enough to push the hook's code
    and data out of the CPU's private caches."""
    import json

    if not _scratch:
        _scratch.extend({"k": i, "v": str(i)} for i in range(60_000))
    total = 0
    for item in _scratch[::7]:
        total += item["k"]
    json.dumps({"a": [1, 2, 3] * 300, "b": "x" * 3_000})
    return total


def run_cold_calls(rounds: int, samples: int = 5, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Per call with the caches cold (see the module's docstring): µs added to one call by each variant."""
    import random

    from smolagents.memory import ActionStep
    from smolagents.monitoring import Timing

    from sop_telemetry import TelemetryManager
    from sop_telemetry.integrations import smolagents as integration
    from sop_telemetry.storage import new_session_id

    manager = TelemetryManager.get_instance()
    integration.uninstall()
    targets = _Targets()
    model = TrivialModel()
    outer = targets.loop_class(tools=[add], model=model, verbosity_level=0)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    step = ActionStep(step_number=1, timing=Timing(start_time=0.0), observations_images=None)
    bodies: Dict[str, Callable[[], Any]] = {"model_generate": lambda: model.generate(messages),
                                             "tool_call": lambda: add(a=1, b=2, sanitize_inputs_outputs=True),
                                             "finalize_step": lambda: outer._finalize_step(step)}
    times: Dict[str, Dict[str, List[float]]] = {name: {v: [] for v in COLD_VARIANTS} for name in bodies}

    def measure(variant: str) -> None:
        for name, body in bodies.items():
            body()  # specialized and warm once, then cold every time
            one = []
            for _ in range(samples):
                _evict()
                t0 = perf()
                body()
                one.append(perf() - t0)
            times[name][variant].append(median(one))

    rng = random.Random(3)
    with _measuring(manager, integration, targets):
        for round_no in range(rounds):
            order = list(COLD_VARIANTS)
            rng.shuffle(order)
            for variant in order:
                _switch(variant, integration, manager, targets)
                outer.body = lambda variant=variant: measure(variant)
                outer.run("cold calls")  # inside a run, as in real use: the enabled wrappers see a task and a step
                collector = manager.get_collector()
                collector.pending.clear()
                targets.minimal_sink.clear()
                if collector.has_records():
                    collector.roll_over(new_session_id())
            if round_no and round_no % 20 == 0:
                log(f"  per-call, cold: round {round_no}/{rounds}")
    out: Dict[str, Any] = {}
    for name, per_variant in times.items():
        bare = per_variant["bare"]
        out[name] = {"bare_us": median(bare) * 1e6, "rounds": rounds, "samples": samples}
        for variant in COLD_VARIANTS[1:]:
            out[name][f"{variant}_added_us"] = median([v - b for v, b in zip(per_variant[variant], bare, strict=True)]) * 1e6
    return out


@contextmanager
def _measuring(manager: Any, integration: Any, targets: _Targets) -> Iterator[None]:
    """The writer kept asleep (`read_only`) while measuring; afterwards sop_telemetry installed and enabled again."""
    was_read_only = manager.read_only
    manager.read_only = True
    try:
        yield
    finally:
        targets.unwrap()
        integration.install()
        manager.enable_telemetry()
        manager.read_only = was_read_only


def _switch(variant: str, integration: Any, manager: Any, targets: _Targets) -> None:
    targets.unwrap()
    integration.uninstall()
    manager.enable_telemetry()
    if variant == "wrapt":
        targets.wrap_floor()
    elif variant == "minimal":
        targets.wrap_minimal()
    elif variant in ("disabled", "enabled"):
        integration.install()
        if variant == "disabled":
            manager.disable_telemetry()
