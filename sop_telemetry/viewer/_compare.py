"""Two sessions (or two tasks) aligned for comparison: tasks by position (or the two chosen), inside a task each
agent run by its name and the order it ran in under its parent, each step by its type and number in its run."""

from __future__ import annotations

from itertools import zip_longest
from typing import Any, Dict, List, Optional, Tuple

from ..models import TaskExecution, TelemetrySession
from ..status import CallStatus, TaskStatus
from ._data import AGENT, MODEL, STEP, tree_records

Key = Tuple[Any, ...]


def compare(a: TelemetrySession, b: TelemetrySession, task_a: Optional[str] = None,
            task_b: Optional[str] = None) -> Dict[str, Any]:
    """The aligned rows, ready for the page: one entry per task pair, each with a row per agent run and step and
    the figures (calls, tokens, cost, time, failed) of each side; a side without the row has None."""
    if task_a is not None or task_b is not None:
        pairs = [(_task(a, task_a or task_b), _task(b, task_b or task_a))]
    else:
        pairs = list(zip_longest(a.tasks, b.tasks))
    return {
        "label_a": a.session_id + (f" · task {task_a or task_b}" if task_a or task_b else ""),
        "label_b": b.session_id + (f" · task {task_b or task_a}" if task_a or task_b else ""),
        "pairs": [_pair(ta, tb) for ta, tb in pairs],
    }


def _task(session: TelemetrySession, task_id: Optional[str]) -> TaskExecution:
    for task in session.tasks:
        if task.task_id == task_id:
            return task
    raise KeyError(f"no task {task_id!r} in session {session.session_id}")


def _pair(ta: Optional[TaskExecution], tb: Optional[TaskExecution]) -> Dict[str, Any]:
    side_a, side_b = _rows(ta), _rows(tb)
    order = _merge([key for key, _row in side_a], [key for key, _row in side_b])
    by_a, by_b = dict(side_a), dict(side_b)
    rows = []
    for key in order:
        shown = by_a.get(key) or by_b[key]
        rows.append({"label": shown["label"], "kind": shown["kind"], "depth": shown["depth"],
                     "a": by_a[key]["figures"] if key in by_a else None,
                     "b": by_b[key]["figures"] if key in by_b else None})
    return {"task_a": ta.task_id if ta else None, "task_b": tb.task_id if tb else None, "rows": rows}


def _rows(task: Optional[TaskExecution]) -> List[Tuple[Key, Dict[str, Any]]]:
    if task is None:
        return []
    tree = tree_records(task)
    figures = [_zero() for _ in tree]
    whole = _zero()
    for position in range(len(tree) - 1, -1, -1):
        kind, record, parent = tree[position]
        if kind not in (AGENT, STEP):
            _add_call(figures[position], kind, record)
        targets = [whole] if parent is None else [figures[parent]]
        for target in targets:
            for name in ("calls", "tokens", "cost"):
                if figures[position][name] is not None:
                    target[name] = (target[name] or 0) + figures[position][name]
    whole["time"] = task.duration
    whole["failed"] = getattr(task.status, "value", task.status) == TaskStatus.FAILED.value
    rows: List[Tuple[Key, Dict[str, Any]]] = [(("task",), {"label": "whole task", "kind": "task", "depth": 0,
                                                           "figures": whole})]
    keys: List[Key] = []
    seen: Dict[Key, int] = {}
    for position, (kind, record, parent) in enumerate(tree):
        if kind not in (AGENT, STEP):
            keys.append(())
            continue
        own: Key = (kind, record.agent_name) if kind == AGENT else (kind, record.step_type, record.step_number)
        base = (keys[parent] if parent is not None else ()) + (own,)
        seen[base] = seen.get(base, 0) + 1
        key = base + (seen[base],)
        keys.append(key)
        figures[position]["time"] = record.duration
        status = getattr(record.status, "value", record.status) if kind == AGENT else None
        figures[position]["failed"] = status == TaskStatus.FAILED.value if kind == AGENT else bool(record.error_type)
        label = record.agent_name if kind == AGENT else \
            f"{record.step_type} {record.step_number}" if record.step_number is not None else record.step_type
        rows.append((key, {"label": label, "kind": kind, "depth": len(key) // 2, "figures":
                           figures[position]}))
    return rows


def _zero() -> Dict[str, Any]:
    return {"calls": 0, "tokens": 0, "cost": None, "time": None, "failed": False}


def _add_call(figures: Dict[str, Any], kind: str, record: Any) -> None:
    figures["calls"] = 1
    if kind == MODEL and record.tokens_reported:
        prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
        figures["tokens"] = record.total_tokens if record.total_tokens is not None else prompt + completion
        figures["cost"] = record.cost_estimate
    figures["failed"] = getattr(record.status, "value", record.status) == CallStatus.ERROR.value


def _merge(first: List[Key], second: List[Key]) -> List[Key]:
    """`first` in its order, with the keys only `second` has placed after the shared key that precedes them there."""
    present = set(first)
    after: Dict[Optional[Key], List[Key]] = {}
    anchor: Optional[Key] = None
    for key in second:
        if key in present:
            anchor = key
        else:
            after.setdefault(anchor, []).append(key)
    merged = list(after.get(None, ()))
    for key in first:
        merged.append(key)
        merged.extend(after.get(key, ()))
    return merged
