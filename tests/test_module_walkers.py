"""Tools that walk every loaded module's attributes (freezegun, time-machine, `inspect.getmembers`, `help()` /
pydoc) must not notice sop_telemetry, and a session recorded while time is frozen is written with the frozen times.

Each test runs in a fresh interpreter: what matters is which of our modules are loaded when the tool walks them,
and this process has long loaded them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent

# An application that uses pydantic has its schema machinery loaded before any test freezes time; that is the case
# in which importing our models while `datetime.datetime` is freezegun's FakeDatetime used to fail.
_PRELUDE = """
import datetime, json, sys, time
from pydantic import BaseModel
import sop_telemetry
REAL_DATETIME, BEFORE = datetime.datetime, time.time()
"""

_AFTER = """
assert datetime.datetime is REAL_DATETIME, datetime.datetime
assert datetime.datetime.now().timestamp() >= BEFORE and time.time() >= BEFORE, "time is still frozen"
"""


def _python(code: str, storage_dir: Path) -> str:
    env = dict(os.environ)
    env.update(SOP_TELEMETRY_DIR=str(storage_dir), PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env.pop("SOP_TELEMETRY_DISABLED", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _session_files(storage_dir: Path) -> List[Path]:
    return sorted(storage_dir.rglob("*.json"))


def test_walking_the_loaded_modules_imports_nothing(tmp_path):
    code = _PRELUDE + """
import inspect, pydoc
def ours():
    return sorted(name for name in sys.modules if name.startswith("sop_telemetry"))
before = ours()
for name in before:
    module = sys.modules[name]
    inspect.getmembers(module)
    for attribute in dir(module):
        getattr(module, attribute)
    pydoc.render_doc(module)  # what help(module) shows
print(json.dumps({"before": before, "imported": [name for name in ours() if name not in before]}))
"""
    out = json.loads(_python(code, tmp_path))
    assert out == {"before": ["sop_telemetry", "sop_telemetry.registry"], "imported": []}


def test_public_names_stay_lazy_and_load_on_first_use(tmp_path):
    code = _PRELUDE + """
assert "sop_telemetry.models" not in sys.modules
assert "TelemetrySession" not in dir(sop_telemetry)
from sop_telemetry import TelemetrySession
assert sop_telemetry.TelemetrySession is TelemetrySession and "TelemetrySession" in dir(sop_telemetry)
namespace = {}
exec("from sop_telemetry import *", namespace)
print(sorted(set(namespace) - {"__builtins__"}) == sorted(sop_telemetry.__all__))
"""
    assert _python(code, tmp_path) == "True"


@pytest.mark.parametrize("with_smolagents", [False, True], ids=["plain", "smolagents-patched"])
def test_freezegun_starts_and_stops_with_sop_telemetry_imported(tmp_path, with_smolagents):
    code = _PRELUDE
    if with_smolagents:
        code += """
import smolagents
from smolagents.models import Model
from sop_telemetry.integrations.patching import is_ours
assert is_ours(vars(Model)["generate"])
"""
    code += """
from freezegun import freeze_time
with freeze_time("2020-02-03 04:05:06"):
    assert datetime.datetime.now() == datetime.datetime(2020, 2, 3, 4, 5, 6)
    assert sop_telemetry.TelemetrySession.__name__ == "TelemetrySession"
    assert sop_telemetry.summarize_sessions([]).sessions == 0
""" + _AFTER + "print('ok')"
    assert _python(code, tmp_path) == "ok"


def test_every_module_imports_and_can_be_walked_while_time_is_frozen(tmp_path):
    code = _PRELUDE + """
import importlib, inspect, pkgutil
from freezegun import freeze_time
names = [info.name for info in pkgutil.walk_packages(sop_telemetry.__path__, "sop_telemetry.")
         if info.name != "sop_telemetry.__main__"]  # (runs the command line)
with freeze_time("2020-02-03 04:05:06"):
    for name in names:
        inspect.getmembers(importlib.import_module(name))
""" + _AFTER + """
for name in names:
    inspect.getmembers(sys.modules[name])
print(json.dumps(names))
"""
    names = json.loads(_python(code, tmp_path))
    assert {"sop_telemetry.models", "sop_telemetry.analysis", "sop_telemetry.integrations.smolagents"} <= set(names)


_AGENT_RUN = """
from fakes import ScriptedModel, add, call
from smolagents import ToolCallingAgent
with {clock}:
    model = ScriptedModel([call("add", a=1, b=2), call("final_answer", answer="3")], usage=(100, 10))
    assert ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("1+2?") == "3"
"""

_CLOCKS = {
    "freezegun": ("from freezegun import freeze_time", 'freeze_time("2024-05-06 07:08:09")'),
    "time-machine": ("import time_machine",
                     "time_machine.travel(datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),"
                     " tick=False)"),
}


@pytest.mark.parametrize("tool", sorted(_CLOCKS))
def test_an_agent_run_while_time_is_frozen_is_recorded_with_the_frozen_times(tmp_path, tool):
    setup, clock = _CLOCKS[tool]
    _python(_PRELUDE + setup + _AGENT_RUN.format(clock=clock) + _AFTER, tmp_path)
    (path,) = _session_files(tmp_path)  # written when the process exited
    session = json.loads(path.read_text())
    (task,) = session["tasks"]
    assert (task["start_time"], task["end_time"], task["status"]) == ("2024-05-06T07:08:09Z", "2024-05-06T07:08:09Z",
                                                                      "completed")
    frozen = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    calls = [*task["llm_calls"], *task["tools"]]
    # A call's start is its run's start plus the real time elapsed since (perf_counter is not frozen for us).
    assert all(0 <= (datetime.fromisoformat(c["start_time"].replace("Z", "+00:00")) - frozen).total_seconds() < 60
               for c in calls), calls
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in task["llm_calls"]] == [(100, 10), (100, 10)]
    assert [t["tool_name"] for t in task["tools"]] == ["add", "final_answer"]
    assert session["total_tokens"]["total_tokens"] == 220


def test_type_checkers_see_every_lazy_export():
    """`__init__`'s TYPE_CHECKING imports (what mypy and IDEs read) name the same things, from the same modules, as
    the lazy exports `__getattr__` loads."""
    import ast

    import sop_telemetry

    tree = ast.parse((REPO / "sop_telemetry" / "__init__.py").read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    declared = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert declared == sop_telemetry._EXPORTS
