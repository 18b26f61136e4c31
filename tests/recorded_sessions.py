"""Sessions recorded from real smolagents runs with scripted models, for the analysis, export and CLI tests.

Usage::

    session = record(manager, tool_calling_run, managed_run)   # runs them, writes the file, loads it back
    second = record(new_manager(storage_dir), failing_run)      # a second session file in the same directory
    bars = check_mermaid_gantt(to_mermaid(session))             # strict check of the gantt syntax we emit

Every figure the tests assert follows from the scripts below:
- tool_calling_run: a ToolCallingAgent, 3 model calls of (100, 10) tokens on "scripted-model" (no known price);
  tools add (ok), explode (fails), final_answer (ok).
- managed_run: a CodeAgent on "gpt-4o" (1 call, (200, 20)) whose code calls the managed agent "adder", a
  ToolCallingAgent on "gpt-4o-mini" (2 calls of (50, 5)) that calls add and final_answer.
- failing_run: a ToolCallingAgent on "local/qwen2:7b;#q4" (a model id full of characters Mermaid cannot take) that
  answers once ((100, 10), a call to add) and then raises: the task fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from fakes import ScriptedModel, add, call, code_reply, explode
from smolagents import CodeAgent, ToolCallingAgent
from smolagents.utils import AgentGenerationError

from sop_telemetry.manager import TelemetryManager
from sop_telemetry.models import TelemetrySession
from sop_telemetry.storage import TelemetryDataStore


def tool_calling_run() -> Any:
    model = ScriptedModel([call("add", a=1, b=2), call("explode", reason="boom"), call("final_answer", answer="3")],
                          usage=(100, 10))
    return ToolCallingAgent(tools=[add, explode], model=model, verbosity_level=0).run("add: then; #explode")


def managed_run() -> Any:
    adder = ToolCallingAgent(
        tools=[add],
        model=ScriptedModel([call("add", a=2, b=2), call("final_answer", answer="4")], usage=(50, 5),
                            model_id="gpt-4o-mini"),
        name="adder", description="Adds numbers.", verbosity_level=0,
    )
    boss = CodeAgent(
        tools=[], managed_agents=[adder], verbosity_level=0,
        model=ScriptedModel([code_reply('result = adder(task="2+2")\nfinal_answer(result)')], usage=(200, 20),
                            model_id="gpt-4o"),
    )
    return boss.run("delegate the sum")


def failing_run() -> Any:
    model = ScriptedModel([call("add", a=1, b=1), RuntimeError("model is down")], usage=(100, 10),
                          model_id="local/qwen2:7b;#q4")
    agent = ToolCallingAgent(tools=[add], model=model, verbosity_level=0)
    with pytest.raises(AgentGenerationError, match="model is down"):
        agent.run("fail in the second step")


def record(manager: TelemetryManager, *runs: Callable[[], Any]) -> TelemetrySession:
    """Runs `runs` into the manager's session, flushes it to disk and returns the session loaded from the file."""
    for run in runs:
        run()
    path = manager.flush_data()
    assert path is not None, "nothing was written"
    return TelemetryDataStore(Path(path).parent).load(Path(path).stem)


def new_manager(storage_dir: Path) -> TelemetryManager:
    """A fresh manager (so a new session) writing into `storage_dir`, configured like the `manager` fixture."""
    instance = TelemetryManager._reset_instance()
    instance.initialize({"storage_dir": str(storage_dir), "auto_cleanup": False, "fsync": False})
    return instance


_GANTT_BAR = re.compile(
    r"\A    (?P<name>[^:#;%\n]*[^:#;%\s]) :(?P<tags>(?:(?:active|done|crit|milestone), )*)"
    r"(?P<id>[A-Za-z][A-Za-z0-9_]*), (?P<start>\d+), (?P<end>\d+)\Z"
)


def check_mermaid_gantt(text: str) -> List[Dict[str, Any]]:
    """Checks `text` against the subset of Mermaid's gantt grammar that `to_mermaid` emits, strictly; returns the
    bars as dicts (section, name, tags, id, start, end) in order.

    The rules are Mermaid's (gantt.jison): the first line is `gantt`; `title` and `axisFormat` end at '#' or ';';
    a section name ends at ':', '#' or ';'; a task is `name :data` where the name cannot hold ':' and the data
    cannot hold '#' or ';'; with `dateFormat x`, start and end are integer epoch milliseconds.
    """
    assert text.endswith("\n")
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "gantt", lines[0]
    assert "%%" not in text
    header: Dict[str, str] = {}
    section = None
    bars: List[Dict[str, Any]] = []
    ids = set()
    for line in lines[1:]:
        assert line.startswith("    ") and line[4] != " ", f"bad indentation: {line!r}"
        keyword, _, rest = line[4:].partition(" ")
        if keyword in ("title", "dateFormat", "axisFormat", "todayMarker"):
            assert section is None, f"{keyword} after the first section"
            assert keyword not in header, f"{keyword} twice"
            assert rest and not set(rest) & set("#;"), line
            header[keyword] = rest
        elif keyword == "section":
            assert rest.strip() == rest and rest and not set(rest) & set(":#;"), line
            section = rest
        else:
            match = _GANTT_BAR.match(line)
            assert match is not None, f"not a gantt task line: {line!r}"
            assert section is not None, "a task before any section"
            bar = match.groupdict()
            assert bar["id"] not in ids, f"duplicate id {bar['id']}"
            ids.add(bar["id"])
            bar["tags"] = [t for t in bar["tags"].split(", ") if t]
            bar["start"], bar["end"] = int(bar["start"]), int(bar["end"])
            assert bar["end"] > bar["start"], f"a bar must have a positive length: {line!r}"
            bar["section"] = section
            bars.append(bar)
    assert header.get("dateFormat") == "x"
    assert header.get("todayMarker") == "off"
    assert "title" in header and "axisFormat" in header
    assert bars, "no bars"
    return bars
