"""Findings: short, rule-based observations about a session, each naming the records it is based on. No guessing:
a rule fires on figures in the records, and says which."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from ..analysis import format_duration
from ..models import TelemetrySession
from ..status import CallStatus, TaskStatus

# Input tokens at least this many times the run's first step, and this many more, make "context growing fast".
GROWTH_RATIO = 2.0
GROWTH_TOKENS = 1000
# A share of cost or time this large, among at least two candidates, makes "one X takes most of it".
DOMINANT_SHARE = 0.8
DOMINANT_STEP_SHARE = 0.5
_NAMED = 5


@dataclass
class Finding:
    level: str  # "error", "warning" or "info"
    rule: str
    title: str
    text: str
    # (task index, record) pairs: the records the finding is based on.
    records: List[Tuple[int, Any]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"level": self.level, "rule": self.rule, "title": self.title, "text": self.text}


def findings(session: TelemetrySession) -> List[Finding]:
    """The findings of a session, errors first."""
    found: List[Finding] = []
    for rule in (_failed_tasks, _failing_tools, _failing_models, _max_steps, _unreported, _context_growth,
                 _dominant_model, _dominant_step, _dropped):
        found.extend(rule(session))
    order = {"error": 0, "warning": 1, "info": 2}
    found.sort(key=lambda f: order[f.level])
    return found


def _status(record: Any) -> str:
    return getattr(record.status, "value", record.status)


def _where(record: Any) -> str:
    """A record named as a reader finds it on the page: its call id, agent and step."""
    parts = [record.agent_name or "no agent"]
    if getattr(record, "step_number", None) is not None:
        parts.append(f"step {record.step_number}")
    call_id = getattr(record, "call_id", "")
    return f"{call_id} ({', '.join(parts)})" if call_id else ", ".join(parts)


def _named(records: List[Any]) -> str:
    names = [_where(r) for r in records[:_NAMED]]
    more = len(records) - _NAMED
    return "; ".join(names) + (f"; and {more} more" if more > 0 else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _failed_tasks(session: TelemetrySession) -> List[Finding]:
    out = []
    for index, task in enumerate(session.tasks):
        if _status(task) != TaskStatus.FAILED.value:
            continue
        failed_runs = [a for a in task.agents if _status(a) == TaskStatus.FAILED.value]
        error = ": ".join(x for x in (task.error_type, task.error_message) if x) or "no error recorded"
        names = "; ".join(f"{a.agent_name} ({a.agent_id})" for a in failed_runs[:_NAMED]) or "no agent run"
        out.append(Finding("error", "task_failed", f"Task {task.task_id} failed",
                           f"{error}. Failed agent runs: {names}.", [(index, a) for a in failed_runs]))
    return out


def _failing(session: TelemetrySession, kind: str, key: str, label: str) -> List[Finding]:
    calls: Dict[str, List[Tuple[int, Any]]] = defaultdict(list)
    failed: Dict[str, List[Tuple[int, Any]]] = defaultdict(list)
    for index, task in enumerate(session.tasks):
        for record in getattr(task, kind):
            name = getattr(record, key)
            calls[name].append((index, record))
            if _status(record) == CallStatus.ERROR.value:
                failed[name].append((index, record))
    out = []
    for name, bad in failed.items():
        errors = list(dict.fromkeys(": ".join(x for x in (r.error_type, r.error_message) if x) or "no error recorded"
                                    for _i, r in bad))
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        out.append(Finding(
            "warning" if len(bad) > 1 else "info", f"{label}_failing",
            f"{label.capitalize()} {name} failed {len(bad)} of {_plural(len(calls[name]), 'call')}",
            f"{shown}. Failed calls: {_named([r for _i, r in bad])}.", bad))
    return out


def _failing_tools(session: TelemetrySession) -> List[Finding]:
    return _failing(session, "tools", "tool_name", "tool")


def _failing_models(session: TelemetrySession) -> List[Finding]:
    return _failing(session, "llm_calls", "model", "model")


def _max_steps(session: TelemetrySession) -> List[Finding]:
    out = []
    for index, task in enumerate(session.tasks):
        runs = [a for a in task.agents if a.max_steps_reached]
        for agent in runs:
            out.append(Finding("warning", "max_steps", f"{agent.agent_name} hit max_steps",
                               f"Agent run {agent.agent_id} of task {task.task_id} stopped after "
                               f"{_plural(agent.steps, 'step')} without a final answer of its own.", [(index, agent)]))
        if not runs and task.stop_reason == "max_steps":
            out.append(Finding("warning", "max_steps", f"Task {task.task_id} hit max_steps",
                               "The task stopped at its step limit.", []))
    return out


def _unreported(session: TelemetrySession) -> List[Finding]:
    missing: Dict[str, List[Tuple[int, Any]]] = defaultdict(list)
    for index, task in enumerate(session.tasks):
        for call in task.llm_calls:
            if not call.tokens_reported:
                missing[call.model].append((index, call))
    return [Finding("warning", "usage_unreported",
                    f"{_plural(len(calls), 'call')} to {model} reported no token usage",
                    f"Their tokens are unknown, not zero, and are not in the totals: {_named([c for _i, c in calls])}.",
                    calls) for model, calls in missing.items()]


def _context_growth(session: TelemetrySession) -> List[Finding]:
    out = []
    for index, task in enumerate(session.tasks):
        by_run: Dict[Any, list] = defaultdict(list)
        for step in task.steps:
            if step.prompt_tokens > 0:
                by_run[step.agent_id or step.agent_name].append(step)
        for steps in by_run.values():
            if len(steps) < 3:
                continue
            steps.sort(key=lambda s: s.start_time)
            first, last = steps[0], steps[-1]
            if last.prompt_tokens < first.prompt_tokens * GROWTH_RATIO or \
                    last.prompt_tokens - first.prompt_tokens < GROWTH_TOKENS:
                continue
            jump = max(zip(steps, steps[1:], strict=False), key=lambda pair: pair[1].prompt_tokens - pair[0].prompt_tokens)
            out.append(Finding(
                "warning", "context_growth",
                f"Input tokens grew {last.prompt_tokens / first.prompt_tokens:.1f}x in {first.agent_name}",
                f"From {first.prompt_tokens:,} at {_where(first)} to {last.prompt_tokens:,} at {_where(last)} over "
                f"{_plural(len(steps), 'step')}; the largest jump, "
                f"+{jump[1].prompt_tokens - jump[0].prompt_tokens:,}, came at {_where(jump[1])}.",
                [(index, first), (index, jump[1]), (index, last)]))
    return out


def _dominant_model(session: TelemetrySession) -> List[Finding]:
    cost: Dict[str, float] = defaultdict(float)
    time: Dict[str, float] = defaultdict(float)
    calls: Dict[str, List[Tuple[int, Any]]] = defaultdict(list)
    for index, task in enumerate(session.tasks):
        for call in task.llm_calls:
            cost[call.model] += call.cost_estimate or 0.0
            time[call.model] += call.duration or 0.0
            calls[call.model].append((index, call))
    out = []
    for what, figures in (("cost", cost), ("model time", time)):
        whole = sum(figures.values())
        if len(figures) < 2 or whole <= 0:
            continue
        model, part = max(figures.items(), key=lambda item: item[1])
        if part / whole >= DOMINANT_SHARE:
            out.append(Finding("info", "dominant_model", f"{model} takes {part / whole:.0%} of the {what}",
                               f"{_plural(len(calls[model]), 'call')} to {model} out of "
                               f"{sum(len(c) for c in calls.values())} model calls over {len(figures)} models.",
                               calls[model]))
    return out


def _dominant_step(session: TelemetrySession) -> List[Finding]:
    out = []
    for index, task in enumerate(session.tasks):
        if not task.duration or len(task.steps) < 3:
            continue
        # Only the steps of top-level runs: a managed agent's steps run inside its parent's step.
        top = {a.agent_id for a in task.agents if a.parent_agent_id is None}
        timed = [(s.duration, s) for s in task.steps if s.duration is not None and s.agent_id in top]
        if not timed:
            continue
        duration, step = max(timed, key=lambda pair: pair[0])
        share = duration / task.duration
        if share >= DOMINANT_STEP_SHARE:
            out.append(Finding("info", "dominant_step",
                               f"One step takes {share:.0%} of task {task.task_id}",
                               f"{step.step_type} step at {_where(step)} ran {format_duration(step.duration)} of "
                               f"the task's {format_duration(task.duration)}.", [(index, step)]))
    return out


def _dropped(session: TelemetrySession) -> List[Finding]:
    out = []
    for task in session.tasks:
        if task.dropped_records:
            counts = ", ".join(f"{n:,} {kind}" for kind, n in task.dropped_records.items())
            out.append(Finding("info", "dropped_records", f"Task {task.task_id} kept only part of its records",
                               f"Over the per-task caps, not kept: {counts}. Token totals still count them.", []))
    return out
