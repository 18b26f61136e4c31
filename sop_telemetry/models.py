"""The session data model: what one session file holds.

Usage::

    from sop_telemetry import TelemetrySession
    session = TelemetrySession.from_json(path.read_text())
    print(session.total_tokens.total_tokens, session.total_duration)
    path.write_text(session.to_json())

This module imports nothing of ours. Totals (`total_tokens`, `total_duration`, a task's `token_usage`) are computed
from the records every time they are read, so they cannot drift from them; they are written into the file for
readers such as `jq`, and ignored (recomputed) when a file is loaded back.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from .status import CallStatus, TaskStatus

# 2: each AgentExecution names its `framework`; EnvironmentInfo lists `frameworks` (schema 1 had one field per
# framework, `<name>_version`, read into `frameworks` when a file of schema 1 is loaded).
SCHEMA_VERSION = 2


class _Model(BaseModel):
    # Unknown keys are ignored so that a newer minor writer does not make old readers fail; the computed totals
    # written into files come back through this door too.
    model_config = ConfigDict(extra="ignore", use_enum_values=False, validate_default=False)


class TokenUsage(_Model):
    """Tokens and estimated cost, summed over model calls: a task's `token_usage`, a session's `total_tokens`.

    `model_breakdown` holds the same figures per model id. `cost_estimate` is in dollars, None when no call had a
    known price. Calls whose reply carried no usage are counted in `unreported_calls`, not as zero tokens.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_breakdown: Dict[str, "TokenUsage"] = Field(default_factory=dict)
    cost_estimate: Optional[float] = None
    # Calls whose reply carried no usage: their tokens are unknown, not zero, and are not in the sums above.
    unreported_calls: int = 0

    def add(self, other: "TokenUsage") -> None:
        """Adds `other` into this usage (used when summing records; never stored back into a record)."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.unreported_calls += other.unreported_calls
        if other.cost_estimate is not None:
            self.cost_estimate = (self.cost_estimate or 0.0) + other.cost_estimate
        for model, usage in other.model_breakdown.items():
            mine = self.model_breakdown.get(model)
            if mine is None:
                mine = self.model_breakdown[model] = TokenUsage()
            mine.add(usage)


class _Timed(_Model):
    start_time: AwareDatetime
    end_time: Optional[AwareDatetime] = None
    duration: Optional[float] = None


class _Attributed(_Timed):
    """A record made on behalf of one agent run: names the agent, and its run id so nested agents stay apart."""

    agent_name: Optional[str] = None
    agent_id: Optional[str] = None
    step_number: Optional[int] = None


class LLMCall(_Attributed):
    """One model call (`generate` or `generate_stream`): tokens as the model reported them, duration, outcome.

    `tokens_reported` is False when the reply carried no usage; the token fields are then None (unknown, not zero).
    `agent_name`, `agent_id` and `step_number` place it in its agent run; `cost_estimate` is in dollars.
    """

    call_id: str = ""
    model: str
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    total_tokens: Optional[int] = None
    tokens_reported: bool = True
    status: CallStatus = CallStatus.SUCCESS
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    # Of prompt_tokens, read from a cache; of completion_tokens, spent reasoning. None when not reported.
    cached_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None
    streamed: bool = False
    # Why the call was made, an open vocabulary: the type of the step it was made in ("action", "planning",
    # "final_answer" (the answer asked for after max_steps), "node", ...) unless the integration names one
    # ("retry", ...); None when unknown.
    purpose: Optional[str] = None
    cost_estimate: Optional[float] = None
    # Only with capture_content=True.
    input_preview: Optional[str] = None
    output_preview: Optional[str] = None


class ToolExecution(_Attributed):
    """One tool call: which tool, in which agent run and step, how long it took, and how it ended."""

    call_id: str = ""
    tool_name: str
    status: CallStatus = CallStatus.SUCCESS
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    # The tool asked the model to try again (pydantic-ai's ModelRetry).
    retry_requested: bool = False
    # The tool's error was handed back to the model as its result rather than ending the run (LangChain's
    # ToolNode with handle_tool_errors).
    error_returned_to_model: bool = False
    # Only with capture_content=True.
    arguments_preview: Optional[str] = None
    output_preview: Optional[str] = None


class AgentExecution(_Timed):
    """One agent run, top-level or managed: `parent_agent_id` is the `agent_id` of the run that called it.

    `steps` counts its steps; `max_steps_reached` is True when it stopped at `max_steps`.
    """

    agent_id: str = ""
    agent_type: str
    agent_name: str
    # The framework the run was made with (an integration's name); None in files of schema 1, which had one.
    framework: Optional[str] = None
    parent_agent_id: Optional[str] = None
    model: Optional[str] = None
    status: TaskStatus = TaskStatus.COMPLETED
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    steps: int = 0
    max_steps_reached: bool = False


class StepExecution(_Attributed):
    """One step of an agent run, with the tokens and counts of the calls made in it. `step_type` is an open
    vocabulary: "action", "planning", "final_answer", "node", ..."""

    step_type: str = "action"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    is_final_answer: bool = False


class CodeMetrics(_Model):
    """What code-writing agents ran: snippets executed by CodeAgents and their size, and files changed if known."""

    code_actions: int = 0
    code_lines: int = 0
    files_modified: int = 0
    lines_added: int = 0
    lines_removed: int = 0


class TaskExecution(_Timed):
    """One task: a top-level agent run (or a `collector.start_task` ... `end_task` pair) and every record made in it.

    `agents`, `llm_calls`, `tools` and `steps` hold the records; `token_usage` sums the model calls (and the tokens of
    records dropped over the caps, counted in `dropped_records`). `status` is a `TaskStatus`.
    """

    task_id: str
    description: str = ""
    status: TaskStatus = TaskStatus.RUNNING
    sop_category: Optional[str] = None
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    # Why the run stopped when that is not plain: "max_steps".
    stop_reason: Optional[str] = None
    # True for the task that holds records made outside any task.
    implicit: bool = False
    agents: List[AgentExecution] = Field(default_factory=list)
    tools: List[ToolExecution] = Field(default_factory=list)
    llm_calls: List[LLMCall] = Field(default_factory=list)
    steps: List[StepExecution] = Field(default_factory=list)
    code_changes: CodeMetrics = Field(default_factory=CodeMetrics)
    # Records over the per-task caps are not kept; what was dropped is counted here, and their tokens are kept in
    # `dropped_token_usage` so that totals stay exact.
    dropped_records: Dict[str, int] = Field(default_factory=dict)
    dropped_token_usage: Optional[TokenUsage] = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def token_usage(self) -> TokenUsage:
        """Tokens and cost of this task's model calls, computed from them (and from the dropped records' tokens)."""
        return _sum_calls(self.llm_calls, self.dropped_token_usage)


class EnvironmentInfo(_Model):
    """The process a session was recorded in: OS and Python versions, the versions of the instrumented frameworks,
    directory, host, pid, and the allowlisted environment variables (credential-like names masked)."""

    os_type: str = ""
    os_version: str = ""
    python_version: str = ""
    working_directory: str = ""
    project_root: str = ""
    user_name: Optional[str] = None
    timezone: str = ""
    environment_variables: Dict[str, str] = Field(default_factory=dict)
    hostname: Optional[str] = None
    pid: Optional[int] = None
    telemetry_version: Optional[str] = None
    # The version of each framework instrumented in the session, by integration name.
    frameworks: Dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _frameworks_of_schema_1(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = {key[: -len("_version")]: value for key, value in data.items()
                   if key.endswith("_version") and key not in cls.model_fields and isinstance(value, str)}
            if old:
                data = {**data, "frameworks": {**old, **(data.get("frameworks") or {})}}
        return data


class TelemetrySession(_Model):
    """Everything one process recorded: what one session file holds.

    Usage::

        session = TelemetryManager.get_instance().get_session_data()      # this process's, live
        session = TelemetrySession.from_json(Path(path).read_text())       # a stored one
        for task in session.tasks:
            print(task.task_id, task.status.value, task.token_usage.total_tokens)
    """

    schema_version: int = SCHEMA_VERSION
    session_id: str
    # A long-lived process writes a series of parts (one file each, every task in exactly one): the series id is
    # its first part's session id, `part` counts from 1. None in files written before parts existed.
    series_id: Optional[str] = None
    part: Optional[int] = None
    start_time: AwareDatetime
    end_time: Optional[AwareDatetime] = None
    environment: EnvironmentInfo = Field(default_factory=EnvironmentInfo)
    tasks: List[TaskExecution] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is newer than this sop_telemetry understands ({SCHEMA_VERSION}); upgrade it"
            )
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> TokenUsage:
        """Tokens and cost summed over every task of the session."""
        total = TokenUsage()
        for task in self.tasks:
            total.add(task.token_usage)
        return total

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_duration(self) -> float:
        """Seconds from the session's start to its end (or to its last record while it is still open)."""
        end = self.end_time
        if end is None:
            ends = [t.end_time or t.start_time for t in self.tasks]
            end = max(ends, default=self.start_time)
        return max(0.0, (end - self.start_time).total_seconds())

    def to_json(self, indent: Optional[int] = None) -> str:
        """The session as the JSON text of a session file."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, data: str | bytes) -> "TelemetrySession":
        """A session from JSON text; raises pydantic's ValidationError when it is not one (see
        `TelemetryDataStore.load` for files)."""
        return cls.model_validate_json(data)


def _sum_calls(calls: List[LLMCall], dropped: Optional[TokenUsage]) -> TokenUsage:
    # Summed in plain lists, then made into TokenUsage once per model: `usage.x += n` on a pydantic model is a
    # validated __setattr__, and this runs for every task at every write and read. Same order of float
    # additions as adding call by call, so the costs are bit for bit the same.
    sums: list = [0, 0, 0, 0, None]  # prompt, completion, total, unreported calls, cost
    per_model: Dict[str, list] = {}
    for call in calls:
        mine = per_model.get(call.model)
        if mine is None:
            mine = per_model[call.model] = [0, 0, 0, 0, None]
        if not call.tokens_reported:
            sums[3] += 1
            mine[3] += 1
            continue
        prompt = call.prompt_tokens or 0
        completion = call.completion_tokens or 0
        tokens = call.total_tokens if call.total_tokens is not None else prompt + completion
        cost = call.cost_estimate
        for acc in (sums, mine):
            acc[0] += prompt
            acc[1] += completion
            acc[2] += tokens
            if cost is not None:
                acc[4] = (acc[4] or 0.0) + cost
    total = _usage(sums)
    total.model_breakdown = {model: _usage(acc) for model, acc in per_model.items()}
    if dropped is not None:
        total.add(dropped)
    return total


def _usage(acc: list) -> TokenUsage:
    return TokenUsage(prompt_tokens=acc[0], completion_tokens=acc[1], total_tokens=acc[2], unreported_calls=acc[3],
                      cost_estimate=acc[4])


TokenUsage.model_rebuild()
