"""What the page is drawn from: a session turned into plain JSON-ready data (records in tree order, figures, the
context-growth series), built from the stored session through the analysis functions the CLI uses."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from ..analysis import analyze_performance, analyze_token_usage, task_time_split
from ..models import TaskExecution, TelemetrySession
from ..status import CallStatus, TaskStatus
from ._findings import findings

# Record kinds as the page knows them.
AGENT, STEP, MODEL, TOOL = "agent", "step", "model", "tool"
_SLOWEST = 12
# Fields every record carries in its own keys on the page; `fields` holds the rest, known to this version or not.
_SHOWN = {"start_time", "end_time", "duration", "status", "error_type", "error_message", "agent_name",
          "cost_estimate", "tokens_reported"}


def session_data(session: TelemetrySession) -> Dict[str, Any]:
    """The session as the page's data: header figures, per-model / agent / tool tables, slowest calls, time split,
    findings, and for each task its records in tree order with the context-growth series."""
    tokens = analyze_token_usage(session)
    performance = analyze_performance(session)
    positions: Dict[int, Tuple[int, int]] = {}
    tasks = []
    for index, task in enumerate(session.tasks):
        tree = tree_records(task)
        positions.update((id(record), (index, position)) for position, (_k, record, _p) in enumerate(tree))
        tasks.append(_task_data(session, task, tree))
    total = tokens.total
    statuses = [_value(t.status) for t in session.tasks]
    return {
        "id": session.session_id,
        "schema_version": session.schema_version,
        "start": session.start_time.isoformat(),
        "end": session.end_time.isoformat() if session.end_time is not None else None,
        "header": {
            "status": _session_status(statuses),
            "duration": session.total_duration,
            "tasks": len(session.tasks),
            "failed_tasks": statuses.count(TaskStatus.FAILED.value),
            "agent_runs": sum(len(t.agents) for t in session.tasks),
            "model_calls": sum(len(t.llm_calls) for t in session.tasks),
            "tool_calls": sum(len(t.tools) for t in session.tasks),
            "dropped_model_calls": sum(t.dropped_records.get("llm_calls", 0) for t in session.tasks),
            "prompt_tokens": total.prompt_tokens,
            "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens,
            "cost": total.cost,
            "unpriced_calls": total.unpriced_calls,
            "unreported_calls": total.unreported_calls,
        },
        "environment": _present(session.environment.model_dump(mode="json")),
        "split": performance.split.model_dump(mode="json"),
        "models": _per_model(tokens.by_model, performance.models),
        "agents": _per_agent(session, tokens.by_agent),
        "tools": [dict(name=name, **stats.model_dump(mode="json")) for name, stats in performance.tools.items()],
        "slowest": _slowest(tasks),
        "findings": [dict(f.as_dict(), refs=[positions[id(r)] for _t, r in f.records if id(r) in positions])
                     for f in findings(session)],
        "tasks": tasks,
    }


def _session_status(statuses: List[str]) -> str:
    for status in (TaskStatus.RUNNING.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value):
        if status in statuses:
            return status
    return TaskStatus.COMPLETED.value if statuses else "empty"


def _value(status: Any) -> str:
    return getattr(status, "value", status)


def _present(fields: Dict[str, Any]) -> Dict[str, Any]:
    """The fields that say something (None, "" and empty collections left out), so that a field this version does
    not know, or an older file lacks, is shown or skipped without a special case."""
    return {k: v for k, v in fields.items() if v not in (None, "", [], {})}


def _ms(moment: datetime, origin: datetime) -> float:
    return (moment - origin).total_seconds() * 1000.0


# -- tasks ---------------------------------------------------------------------------------------------------------
def tree_records(task: TaskExecution) -> List[Tuple[str, Any, Optional[int]]]:
    """The task's records as (kind, record, parent position) in tree order: each agent run, then its steps and the
    agent runs they started, each step's model and tool calls; children by start time. Every record appears once;
    a call whose step is not recorded hangs from its agent run, one without an agent run from the task."""
    runs: Dict[Optional[str], Any] = {a.agent_id: a for a in task.agents if a.agent_id}
    steps_of: Dict[Any, list] = defaultdict(list)
    numbered: Dict[Tuple[Any, Any], list] = defaultdict(list)
    for step in task.steps:
        agent_id = step.agent_id if step.agent_id in runs else None
        steps_of[agent_id].append(step)
        numbered[agent_id, step.step_number].append(step)
    children: Dict[int, list] = defaultdict(list)  # id(parent record) -> [(kind, record)]; id(task) for the roots

    def add(parent: Any, kind: str, record: Any) -> None:
        children[id(parent)].append((kind, record))

    def step_for(agent_id: Optional[str], number: Optional[int], start: datetime, purpose: Optional[str]) -> Any:
        candidates = numbered.get((agent_id, number), ()) if agent_id is not None else ()
        for step in candidates:  # a planning step and an action step can share a number: the one that holds it
            if step.start_time <= start and (step.end_time is None or start <= step.end_time):
                return step
        for step in candidates:
            if purpose is not None and step.step_type == purpose:
                return step
        return candidates[0] if candidates else None

    for agent in task.agents:
        parent: Any = runs.get(agent.parent_agent_id) if agent.parent_agent_id else None
        if parent is not None:
            # A managed agent runs inside one of its parent's steps: hang it there.
            holder = [s for s in steps_of.get(parent.agent_id, ())
                      if s.start_time <= agent.start_time and (s.end_time is None or agent.start_time <= s.end_time)]
            parent = holder[-1] if holder else parent
        add(parent if parent is not None else task, AGENT, agent)
    for agent_id, steps in steps_of.items():
        for step in steps:
            add(runs[agent_id] if agent_id is not None else task, STEP, step)
    for kind, records in ((MODEL, task.llm_calls), (TOOL, task.tools)):
        for record in records:
            agent_id = record.agent_id if record.agent_id in runs else None
            step = step_for(agent_id, record.step_number, record.start_time, getattr(record, "purpose", None))
            add(step if step is not None else runs.get(agent_id, task), kind, record)

    ordered: List[Tuple[str, Any, Optional[int]]] = []

    def walk(parent: Any, position: Optional[int]) -> None:
        for kind, record in sorted(children.get(id(parent), ()), key=lambda c: c[1].start_time):
            ordered.append((kind, record, position))
            walk(record, len(ordered) - 1)

    walk(task, None)
    return ordered


def _task_data(session: TelemetrySession, task: TaskExecution, tree: List[Tuple[str, Any, Optional[int]]]
               ) -> Dict[str, Any]:
    origin = task.start_time
    records = [_record(kind, record, parent, origin) for kind, record, parent in tree]
    usage = task.token_usage
    return {
        "id": task.task_id,
        "description": task.description,
        "status": _value(task.status),
        "offset": _ms(origin, session.start_time),
        "duration": task.duration,
        "error": _error(task.error_type, task.error_message),
        "stop_reason": task.stop_reason,
        "implicit": task.implicit,
        "dropped": dict(task.dropped_records),
        "split": task_time_split(task).model_dump(mode="json"),
        "total_tokens": usage.total_tokens,
        "cost": usage.cost_estimate,
        "model_calls": len(task.llm_calls),
        "tool_calls": len(task.tools),
        "records": records,
        "context": _context(records),
    }


def _record(kind: str, record: Any, parent: Optional[int], origin: datetime) -> Dict[str, Any]:
    fields = _present(record.model_dump(mode="json", exclude=_SHOWN))
    if kind == AGENT:
        name = record.agent_name if record.agent_name == record.agent_type else \
            f"{record.agent_name} ({record.agent_type})"
    elif kind == STEP:
        name = f"{record.step_type} {record.step_number}" if record.step_number is not None else record.step_type
    elif kind == MODEL:
        name = record.model
    else:
        name = record.tool_name
    status = _value(record.status) if kind != STEP else ("error" if record.error_type else "success")
    item: Dict[str, Any] = {
        "kind": kind, "parent": parent, "name": name, "status": _status(status, record.duration),
        "start": _ms(record.start_time, origin), "duration": record.duration,
        "agent": record.agent_name, "error": _error(record.error_type, record.error_message), "fields": fields,
    }
    if kind == MODEL:
        item["tokens_reported"] = record.tokens_reported
        item["input_tokens"] = record.prompt_tokens if record.tokens_reported else None
        item["output_tokens"] = record.completion_tokens if record.tokens_reported else None
        item["cost"] = record.cost_estimate
    elif kind == STEP:
        item["input_tokens"] = record.prompt_tokens
        item["output_tokens"] = record.completion_tokens
    return item


def _status(status: str, duration: Optional[float]) -> str:
    if status in (CallStatus.ERROR.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value):
        return "error"
    if status in (CallStatus.RUNNING.value, TaskStatus.RUNNING.value, TaskStatus.PENDING.value) or duration is None:
        return "running"
    return "ok"


def _error(kind: Optional[str], message: Optional[str]) -> Optional[str]:
    if not kind and not message:
        return None
    return f"{kind}: {message}" if kind and message else kind or message


def _context(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Input tokens per step, one series per agent run (steps in time order)."""
    series: Dict[int, Dict[str, Any]] = {}
    for position, record in enumerate(records):
        if record["kind"] != STEP:
            continue
        run = record["parent"]
        if run is None or records[run]["kind"] != AGENT:
            run = -1
        line = series.get(run)
        if line is None:
            name = records[run]["name"] if run >= 0 else "(no agent)"
            line = series[run] = {"run": run if run >= 0 else None, "name": name, "points": []}
        line["points"].append({"record": position, "label": record["name"], "tokens": record["input_tokens"]})
    for line in series.values():
        line["points"].sort(key=lambda p: records[p["record"]]["start"])
    return list(series.values())


