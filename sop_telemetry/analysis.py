"""Reading stored sessions: filters across session files, and token, performance and cross-session reports.

Usage::

    from sop_telemetry.analysis import load_sessions, analyze_token_usage, analyze_performance, summarize_sessions
    for session in load_sessions(since="7d", model="gpt-4o"):      # one file at a time, oldest first
        print(analyze_token_usage(session))                          # every result renders as text
        print(analyze_performance(session).slowest_steps)
    report = summarize_sessions(load_sessions(since="2026-01-01", until="2026-02-01"))
    print(report.agents["ToolCallingAgent"].success_rate, report.model_dump_json())

Works on stored files only, without any agent framework. Results are pydantic models: `render()` (or `str()`) gives
the text, `tables()` the same figures as rows (the CLI draws them with rich), `model_dump_json()` the machine form.
Costs are those written into the records (see `pricing`); a sum over calls some of which have no known price is a
lower bound, and says so (`unpriced_calls`).
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from pydantic import AwareDatetime, BaseModel, Field, computed_field

from .models import LLMCall, TaskExecution, TelemetrySession, TokenUsage
from .status import CallStatus, TaskStatus
from .storage import SessionLoadError, TelemetryDataStore

logger = logging.getLogger("sop_telemetry")

TimeLike = Union[datetime, date, str, float, int]

_MTIME_MARGIN = 5.0
_NO_AGENT = "(no agent)"
_DROPPED = "(dropped records)"


# -- loading -------------------------------------------------------------------------------------------------------
def load_sessions(
    since: Optional[TimeLike] = None,
    until: Optional[TimeLike] = None,
    agent: Optional[str] = None,
    model: Optional[str] = None,
    tool: Optional[str] = None,
    status: Optional[Union[str, TaskStatus]] = None,
    directory: Optional[Union[str, Path]] = None,
    on_error: Optional[Callable[[str, str], None]] = None,
) -> Iterator[TelemetrySession]:
    """Stored sessions, oldest first, read one file at a time.

    With a filter, each session comes back holding only its matching tasks, and a session with none is skipped:
    tasks that overlap [since, until) (since inclusive, until exclusive), that ran an agent with this name or type,
    called this model, called this tool, or ended with this status. Filters combine with AND. With no filter,
    sessions come back exactly as stored.

    `since` / `until`: datetimes (naive = local time), ISO strings ("2026-01-31", "2026-01-31T12:00Z"), or relative
    ("7d", "24h", "30m", "2w" ago). `directory`: the storage directory (default: the configured one).
    A file that cannot be read is skipped and reported to `on_error(session_id, message)` (default: a warning on
    the `sop_telemetry` logger).
    """
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    wanted_status = TaskStatus(status).value if status is not None else None
    store = TelemetryDataStore(Path(directory) if directory is not None else default_directory())
    filtered = any(v is not None for v in (start, end, agent, model, tool, wanted_status))
    report = on_error or _log_skipped
    for session_id, _path, _size, mtime in store.session_files():
        # Cheap checks before reading: ids carry the session's start, and a file last written before `since`
        # cannot hold anything after it. File times come from a coarse clock (a kernel tick; 2 s on FAT) and can
        # read earlier than the records written into the file, hence the margin.
        if end is not None and _id_time(session_id) >= end:
            continue
        if start is not None and mtime < start.timestamp() - _MTIME_MARGIN:
            continue
        try:
            session = store.load(session_id)
        except KeyError:
            continue  # removed, or replaced by a link, since it was listed
        except (SessionLoadError, OSError) as exc:
            report(session_id, str(exc))
            continue
        if not filtered:
            yield session
            continue
        kept = [
            task for task in session.tasks
            if _task_matches(task, start, end, agent, model, tool, wanted_status)
        ]
        if not kept:
            continue
        yield session if len(kept) == len(session.tasks) else session.model_copy(update={"tasks": kept})


def default_directory() -> Path:
    """Where sessions are read from when no directory is given: this process's configured storage directory if
    the manager has been set up, else SOP_TELEMETRY_DIR or the platform default."""
    # Looked up without importing the manager: analysis must not start recording machinery on its own.
    manager_module = sys.modules.get("sop_telemetry.manager")
    instance = getattr(getattr(manager_module, "TelemetryManager", None), "_instance", None)
    store = getattr(instance, "_store", None)
    if store is not None:
        return Path(store.directory)
    from .config import build_config

    return build_config().resolved_storage_dir()


def _log_skipped(session_id: str, message: str) -> None:
    logger.warning("sop_telemetry: skipping %s", message)


def _task_matches(task: TaskExecution, start: Optional[datetime], end: Optional[datetime], agent: Optional[str],
                  model: Optional[str], tool: Optional[str], status: Optional[str]) -> bool:
    if start is not None and (task.end_time or task.start_time) < start:
        return False
    if end is not None and task.start_time >= end:
        return False
    if status is not None and TaskStatus(task.status).value != status:
        return False
    if agent is not None and not any(agent in (a.agent_name, a.agent_type) for a in task.agents):
        return False
    if model is not None and not (any(c.model == model for c in task.llm_calls)
                                  or any(a.model == model for a in task.agents)):
        return False
    if tool is not None and not any(t.tool_name == tool for t in task.tools):
        return False
    return True


def _id_time(session_id: str) -> datetime:
    return datetime.strptime(session_id[:22], "%Y%m%dT%H%M%S_%f").replace(tzinfo=timezone.utc)


_RELATIVE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*\Z", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_time(value: TimeLike, now: Optional[datetime] = None) -> datetime:
    """A timezone-aware datetime from a datetime, date, epoch seconds, ISO text, or a relative "7d"/"24h"/"30m"/"2w"
    (that long before `now`). Naive times and bare dates are local time; raises ValueError for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.astimezone()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).astimezone()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        match = _RELATIVE.match(text)
        if match is not None:
            now = now or datetime.now(timezone.utc)
            return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
        if text.lower() in ("now", "today"):
            now = now or datetime.now(timezone.utc)
            return now if text.lower() == "now" else now.astimezone().replace(hour=0, minute=0, second=0,
                                                                              microsecond=0)
        try:
            # Python 3.10's fromisoformat does not take a trailing "Z".
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.astimezone()
    raise ValueError(
        f"not a time: {value!r} (use an ISO date or time such as 2026-01-31 or 2026-01-31T12:00, "
        "or a relative time such as 7d, 24h, 30m)"
    )


