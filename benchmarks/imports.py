"""Section 5: what `import sop_telemetry` costs, and proof that it imports neither smolagents, wrapt nor pydantic.

Usage::

    from benchmarks.imports import run_imports
    result = run_imports(runs=15)

Each figure is the median over `runs` fresh interpreters (this venv's python): `-X importtime`'s cumulative time for
the `sop_telemetry` package, and the wall time of `python -c "import sop_telemetry"` against `python -c pass`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

from .stats import median, perf

HEAVY = ("smolagents", "wrapt", "pydantic", "pydantic_core", "rich", "opentelemetry", "platformdirs", "asyncio",
         "importlib.metadata")


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env["PYTHONDONTWRITEBYTECODE"] = env.get("PYTHONDONTWRITEBYTECODE", "")
    return env


def _importtime_us(stderr: str, package: str) -> int:
    """The cumulative microseconds `-X importtime` reports for `package` (its top-level line)."""
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = [p.strip() for p in line[len("import time:"):].split("|")]
        if len(parts) == 3 and parts[2] == package:
            return int(parts[1])
    raise RuntimeError(f"{package} not in -X importtime output")


def _wall(code: str) -> float:
    t0 = perf()
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), capture_output=True)
    return perf() - t0


def run_imports(runs: int) -> Dict[str, Any]:
    env = _env()
    cumulative: List[int] = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sop_telemetry"], env=env,
                              capture_output=True, text=True, check=True)
        cumulative.append(_importtime_us(proc.stderr, "sop_telemetry"))
    bare, imported = [], []
    for _ in range(runs):
        bare.append(_wall("pass"))
        imported.append(_wall("import sop_telemetry"))
    probe = ("import json, sys, sop_telemetry; "
             f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    return {
        "importtime_ms": median(cumulative) / 1e3,
        "wall_pass_ms": median(bare) * 1e3,
        "wall_import_ms": median(imported) * 1e3,
        "wall_added_ms": (median(imported) - median(bare)) * 1e3,
        "heavy_modules_loaded": loaded,
        "imports_smolagents": "smolagents" in loaded,
        "runs": runs,
    }
