"""Section 1d: where sop_telemetry's time in a ToolCallingAgent run goes, part by part.

Usage::

    from benchmarks.ablation import run_ablation
    run_ablation(iterations=200, warmup=3)   # {"setups": {...}, "parts": {"model_hook": {...}, ...}, "runs": 200, ...}

Section 1 says how much sop_telemetry adds to a run; this says which part adds it. The never-written setup (every
hook, no file write: no writer in the picture) is timed beside copies of itself with one part taken out: the model
hook (generate restored on every class), the tool hook (Tool.__call__ restored), and both (the run's own hook left;
its reading of the steps from the agent's memory is not taken apart: that needs a private name, and section 2's
`finalize_step` times it per step). A part's cost is what taking it out saves,
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
# variant: the hooked attributes it puts the originals back on
_VARIANTS = {
    "without_model_hook": ("generate", "generate_stream"),
    "without_tool_hook": ("__call__",),
    "run_hook_only": ("generate", "generate_stream", "__call__"),
}
NAMES = ("none", "minimal_hooks", _BASE) + tuple(_VARIANTS)
# part: (the variant without it, the variant with it): its cost is their paired difference
PARTS = {
    "model_hook": ("without_model_hook", _BASE),
    "tool_hook": ("without_tool_hook", _BASE),
    "run_hook": ("none", "run_hook_only"),
}


class _Ablation(Setups):
    """Section 1's setups, and the never-written one with parts taken out (`_VARIANTS`)."""

    def __init__(self, model_classes: List[type]) -> None:
        super().__init__(model_classes, use_openinference=False)
        self.names = list(NAMES)

    def activate(self, name: str) -> None:
        super().activate(_BASE if name in _VARIANTS else name)
        self.active = name

    def _deactivate(self) -> None:
        if self.active in _VARIANTS:
            self.active = _BASE  # (what is left of it is undone like the whole)
        super()._deactivate()

    def warm_up(self, name: str, agent: Any) -> None:
        if name in _VARIANTS:
            # The whole setup's warm-up run first: its start sees the model's class, so later runs' starts do not
            # take it for one not patched yet and patch it again. Then the variant's part goes.
            super().warm_up(_BASE, agent)
            self.integration.integration.patches.undo(_VARIANTS[name])
            self._quiet_run(_BASE, agent)  # (specialized again without the part)
        else:
            super().warm_up(name, agent)

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