# -- result building blocks ----------------------------------------------------------------------------------------
@dataclass
class Table:
    """Rows of text cells under a title; `columns` are (name, align) with align "<" or ">". Columns None: a
    key/value block."""

    title: str
    columns: Optional[List[Tuple[str, str]]]
    rows: List[List[str]] = field(default_factory=list)


class _Result(BaseModel):
    def tables(self) -> List[Table]:
        """The figures as titled rows of text cells (what the CLI draws)."""
        raise NotImplementedError

    def render(self) -> str:
        """The figures as plain-text tables; `str(result)` gives the same."""
        return render_tables(self.tables())

    def __str__(self) -> str:
        return self.render()


class TokenFigures(_Result):
    """Token and cost totals over a set of model calls."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Calls whose reply carried no usage: their tokens are unknown and not in the sums.
    unreported_calls: int = 0
    # Dollars over the calls with a known price; None when no call had one.
    cost: Optional[float] = None
    # Calls with tokens but no known price: when > 0, `cost` is a lower bound.
    unpriced_calls: int = 0

    # add_call runs once per model call per grouping (hundreds of thousands of times over many sessions), and a
    # pydantic __setattr__ validates each time: the sums go straight into the instance dict (all fields have
    # defaults, so nothing reads model_fields_set here).
    def add_call(self, call: LLMCall) -> None:
        """Adds one model call's tokens and cost."""
        d = self.__dict__
        d["calls"] += 1
        if not call.tokens_reported:
            d["unreported_calls"] += 1
            return
        prompt = call.prompt_tokens or 0
        completion = call.completion_tokens or 0
        d["prompt_tokens"] += prompt
        d["completion_tokens"] += completion
        d["total_tokens"] += call.total_tokens if call.total_tokens is not None else prompt + completion
        if call.cost_estimate is None:
            d["unpriced_calls"] += 1
        else:
            d["cost"] = (d["cost"] or 0.0) + call.cost_estimate

    def add_usage(self, usage: TokenUsage) -> None:
        """Adds an aggregate with no per-call records (a task's dropped records)."""
        d = self.__dict__
        d["prompt_tokens"] += usage.prompt_tokens
        d["completion_tokens"] += usage.completion_tokens
        d["total_tokens"] += usage.total_tokens
        d["unreported_calls"] += usage.unreported_calls
        if usage.cost_estimate is not None:
            d["cost"] = (d["cost"] or 0.0) + usage.cost_estimate

    def merge(self, other: "TokenFigures") -> None:
        """Adds `other`'s figures into these."""
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.unreported_calls += other.unreported_calls
        self.unpriced_calls += other.unpriced_calls
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost

    def cells(self) -> List[str]:
        """The figures as table cells: calls, prompt, completion, total, cost."""
        return [str(self.calls), _int(self.prompt_tokens), _int(self.completion_tokens), _int(self.total_tokens),
                format_cost(self.cost, self.unpriced_calls)]

    def tables(self) -> List[Table]:
        return [Table("Tokens", _TOKEN_COLUMNS, [self.cells()])]


