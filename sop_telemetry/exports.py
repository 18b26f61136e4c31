"""Exports of a stored session: JSON, CSV tables, a Mermaid gantt of the timeline, and an indented text tree.

Usage::

    from sop_telemetry.exports import to_json, to_csv, write_csv, to_mermaid, to_text_tree
    Path("session.json").write_text(to_json(session))        # the session file itself; loads back equal
    write_csv(session, Path("out"))                           # out/tasks.csv, agents, tools, llm_calls, steps
    print(to_csv(session, "llm_calls"))                       # one table as text
    print(to_mermaid(session, task_id))                       # paste into a ```mermaid block
    print(to_text_tree(session))                              # agents nested in agents, their steps, calls and tools

CSV tables are flat, one row per record, and every row carries `session_id` and `task_id` so tables of several
sessions can be concatenated and joined (pandas, a spreadsheet). Works without any agent framework.
"""

from __future__ import annotations

import csv
import io
import math
import re
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

from pydantic import BaseModel

from .analysis import format_cost, format_duration
from .models import AgentExecution, LLMCall, StepExecution, TaskExecution, TelemetrySession, ToolExecution
from .status import CallStatus, TaskStatus

CSV_TABLES = ("tasks", "agents", "tools", "llm_calls", "steps")

_RECORD_MODELS: Dict[str, Type[BaseModel]] = {"agents": AgentExecution, "tools": ToolExecution, "llm_calls": LLMCall,
                                              "steps": StepExecution}
# A task's own fields, then counts and sums over its records (the records are tables of their own).
_TASK_FIELDS = ("start_time", "end_time", "duration", "description", "status", "sop_category", "error_type",
                "error_message", "stop_reason", "implicit")
_TASK_COLUMNS = (
    *_TASK_FIELDS, "agents", "llm_calls", "tool_calls", "steps", "prompt_tokens", "completion_tokens",
    "total_tokens", "unreported_calls", "cost_estimate", "code_actions", "code_lines", "dropped_records",
)


# -- JSON ----------------------------------------------------------------------------------------------------------
def to_json(session: TelemetrySession, indent: Optional[int] = 2) -> str:
    """The session as its file holds it; `TelemetrySession.from_json(to_json(s)) == s`."""
    return session.to_json(indent=indent)


# -- CSV -----------------------------------------------------------------------------------------------------------
def csv_columns(table: str) -> List[str]:
    """Column names of a CSV table (one of CSV_TABLES)."""
    if table == "tasks":
        return ["session_id", "task_id", *_TASK_COLUMNS]
    model = _RECORD_MODELS.get(table)
    if model is None:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(CSV_TABLES)}")
    # From the schema, so a field added to a record shows up here without anyone remembering to add it.
    return ["session_id", "task_id", *model.model_fields]


def _rows(session: TelemetrySession, table: str) -> Iterable[List[Any]]:
    columns = csv_columns(table)
    for task in session.tasks:
        if table == "tasks":
            usage = task.token_usage
            values: Dict[str, Any] = {
                **{name: getattr(task, name) for name in _TASK_FIELDS},
                "agents": len(task.agents), "llm_calls": len(task.llm_calls), "tool_calls": len(task.tools),
                "steps": len(task.steps), "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens,
                "unreported_calls": usage.unreported_calls, "cost_estimate": usage.cost_estimate,
                "code_actions": task.code_changes.code_actions, "code_lines": task.code_changes.code_lines,
                "dropped_records": sum(task.dropped_records.values()),
            }
            yield [session.session_id, task.task_id, *(values[name] for name in _TASK_COLUMNS)]
            continue
        for record in getattr(task, table):
            yield [session.session_id, task.task_id, *(getattr(record, name) for name in columns[2:])]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(session: TelemetrySession, table: str = "tasks") -> str:
    """One table of the session as CSV text (header row first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(table))
    for row in _rows(session, table):
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def write_csv(session: TelemetrySession, directory: Union[str, Path],
              tables: Sequence[str] = CSV_TABLES) -> Dict[str, Path]:
    """Writes `<directory>/<table>.csv` for each table (the directory is created); returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in tables:
        path = directory / f"{table}.csv"
        path.write_text(to_csv(session, table), encoding="utf-8", newline="")
        paths[table] = path
    return paths