# -- tables --------------------------------------------------------------------------------------------------------
def _per_model(by_model: Dict[str, Any], durations: Dict[str, Any]) -> List[Dict]:
    rows = []
    for name, figures in by_model.items():
        stats = durations.get(name)
        rows.append({"name": name, **figures.model_dump(mode="json"),
                     "time": stats.total if stats is not None else 0.0,
                     "errors": stats.errors if stats is not None else 0})
    return rows


def _per_agent(session: TelemetrySession, by_agent: Dict[str, Any]) -> List[Dict]:
    runs: Dict[str, int] = defaultdict(int)
    times: Dict[str, List[float]] = defaultdict(list)
    failed: Dict[str, int] = defaultdict(int)
    for task in session.tasks:
        for agent in task.agents:
            runs[agent.agent_name] += 1
            failed[agent.agent_name] += _value(agent.status) == TaskStatus.FAILED.value
            if agent.duration is not None:
                times[agent.agent_name].append(agent.duration)
    rows = []
    for name in dict.fromkeys([*runs, *by_agent]):
        figures = by_agent.get(name)
        rows.append({"name": name, "runs": runs.get(name, 0), "failed": failed.get(name, 0),
                     "time": math.fsum(times.get(name, ())), **(figures.model_dump(mode="json") if figures else {})})
    return rows


def _slowest(tasks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    calls = [(record["duration"], t, i) for t, task in enumerate(tasks) for i, record in enumerate(task["records"])
             if record["kind"] in (MODEL, TOOL) and record["duration"] is not None]
    calls.sort(key=lambda c: c[0], reverse=True)
    return [{"task": t, "record": i} for _duration, t, i in calls[:_SLOWEST]]
