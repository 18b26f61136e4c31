"""Small statistics and timing helpers shared by the benchmark sections.

Usage::

    with quiet_gc():
        t = time_it(fn)                                  # seconds, GC off during the call
    trimmed_mean([...], 0.1)                            # mean without the top and bottom 10%
"""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Sequence

perf = time.perf_counter
# CPU time of the whole process (all threads: a writer or span-export thread's work counts): unlike wall time, it
# does not grow when another program takes the core, which on a shared 2-core machine is most of the noise.
cpu_time = time.process_time


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def trimmed_mean(values: Sequence[float], cut: float = 0.1) -> float:
    """The mean of `values` without the lowest and highest `cut` fraction: robust to the odd slow run (a page fault,
    the other core busy) while still using most samples, unlike the median."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    kept = ordered[k:len(ordered) - k] or ordered
    return sum(kept) / len(kept)


def bootstrap_ci(values: Sequence[float], statistic: Callable[[Sequence[float]], float] = median, rounds: int = 400,
                 seed: int = 7) -> tuple:
    """A 95% interval for `statistic` (the median by default), by resampling: how sure an overhead figure is."""
    import random

    if len(values) < 5:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(rounds))
    return stats[int(rounds * 0.025)], stats[int(rounds * 0.975) - 1]


def freeze_heap() -> None:
    """Moves everything alive now out of the collector's reach (`gc.freeze`): the full collections below then
    only walk what the benchmark itself creates, and cost ~1 ms instead of ~50 ms with smolagents loaded."""
    gc.collect()
    gc.freeze()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collects the young generations, then keeps the cyclic GC off: a collection landing in one setup's run and
    not another's is the largest source of noise at this scale (timeit does the same)."""
    was_enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def per_call_us(fn: Callable[[], None], calls: int, batches: int) -> List[float]:
    """CPU microseconds per call of `fn`, one figure per batch of `calls` calls, GC off."""
    out = []
    for _ in range(batches):
        with quiet_gc():
            t0 = cpu_time()
            for _ in range(calls):
                fn()
            out.append((cpu_time() - t0) / calls * 1e6)
    return out


def minimal_hook_factory(sink: List[tuple]) -> Callable[[Any], Any]:
    """`make(original)`: the cheapest hook Python allows that times a call (read the clock, call the original, read
    the clock, append both to `sink`), with the same shape as sop_telemetry's per-step wrappers. What no telemetry
    written in Python can go below at the same call sites."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = perf()
            result = original(self, *args, **kwargs)
            sink.append((t0, perf() - t0))
            return result

        return hook

    return make