_TOKEN_COLUMNS = [("calls", ">"), ("prompt", ">"), ("completion", ">"), ("total", ">"), ("cost", ">")]


class DurationStats(_Result):
    """Durations (seconds) of a set of records: count, sum, mean, p50, p95 (linear interpolation), max; `errors`
    counts the records that failed."""

    count: int = 0
    total: float = 0.0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    errors: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_rate(self) -> Optional[float]:
        """Failed records / all records; None when there are none."""
        return self.errors / self.count if self.count else None

    @classmethod
    def of(cls, durations: Iterable[float], errors: int = 0) -> "DurationStats":
        """The statistics of `durations` (seconds), with `errors` failures among them."""
        values = sorted(d for d in durations)
        if not values:
            return cls(errors=errors)
        total = math.fsum(values)
        return cls(count=len(values), total=total, mean=total / len(values), p50=_percentile(values, 0.5),
                   p95=_percentile(values, 0.95), max=values[-1], errors=errors)

    def cells(self) -> List[str]:
        """The figures as table cells: count, total, mean, p50, p95, max, errors."""
        return [str(self.count), format_duration(self.total), format_duration(self.mean), format_duration(self.p50),
                format_duration(self.p95), format_duration(self.max), str(self.errors)]

    def tables(self) -> List[Table]:
        return [Table("Durations", _DURATION_COLUMNS, [self.cells()])]


_DURATION_COLUMNS = [("count", ">"), ("total", ">"), ("mean", ">"), ("p50", ">"), ("p95", ">"), ("max", ">"),
                     ("errors", ">")]


