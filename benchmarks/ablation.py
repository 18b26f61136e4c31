"""Section 1d: where sop_telemetry's time in a ToolCallingAgent run goes, part by part.

Usage::

    from benchmarks.ablation import run_ablation
    run_ablation(iterations=200, warmup=3)   # {"setups": {...}, "parts": {"model_hook": {...}, ...}, "runs": 200, ...}

Section 1 says how much sop_telemetry adds to a run; this says which part adds it. The never-written setup (every
hook, no file write: no writer in the picture) is timed beside copies of itself with one part taken out: the model
hook (generate restored on every class), the tool hook (Tool.__call__ restored), both (the run's own hook left), and
the reading of the run's steps from the agent's memory when it ends. A part's cost is what taking it out saves,
paired with the whole setup in the same iteration. As in section 1: one process, the setups switched in a shuffled
order every iteration, a warm-up run after each switch, each sample the fastest of `repeats` runs in CPU time; the
uninstrumented run and the minimal hooks are timed alongside.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from .agent_run import Setups, added, sample
from .fake import section_one_agent
from .stats import median

_BASE = "sop_unwritten"
# variant: (the hooked attributes it puts the originals back on, whether the run's steps are read at its end)
_VARIANTS = {
    "without_model_hook": (("generate", "generate_stream"), True),
    "without_tool_hook": (("__call__",), True),
    "run_hook_only": (("generate", "generate_stream", "__call__"), True),
    "without_steps": ((), False),
}
NAMES = ("none", "minimal_hooks", _BASE) + tuple(_VARIANTS)
# part: (the variant without it, the variant with it): its cost is their paired difference
PARTS = {
    "model_hook": ("without_model_hook", _BASE),
    "tool_hook": ("without_tool_hook", _BASE),
    "steps_read": ("without_steps", _BASE),
    "run_hook": ("none", "run_hook_only"),
}


def _no_steps(frame: Any, collector: Any) -> list:
    return []


class _Ablation(Setups):
    """Section 1's setups, and the never-written one with parts taken out (`_VARIANTS`)."""

    def __init__(self, model_classes: List[type]) -> None:
        super().__init__(model_classes, use_openinference=False)
        self.names = list(NAMES)
        self._step_fields = self.integration._step_fields

    def activate(self, name: str) -> None:
        if name not in _VARIANTS:
            super().activate(name)
            return
        super().activate(_BASE)
        restored, steps = _VARIANTS[name]
        integration = self.integration
        integration.integration.patches.undo(restored)
        # (Otherwise a run's start takes the model's class for one not patched yet and patches it again.)
        integration._seen_model_classes.update(self.model_classes)
        if not steps:
            integration._step_fields = _no_steps
        self.active = name

    def _deactivate(self) -> None:
        self.integration._step_fields = self._step_fields
        if self.active in _VARIANTS:
            self.active = _BASE  # (what is left of it is undone like the whole)
        super()._deactivate()

    def warm_up(self, name: str, agent: Any) -> None:
        super().warm_up(_BASE if name in _VARIANTS else name, agent)

    def after_run(self, name: str) -> Dict[str, int]:
        return super().after_run(_BASE if name in _VARIANTS else name)


def run_ablation(iterations: int, warmup: int, repeats: int = 3, seed: int = 1,
                 log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    model, agent = section_one_agent("tool_calling")
    rows, recorded, _ = sample(_Ablation([type(model)]), agent, iterations, warmup, repeats, seed=seed,
                               progress=lambda i: log(f"  ablation: {i}/{warmup + iterations} iterations"))
    cpu = [{name: times[1] for name, times in row.items()} for row in rows]
    base = median([row["none"] for row in cpu])

    def paired(minus: str, plus: str) -> Dict[str, Any]:
        return added([row[plus] - row[minus] for row in cpu], base)

    # (The events a run queued, per setup: what tells that a part was really taken out.)
    queued = {name: counts["queued_events"] for name, counts in recorded.items() if "queued_events" in counts}
    return {"runs": len(rows), "repeats": repeats, "none_ms": base * 1e3, "queued_events": queued,
            "setups": {name: paired("none", name) for name in NAMES if name != "none"},
            "parts": {part: paired(*pair) for part, pair in PARTS.items()}}
