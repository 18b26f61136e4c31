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
- planned_managed_run: a CodeAgent on "gpt-4o" planning every 2 steps (a planning call of (300, 40), then (420, 30)
  and (650, 25)) whose code calls the managed agent "adder", a ToolCallingAgent on "gpt-4o-mini" whose tool explode
  fails twice before add and final_answer succeed ((120, 8), (180, 9), (260, 7), (340, 6)).
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


def planned_managed_run() -> Any:
    adder = ToolCallingAgent(
        tools=[add, explode],
        model=ScriptedModel([call("explode", reason="first"), call("explode", reason="again"), call("add", a=2, b=2),
                             call("final_answer", answer="4")], model_id="gpt-4o-mini",
                            usage_by_index={0: (120, 8), 1: (180, 9), 2: (260, 7), 3: (340, 6)}),
        name="adder", description="Adds numbers.", verbosity_level=0,
    )
    boss = CodeAgent(
        tools=[], managed_agents=[adder], verbosity_level=0, planning_interval=2,
        model=ScriptedModel(["Plan: ask adder.", code_reply('result = adder(task="2+2")\nprint(result)'),
                             code_reply('final_answer("4")')], model_id="gpt-4o",
                            usage_by_index={0: (300, 40), 1: (420, 30), 2: (650, 25)}),
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


def synthetic_session(steps: int, calls_per_step: int = 2, growth: int = 0,
                      session_id: str = "20260101T000000_000000_0000abcd") -> TelemetrySession:
    """A session built record by record (no agent run): one task, one agent run of `steps` action steps, each with
    `calls_per_step` calls alternating model call and tool call, 10 ms apart; the model calls report (1000 + growth
    x step, 50) tokens and cost $0.001. For sizes no scripted run reaches in a test's time (10,000 calls)."""
    from datetime import datetime, timedelta, timezone

    from sop_telemetry.models import (
        AgentExecution,
        LLMCall,
        StepExecution,
        TaskExecution,
        ToolExecution,
    )

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ms = timedelta(milliseconds=1)
    step_ms = 10 * calls_per_step + 2
    total = steps * step_ms + 2
    agent = AgentExecution(agent_id="a1", agent_type="ToolCallingAgent", agent_name="worker", model="m",
                           start_time=t0, end_time=t0 + total * ms, duration=total / 1000, steps=steps)
    task = TaskExecution(task_id="big", description="many calls", status="completed", start_time=t0,
                         end_time=t0 + total * ms, duration=total / 1000, agents=[agent])
    for number in range(1, steps + 1):
        begin = t0 + (1 + (number - 1) * step_ms) * ms
        prompt = 1000 + growth * number
        task.steps.append(StepExecution(agent_name="worker", agent_id="a1", step_number=number, start_time=begin,
                                        end_time=begin + (step_ms - 1) * ms, duration=(step_ms - 1) / 1000,
                                        prompt_tokens=prompt, completion_tokens=50,
                                        llm_calls=(calls_per_step + 1) // 2, tool_calls=calls_per_step // 2))
        for k in range(calls_per_step):
            start = begin + (1 + 10 * k) * ms
            common = dict(agent_name="worker", agent_id="a1", step_number=number, start_time=start,
                          end_time=start + 8 * ms, duration=0.008, call_id=f"c{number}_{k}")
            if k % 2 == 0:
                task.llm_calls.append(LLMCall(model="m", prompt_tokens=prompt, completion_tokens=50,
                                              total_tokens=prompt + 50, cost_estimate=0.001, **common))
            else:
                task.tools.append(ToolExecution(tool_name=f"tool{k % 5}", **common))
    return TelemetrySession(session_id=session_id, start_time=t0, end_time=t0 + (total + 1) * ms, tasks=[task])