def _percentile(values: Sequence[float], q: float) -> float:
    position = (len(values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


# -- token usage ---------------------------------------------------------------------------------------------------
class TokenReport(_Result):
    """What `analyze_token_usage(session)` returns: `total`, and `by_model`, `by_agent`, `by_task` (each a dict of
    `TokenFigures`: calls, prompt/completion/total tokens, cost, unreported and unpriced calls)."""

    session_id: str
    total: TokenFigures
    by_model: Dict[str, TokenFigures]
    # Keyed by agent name; calls made outside any agent run are under "(no agent)".
    by_agent: Dict[str, TokenFigures]
    by_task: Dict[str, TokenFigures]

    def tables(self) -> List[Table]:
        tables = [Table(f"Tokens of session {self.session_id}", None, [
            ["model calls", str(self.total.calls)],
            ["prompt tokens", _int(self.total.prompt_tokens)],
            ["completion tokens", _int(self.total.completion_tokens)],
            ["total tokens", _int(self.total.total_tokens)],
            ["estimated cost", format_cost(self.total.cost, self.total.unpriced_calls)],
        ])]
        if self.total.unreported_calls:
            tables[0].rows.insert(4, ["calls without usage", str(self.total.unreported_calls)])
        for title, key, data in (("Tokens per model", "model", self.by_model),
                                 ("Tokens per agent", "agent", self.by_agent),
                                 ("Tokens per task", "task", self.by_task)):
            tables.append(Table(title, [(key, "<"), *_TOKEN_COLUMNS],
                                [[name, *figures.cells()] for name, figures in data.items()]))
        return tables


def analyze_token_usage(session: TelemetrySession) -> TokenReport:
    """Tokens and cost of a session: in total, per model, per agent (by name) and per task."""
    total = TokenFigures()
    by_model: Dict[str, TokenFigures] = defaultdict(TokenFigures)
    by_agent: Dict[str, TokenFigures] = defaultdict(TokenFigures)
    by_task: Dict[str, TokenFigures] = {}
    for task in session.tasks:
        names = {a.agent_id: a.agent_name for a in task.agents}
        per_task = by_task[task.task_id] = TokenFigures()
        for call in task.llm_calls:
            agent_name = names.get(call.agent_id or "") or call.agent_name or _NO_AGENT
            for figures in (total, by_model[call.model], by_agent[agent_name], per_task):
                figures.add_call(call)
        dropped = task.dropped_token_usage
        if dropped is not None:
            for figures in (total, by_agent[_DROPPED], per_task):
                figures.add_usage(dropped)
            for model_name, usage in dropped.model_breakdown.items():
                by_model[model_name].add_usage(usage)
    return TokenReport(session_id=session.session_id, total=total, by_model=dict(by_model),
                       by_agent=dict(by_agent), by_task=by_task)


# -- performance ---------------------------------------------------------------------------------------------------
class TimeSplit(_Result):
    """Where wall-clock time went: in model calls, in tools (outside model calls), and the rest (the agent's own
    work: prompting, parsing, memory, code execution between tool calls). Overlapping records (parallel tool calls)
    are counted once, so the three parts add up to `wall`."""

    wall: float = 0.0
    model: float = 0.0
    tools: float = 0.0
    overhead: float = 0.0

    def add(self, other: "TimeSplit") -> None:
        """Adds `other`'s times into these."""
        self.wall += other.wall
        self.model += other.model
        self.tools += other.tools
        self.overhead += other.overhead

    def cells(self) -> List[str]:
        """The split as table cells: wall time, then each part with its share of it."""
        return [format_duration(self.wall), _share(self.model, self.wall), _share(self.tools, self.wall),
                _share(self.overhead, self.wall)]

    def tables(self) -> List[Table]:
        return [Table("Time split", _SPLIT_COLUMNS, [self.cells()])]


# "agent's own work", never "overhead": users read that as the telemetry's cost.
_SPLIT_COLUMNS = [("wall", ">"), ("in model calls", ">"), ("in tools", ">"), ("agent's own work", ">")]


class TaskTiming(_Result):
    """One task in a `PerformanceReport`: status, duration, its `TimeSplit`, and counts of steps and calls."""

    task_id: str
    status: str
    duration: Optional[float]
    split: TimeSplit
    steps: int
    llm_calls: int
    tool_calls: int

    def tables(self) -> List[Table]:
        return [Table(f"Task {self.task_id}", None, [["status", self.status],
                                                    ["duration", format_duration(self.duration)]])]


class StepTiming(_Result):
    """One step in a `PerformanceReport`'s `slowest_steps`: where it ran, its type, duration and error type."""

    task_id: str
    agent_name: Optional[str]
    step_number: Optional[int]
    step_type: str
    duration: float
    error_type: Optional[str] = None

    def tables(self) -> List[Table]:
        return [Table("Step", None, [["step", f"{self.step_type} {self.step_number}"],
                                     ["duration", format_duration(self.duration)]])]


class PerformanceReport(_Result):
    """What `analyze_performance(session)` returns: `DurationStats` per agent, tool and model, a `TaskTiming` per
    task, the session's `TimeSplit`, and the slowest steps."""

    session_id: str
    total_duration: float
    split: TimeSplit
    tasks: List[TaskTiming]
    # Keyed by agent name (runs), tool name (calls) and model (calls).
    agents: Dict[str, DurationStats]
    tools: Dict[str, DurationStats]
    models: Dict[str, DurationStats]
    slowest_steps: List[StepTiming]

    def tables(self) -> List[Table]:
        tables = [Table(f"Performance of session {self.session_id}", None, [
            ["session duration", f"{format_duration(self.total_duration)} (from telemetry's start in the process to "
                                 "the end of its last task)"],
            ["in tasks", format_duration(self.split.wall)],
            ["  model calls", _share(self.split.model, self.split.wall)],
            ["  tools", _share(self.split.tools, self.split.wall)],
            ["  agent's own work", _share(self.split.overhead, self.split.wall)],
        ])]
        tables.append(Table("Tasks", [("task", "<"), ("status", "<"), *_SPLIT_COLUMNS, ("steps", ">"),
                                      ("model calls", ">"), ("tool calls", ">")],
                            [[t.task_id, t.status, *t.split.cells(), str(t.steps), str(t.llm_calls),
                              str(t.tool_calls)] for t in self.tasks]))
        for title, key, data in (("Agent runs", "agent", self.agents), ("Tool calls", "tool", self.tools),
                                 ("Model calls", "model", self.models)):
            tables.append(Table(title, [(key, "<"), *_DURATION_COLUMNS],
                                [[name, *stats.cells()] for name, stats in data.items()]))
        tables.append(Table("Slowest steps", [("task", "<"), ("agent", "<"), ("step", ">"), ("type", "<"),
                                              ("duration", ">"), ("error", "<")],
                            [[s.task_id, s.agent_name or "", "" if s.step_number is None else str(s.step_number),
                              s.step_type, format_duration(s.duration), s.error_type or ""]
                             for s in self.slowest_steps]))
        return tables


def _tally(records: Iterable[Any], key: str, failed: Any, times: Dict[str, List[float]],
           errors: Dict[str, int]) -> None:
    """Durations and failures of `records`, grouped by their `key` field."""
    for record in records:
        name = getattr(record, key)
        if record.duration is not None:
            times[name].append(record.duration)
        if record.status == failed:
            errors[name] += 1


def analyze_performance(session: TelemetrySession, slowest: int = 5) -> PerformanceReport:
    """Durations per task, agent, tool and model (count, mean, p50, p95, max, errors), the `slowest` steps, and
    the split of task time between model calls, tools and the agents' own work."""
    agent_times: Dict[str, List[float]] = defaultdict(list)
    agent_errors: Dict[str, int] = defaultdict(int)
    tool_times: Dict[str, List[float]] = defaultdict(list)
    tool_errors: Dict[str, int] = defaultdict(int)
    model_times: Dict[str, List[float]] = defaultdict(list)
    model_errors: Dict[str, int] = defaultdict(int)
    steps: List[StepTiming] = []
    timings: List[TaskTiming] = []
    split = TimeSplit()
    for task in session.tasks:
        _tally(task.agents, "agent_name", TaskStatus.FAILED, agent_times, agent_errors)
        _tally(task.tools, "tool_name", CallStatus.ERROR, tool_times, tool_errors)
        _tally(task.llm_calls, "model", CallStatus.ERROR, model_times, model_errors)
        for step in task.steps:
            if step.duration is not None:
                steps.append(StepTiming(task_id=task.task_id, agent_name=step.agent_name,
                                        step_number=step.step_number, step_type=step.step_type,
                                        duration=step.duration, error_type=step.error_type))
        task_split = task_time_split(task)
        split.add(task_split)
        timings.append(TaskTiming(task_id=task.task_id, status=TaskStatus(task.status).value,
                                  duration=task.duration, split=task_split, steps=len(task.steps),
                                  llm_calls=len(task.llm_calls), tool_calls=len(task.tools)))
    steps.sort(key=lambda s: s.duration, reverse=True)
    return PerformanceReport(
        session_id=session.session_id,
        total_duration=session.total_duration,
        split=split,
        tasks=timings,
        agents={name: DurationStats.of(v, agent_errors[name]) for name, v in agent_times.items()},
        tools={name: DurationStats.of(v, tool_errors[name]) for name, v in tool_times.items()},
        models={name: DurationStats.of(v, model_errors[name]) for name, v in model_times.items()},
        slowest_steps=steps[:slowest],
    )


def task_time_split(task: TaskExecution) -> TimeSplit:
    """The task's wall time split into model calls, tools and the agent's own work (overlaps counted once)."""
    if task.duration is None:
        return TimeSplit()
    origin = task.start_time
    model = _union([_interval(c.start_time, c.duration, origin, task.duration) for c in task.llm_calls])
    tools = _union([_interval(t.start_time, t.duration, origin, task.duration) for t in task.tools])
    busy = _union(model + tools)
    model_time = _length(model)
    busy_time = _length(busy)
    return TimeSplit(wall=task.duration, model=model_time, tools=busy_time - model_time,
                     overhead=max(0.0, task.duration - busy_time))


def _interval(start: datetime, duration: Optional[float], origin: datetime,
              length: float) -> Optional[Tuple[float, float]]:
    """The record's span in seconds from the task's start, clipped to the task. Offsets, not epoch floats: at
    epoch magnitude a double keeps only ~0.2 us, which would blur sub-millisecond calls."""
    if duration is None:
        return None
    offset = (start - origin).total_seconds()
    begin = max(0.0, offset)
    end = min(length, offset + duration)
    return (begin, end) if end > begin else None


def _union(intervals: Iterable[Optional[Tuple[float, float]]]) -> List[Tuple[float, float]]:
    merged: List[Tuple[float, float]] = []
    for begin, end in sorted(i for i in intervals if i is not None):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _length(intervals: Iterable[Tuple[float, float]]) -> float:
    return math.fsum(end - begin for begin, end in intervals)


# -- across sessions -----------------------------------------------------------------------------------------------
class DayFigures(TokenFigures):
    """Tokens and cost of the model calls made on one (local) day, and the tasks started that day."""

    tasks: int = 0
    failed_tasks: int = 0


class AgentFigures(_Result):
    """One agent (by name) across sessions in a `SessionsSummary`: runs, failures, success rate, mean duration,
    tokens per run and cost."""

    runs: int = 0
    completed: int = 0
    failed: int = 0
    # completed / finished runs; None when no run has finished.
    success_rate: Optional[float] = None
    mean_duration: Optional[float] = None
    total_tokens: int = 0
    tokens_per_run: Optional[float] = None
    cost: Optional[float] = None
    # Calls with tokens but no known price: when > 0, `cost` is a lower bound.
    unpriced_calls: int = 0

    def tables(self) -> List[Table]:
        return [Table("Agent", None, [["runs", str(self.runs)], ["success rate", _rate(self.success_rate)]])]


class SessionsSummary(_Result):
    """What `summarize_sessions(...)` returns: counts of sessions and tasks, the period, token and cost totals, and
    figures `by_day`, `by_model`, per tool (`tools`: durations and failures) and per agent (`agents`)."""

    # Session files read; `series`: the processes they came from (a long-lived process writes a series of parts).
    sessions: int = 0
    series: int = 0
    tasks: int = 0
    failed_tasks: int = 0
    # pydantic's AwareDatetime, not `datetime`: a name freezegun may have swapped for its FakeDatetime by import time.
    first_start: Optional[AwareDatetime] = None
    last_end: Optional[AwareDatetime] = None
    total: TokenFigures = Field(default_factory=TokenFigures)
    # Keyed "YYYY-MM-DD" (local time), oldest first.
    by_day: Dict[str, DayFigures] = Field(default_factory=dict)
    by_model: Dict[str, TokenFigures] = Field(default_factory=dict)
    # Keyed by tool name: durations, and `errors` / `error_rate` as the failure rate.
    tools: Dict[str, DurationStats] = Field(default_factory=dict)
    # Keyed by agent name.
    agents: Dict[str, AgentFigures] = Field(default_factory=dict)

    def tables(self) -> List[Table]:
        span = "-"
        if self.first_start is not None:
            span = f"{_local(self.first_start)} .. {_local(self.last_end or self.first_start)}"
        tables = [Table("Summary", None, [
            ["sessions", str(self.sessions) if self.series == self.sessions
             else f"{self.sessions} ({self.series} series)"],
            ["period", span],
            ["tasks", f"{self.tasks} ({self.failed_tasks} failed)"],
            ["model calls", str(self.total.calls)],
            ["total tokens", _int(self.total.total_tokens)],
            ["estimated cost", format_cost(self.total.cost, self.total.unpriced_calls)],
        ])]
        tables.append(Table("Per day", [("day", "<"), ("tasks", ">"), ("failed", ">"), *_TOKEN_COLUMNS],
                            [[day, str(f.tasks), str(f.failed_tasks), *f.cells()] for day, f in self.by_day.items()]))
        tables.append(Table("Per model", [("model", "<"), *_TOKEN_COLUMNS],
                            [[name, *f.cells()] for name, f in self.by_model.items()]))
        tables.append(Table("Tools", [("tool", "<"), ("calls", ">"), ("failed", ">"), ("failure rate", ">"),
                                      ("mean", ">"), ("p95", ">")],
                            [[name, str(s.count), str(s.errors), _rate(s.error_rate), format_duration(s.mean),
                              format_duration(s.p95)] for name, s in self.tools.items()]))
        tables.append(Table("Agents", [("agent", "<"), ("runs", ">"), ("failed", ">"), ("success rate", ">"),
                                       ("mean duration", ">"), ("tokens/run", ">"), ("cost", ">")],
                            [[name, str(a.runs), str(a.failed), _rate(a.success_rate),
                              format_duration(a.mean_duration),
                              "-" if a.tokens_per_run is None else _int(round(a.tokens_per_run)),
                              format_cost(a.cost, a.unpriced_calls)] for name, a in self.agents.items()]))
        return tables


def summarize_sessions(sessions: Iterable[TelemetrySession]) -> SessionsSummary:
    """Figures across sessions (pass `load_sessions(...)`; they are read one at a time): tokens and cost per day
    and per model, tool failure rates, and per-agent runs, success rate, mean duration and tokens per run."""
    summary = SessionsSummary()
    by_day: Dict[str, DayFigures] = defaultdict(DayFigures)
    by_model: Dict[str, TokenFigures] = defaultdict(TokenFigures)
    tool_times: Dict[str, List[float]] = defaultdict(list)
    tool_errors: Dict[str, int] = defaultdict(int)
    agents: Dict[str, AgentFigures] = defaultdict(AgentFigures)
    agent_times: Dict[str, List[float]] = defaultdict(list)
    series = set()
    for session in sessions:
        summary.sessions += 1
        series.add(session.series_id or session.session_id)
        summary.series = len(series)
        end = session.end_time or session.start_time + timedelta(seconds=session.total_duration)
        if summary.first_start is None or session.start_time < summary.first_start:
            summary.first_start = session.start_time
        if summary.last_end is None or end > summary.last_end:
            summary.last_end = end
        for task in session.tasks:
            failed = TaskStatus(task.status) is TaskStatus.FAILED
            summary.tasks += 1
            summary.failed_tasks += failed
            day = by_day[_day(task.start_time)]
            day.tasks += 1
            day.failed_tasks += failed
            names = {a.agent_id: a.agent_name for a in task.agents}
            for call in task.llm_calls:
                for figures in (summary.total, by_day[_day(call.start_time)], by_model[call.model]):
                    figures.add_call(call)
                name = names.get(call.agent_id or "") or call.agent_name
                if name is not None and call.tokens_reported:
                    of_agent = agents[name]
                    of_agent.total_tokens += call.total_tokens or 0
                    if call.cost_estimate is not None:
                        of_agent.cost = (of_agent.cost or 0.0) + call.cost_estimate
                    else:
                        of_agent.unpriced_calls += 1
            if task.dropped_token_usage is not None:
                summary.total.add_usage(task.dropped_token_usage)
                by_day[_day(task.start_time)].add_usage(task.dropped_token_usage)
                for model_name, usage in task.dropped_token_usage.model_breakdown.items():
                    by_model[model_name].add_usage(usage)
            for tool in task.tools:
                if tool.duration is not None:
                    tool_times[tool.tool_name].append(tool.duration)
                tool_errors[tool.tool_name] += CallStatus(tool.status) is CallStatus.ERROR
            for agent in task.agents:
                of_agent = agents[agent.agent_name]
                of_agent.runs += 1
                agent_status = TaskStatus(agent.status)
                of_agent.completed += agent_status is TaskStatus.COMPLETED
                of_agent.failed += agent_status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
                if agent.duration is not None:
                    agent_times[agent.agent_name].append(agent.duration)
    for name, of_agent in agents.items():
        finished = of_agent.completed + of_agent.failed
        of_agent.success_rate = of_agent.completed / finished if finished else None
        times = agent_times.get(name)
        of_agent.mean_duration = math.fsum(times) / len(times) if times else None
        of_agent.tokens_per_run = of_agent.total_tokens / of_agent.runs if of_agent.runs else None
    summary.by_day = dict(sorted(by_day.items()))
    summary.by_model = dict(by_model)
    summary.tools = {name: DurationStats.of(tool_times.get(name, ()), tool_errors[name]) for name in tool_errors}
    summary.agents = {name: figures for name, figures in agents.items() if figures.runs}
    return summary


def _day(moment: datetime) -> str:
    return moment.astimezone().date().isoformat()


# -- text ----------------------------------------------------------------------------------------------------------
def render_tables(tables: Iterable[Table]) -> str:
    """Plain text: each table under its title, columns padded; key/value blocks as aligned pairs."""
    blocks = []
    for table in tables:
        lines = [table.title]
        if table.columns is None:
            width = max((len(k) for k, _ in table.rows), default=0)
            lines += [f"  {k.ljust(width)}  {v}" for k, v in table.rows]
        elif not table.rows:
            lines.append("  (none)")
        else:
            names = [name for name, _ in table.columns]
            widths = [max(len(str(c)) for c in column) for column in zip(names, *table.rows, strict=True)]
            for row in [names, *table.rows]:
                cells = [cell.rjust(w) if align == ">" else cell.ljust(w)
                         for cell, w, (_, align) in zip(row, widths, table.columns, strict=True)]
                lines.append("  " + "  ".join(cells).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_duration(seconds: Optional[float]) -> str:
    """Seconds as the CLI shows them: "15 us", "2.4 ms", "3.10 s", "2m05.0s", "1h03m"; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_cost(cost: Optional[float], unpriced_calls: int = 0) -> str:
    """Dollars; "-" when unknown; ">=" when some calls had no known price (the sum is a lower bound)."""
    if cost is None:
        return "-"
    text = f"${cost:.6f}" if cost < 0.01 else f"${cost:.4f}" if cost < 100 else f"${cost:,.2f}"
    return f">={text}" if unpriced_calls else text


def _int(value: int) -> str:
    return f"{value:,}"


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _share(part: float, whole: float) -> str:
    if not whole:
        return format_duration(part)
    return f"{format_duration(part)} ({part / whole * 100:.0f}%)"


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