# -- choosing tasks ------------------------------------------------------------------------------------------------
def select_tasks(session: TelemetrySession, task_id: Optional[str] = None) -> List[TaskExecution]:
    """All tasks, or the one whose id is `task_id` (or starts with it, when only one does); KeyError if none."""
    if task_id is None:
        return list(session.tasks)
    exact = [t for t in session.tasks if t.task_id == task_id]
    if exact:
        return exact
    prefixed = [t for t in session.tasks if t.task_id.startswith(task_id)]
    if len(prefixed) == 1:
        return prefixed
    reason = "matches several tasks" if prefixed else "is not a task of this session"
    raise KeyError(f"{task_id!r} {reason} (tasks: {', '.join(t.task_id for t in session.tasks) or 'none'})")


# -- Mermaid -------------------------------------------------------------------------------------------------------
# ':' ends a gantt task's name, ';' ends a statement, '#' starts an entity code and '%%' a comment: names must not
# carry them, so they are swapped for look-alikes; control characters (newlines) become spaces.
_MERMAID_SWAPS = str.maketrans({":": "\u2236", ";": ",", "#": "\uff03", "%": "\uff05"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _mermaid_text(value: Any, limit: int = 80) -> str:
    text = _CONTROL.sub(" ", str(value)).translate(_MERMAID_SWAPS)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text or "unnamed"


def _ms(moment: datetime, duration: Optional[float]) -> Tuple[int, int]:
    """Start and end in epoch milliseconds; every bar is at least 1 ms long so that none vanishes or inverts."""
    start = moment.timestamp()
    begin = math.floor(start * 1000)
    end = math.ceil((start + (duration or 0.0)) * 1000)
    return begin, max(end, begin + 1)


def to_mermaid(session: TelemetrySession, task_id: Optional[str] = None) -> str:
    """A Mermaid gantt of the timeline of one task (or of every task): a section per agent run holding the run,
    its model calls and its tool calls at their real times. Failed runs and calls are marked `crit`."""
    tasks = select_tasks(session, task_id)
    if len(tasks) == 1:
        task = tasks[0]
        title = f"Task {task.task_id} ({TaskStatus(task.status).value}, {format_duration(task.duration)})"
    else:
        title = f"Session {session.session_id} ({len(tasks)} tasks)"
    lines = ["gantt", f"    title {_mermaid_text(title, 120)}", "    dateFormat x", "    axisFormat %H:%M:%S.%L",
             "    todayMarker off"]
    counter = 0

    def bar(label: str, tags: List[str], moment: datetime, duration: Optional[float]) -> None:
        nonlocal counter
        counter += 1
        begin, end = _ms(moment, duration)
        lines.append(f"    {_mermaid_text(label)} :{''.join(t + ', ' for t in tags)}b{counter}, {begin}, {end}")

    for number, task in enumerate(tasks, 1):
        prefix = f"T{number} " if len(tasks) > 1 else ""
        groups = _records_by_agent(task)
        for agent in _agents_in_tree_order(task):
            lines.append(f"    section {_mermaid_text(prefix + agent.agent_name)}")
            failed = TaskStatus(agent.status) is TaskStatus.FAILED
            bar(f"agent {agent.agent_name} {format_duration(agent.duration)}", ["crit" if failed else "active"],
                agent.start_time, agent.duration)
            _mermaid_records(groups.pop(agent.agent_id, []), bar)
        leftovers = [record for records in groups.values() for record in records]
        if leftovers or not task.agents:
            lines.append(f"    section {_mermaid_text(prefix + 'task ' + task.task_id)}")
            failed = TaskStatus(task.status) is TaskStatus.FAILED
            bar(f"task {task.task_id} {format_duration(task.duration)}", ["crit" if failed else "active"],
                task.start_time, task.duration)
            _mermaid_records(leftovers, bar)
    return "\n".join(lines) + "\n"


def _mermaid_records(records: List[Union[LLMCall, ToolExecution]], bar: Any) -> None:
    for record in sorted(records, key=lambda r: r.start_time):
        failed = CallStatus(record.status) is CallStatus.ERROR
        if isinstance(record, LLMCall):
            tokens = f"{record.total_tokens} tok" if record.tokens_reported else "no usage"
            label = f"model {record.model} {tokens} {format_duration(record.duration)}"
        else:
            label = f"tool {record.tool_name} {format_duration(record.duration)}"
        if failed:
            label += f" failed {record.error_type or ''}"
        bar(label, ["crit"] if failed else [], record.start_time, record.duration)


def _records_by_agent(task: TaskExecution) -> Dict[Optional[str], List[Union[LLMCall, ToolExecution]]]:
    known = {a.agent_id for a in task.agents}
    groups: Dict[Optional[str], List[Union[LLMCall, ToolExecution]]] = {}
    records: List[Union[LLMCall, ToolExecution]] = [*task.llm_calls, *task.tools]
    for record in records:
        key = record.agent_id if record.agent_id in known else None
        groups.setdefault(key, []).append(record)
    return groups


def _agents_in_tree_order(task: TaskExecution) -> List[AgentExecution]:
    ordered: List[AgentExecution] = []
    for root in _children_of(task, None):
        _walk(task, root, ordered)
    return ordered


def _walk(task: TaskExecution, agent: AgentExecution, out: List[AgentExecution]) -> None:
    out.append(agent)
    for child in _children_of(task, agent.agent_id):
        _walk(task, child, out)


def _children_of(task: TaskExecution, parent_id: Optional[str]) -> List[AgentExecution]:
    known = {a.agent_id for a in task.agents}
    if parent_id is None:
        found = [a for a in task.agents if a.parent_agent_id is None or a.parent_agent_id not in known]
    else:
        found = [a for a in task.agents if a.parent_agent_id == parent_id and a.agent_id != parent_id]
    return sorted(found, key=lambda a: a.start_time)


# -- text tree -----------------------------------------------------------------------------------------------------
class _Node:
    __slots__ = ("text", "start", "children")

    def __init__(self, text: str, start: datetime) -> None:
        self.text = text
        self.start = start
        self.children: List["_Node"] = []


def to_text_tree(session: TelemetrySession, task_id: Optional[str] = None) -> str:
    """An indented tree of one task (or every task): agents nested under the agent (and step) that called them,
    each with its steps, model calls and tool calls, their tokens, durations and errors."""
    blocks = []
    for task in select_tasks(session, task_id):
        root = _task_node(task)
        lines = [root.text]
        if task.description:
            lines.append(f"  {_one_line(repr(task.description), 100)}")
        _draw(root.children, "", lines)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else "(no tasks)\n"


def _task_node(task: TaskExecution) -> _Node:
    usage = task.token_usage
    unpriced = sum(1 for call in task.llm_calls if call.tokens_reported and call.cost_estimate is None)
    parts = [f"task {task.task_id}", TaskStatus(task.status).value, format_duration(task.duration),
             f"{usage.total_tokens:,} tokens", f"cost {format_cost(usage.cost_estimate, unpriced)}"]
    if task.stop_reason:
        parts.append(f"stopped: {task.stop_reason}")
    if task.error_type:
        parts.append(_error(task.error_type, task.error_message))
    if task.dropped_records:
        parts.append(f"{sum(task.dropped_records.values())} records dropped")
    root = _Node("  ".join(parts), task.start_time)

    agents = {a.agent_id: _agent_node(task, a) for a in task.agents}
    steps: Dict[Tuple[Optional[str], Optional[int], str], _Node] = {}
    step_spans: Dict[Optional[str], List[Tuple[StepExecution, _Node]]] = {}
    for step in task.steps:
        node = _Node(_step_text(step), step.start_time)
        steps.setdefault((step.agent_id, step.step_number, step.step_type), node)
        steps.setdefault((step.agent_id, step.step_number, ""), node)
        step_spans.setdefault(step.agent_id, []).append((step, node))
        owner = agents.get(step.agent_id or "")
        (owner or root).children.append(node)

    records: List[Union[LLMCall, ToolExecution]] = [*task.llm_calls, *task.tools]
    for record in records:
        if isinstance(record, LLMCall):
            node = _Node(_call_text(record), record.start_time)
            kind = record.purpose or ""
        else:
            node = _Node(_tool_text(record), record.start_time)
            kind = "action"
        parent = (steps.get((record.agent_id, record.step_number, kind))
                  or steps.get((record.agent_id, record.step_number, ""))
                  or agents.get(record.agent_id or "") or root)
        parent.children.append(node)

    for agent in task.agents:
        node = agents[agent.agent_id]
        parent_id = agent.parent_agent_id
        if parent_id is None or parent_id not in agents or parent_id == agent.agent_id:
            root.children.append(node)
            continue
        # A managed agent goes under the step of its parent during which it started.
        holder = agents[parent_id]
        for step, step_node in step_spans.get(parent_id, []):
            step_end = step.end_time or step.start_time
            if step.start_time <= agent.start_time <= step_end:
                holder = step_node
                break
        holder.children.append(node)
    return root


def _agent_node(task: TaskExecution, agent: AgentExecution) -> _Node:
    own = [c for c in task.llm_calls if c.agent_id == agent.agent_id and c.tokens_reported]
    tokens = sum(c.total_tokens or 0 for c in own)
    details = ", ".join(x for x in (agent.agent_type, agent.model) if x)
    parts = [f"agent {agent.agent_name} [{details}]", TaskStatus(agent.status).value,
             format_duration(agent.duration), f"{agent.steps} steps", f"{tokens:,} tokens"]
    if agent.max_steps_reached:
        parts.append("max steps reached")
    if agent.error_type:
        parts.append(_error(agent.error_type, agent.error_message))
    return _Node("  ".join(parts), agent.start_time)


def _step_text(step: StepExecution) -> str:
    number = "" if step.step_number is None else f" {step.step_number}"
    parts = [f"step{number} {step.step_type}", format_duration(step.duration),
             f"{step.prompt_tokens + step.completion_tokens:,} tokens"]
    if step.is_final_answer:
        parts.append("final answer")
    if step.error_type:
        parts.append(_error(step.error_type, step.error_message))
    return "  ".join(parts)


def _call_text(call: LLMCall) -> str:
    if call.tokens_reported:
        tokens = f"{call.prompt_tokens or 0:,}+{call.completion_tokens or 0:,}={call.total_tokens or 0:,} tokens"
    else:
        tokens = "tokens not reported"
    parts = [f"model {call.model}", format_duration(call.duration), tokens]
    if call.cost_estimate is not None:
        parts.append(format_cost(call.cost_estimate))
    if call.streamed:
        parts.append("streamed")
    if CallStatus(call.status) is CallStatus.ERROR:
        parts.append(_error(call.error_type, call.error_message))
    return "  ".join(parts)


def _tool_text(tool: ToolExecution) -> str:
    parts = [f"tool {tool.tool_name}", format_duration(tool.duration)]
    parts.append(_error(tool.error_type, tool.error_message) if CallStatus(tool.status) is CallStatus.ERROR else "ok")
    return "  ".join(parts)


def _error(kind: Optional[str], message: Optional[str]) -> str:
    text = f"error {kind or 'unknown'}"
    return f"{text}: {_one_line(message, 80)}" if message else text


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _draw(nodes: List[_Node], indent: str, lines: List[str]) -> None:
    nodes = sorted(nodes, key=lambda n: n.start)
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        lines.append(f"{indent}{'└── ' if last else '├── '}{node.text}")
        _draw(node.children, indent + ("    " if last else "│   "), lines)
