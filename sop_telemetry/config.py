"""Configuration: the spec's keys as a validated model, with environment overrides.

Usage::

    from sop_telemetry import TelemetryManager
    TelemetryManager.get_instance().initialize({"storage_dir": "/tmp/telemetry", "max_file_age_days": 7})

Environment: ``SOP_TELEMETRY_DISABLED=1`` turns everything off, ``SOP_TELEMETRY_DIR`` sets the storage directory,
``SOP_TELEMETRY_OTLP=1`` (or ``0``) switches live OpenTelemetry export on (or off),
``SOP_TELEMETRY_INTEGRATIONS`` (``smolagents,langchain``, ``-langchain``) chooses the framework integrations, and
``SOP_TELEMETRY_MAX_TASKS_PER_SESSION`` / ``SOP_TELEMETRY_MAX_SESSION_BYTES`` set the bounds of one session file.
They win over values given in code, so an operator can always switch telemetry off or move it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Any, Dict, List, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .collector import (
    DEFAULT_MAX_RECORDS_PER_TASK,
    DEFAULT_MAX_SESSION_BYTES,
    DEFAULT_MAX_STRING_LENGTH,
    DEFAULT_MAX_TASKS_PER_SESSION,
    env_disabled,
)


class ModelPrice(BaseModel):
    """A user's own price for a model, in dollars per million tokens; wins over the price database."""

    model_config = ConfigDict(extra="forbid")
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class TelemetryConfig(BaseModel):
    """Every configuration key, its type and default; what `TelemetryManager.initialize(dict)` validates.

    `TelemetryManager.get_instance().config` is the one in effect. Each key is described in the README's
    "Configuration reference"; environment variables (SOP_TELEMETRY_DISABLED, SOP_TELEMETRY_DIR, SOP_TELEMETRY_OTLP)
    win over the values given here.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    storage_dir: Optional[Path] = None
    max_file_age_days: float = Field(default=14, gt=0)
    auto_cleanup: bool = True
    # Seconds between background flushes while records are waiting; a task's end is written at once regardless.
    # At most a day: the writer thread waits this long at a time, and a wait longer than threading.TIMEOUT_MAX
    # (or infinite) raises OverflowError there, which would leave nothing written until exit.
    flush_interval: float = Field(default=30.0, gt=0, le=86_400)
    # How many loaded sessions `get_session_data(id)` keeps in memory.
    max_memory_sessions: int = Field(default=10, ge=0)
    # Caps that keep memory bounded in long runs; what is over them is counted, not kept.
    max_records_per_task: int = Field(default=DEFAULT_MAX_RECORDS_PER_TASK, ge=1)
    # A long-lived process writes a series of session files (parts): a task that starts when the current one holds
    # this many tasks, or this many bytes, goes to the next (docs/long-running.md). They bound the memory held and
    # the size of every file; SOP_TELEMETRY_MAX_TASKS_PER_SESSION / SOP_TELEMETRY_MAX_SESSION_BYTES override them.
    max_tasks_per_session: int = Field(default=DEFAULT_MAX_TASKS_PER_SESSION, ge=1)
    max_session_bytes: int = Field(default=DEFAULT_MAX_SESSION_BYTES, ge=1_000)
    max_string_length: int = Field(default=DEFAULT_MAX_STRING_LENGTH, ge=16)
    # Prompts, outputs and tool arguments are stored only when this is switched on.
    capture_content: bool = False
    # Extra environment variable names recorded in EnvironmentInfo (secret-looking names are masked anyway).
    environment_allowlist: List[str] = Field(default_factory=list)
    # Per model id, prices that win over the genai-prices database.
    prices: Dict[str, ModelPrice] = Field(default_factory=dict)
    # Write files with fsync so that a power cut cannot lose a flushed session.
    fsync: bool = True
    # With fsync on, at most one fsync (or one batch of them) every this many seconds. A task's end is still written
    # at once (a whole file renamed into place: nothing is lost if the process dies); a write that comes sooner
    # after the last fsync is synced when the interval is over, or at exit, or by flush_data(). An fsync on every
    # write made the kernel's follow-up work land in the agent's next run (docs/design.md, "fsync policy").
    # 0 syncs every write.
    fsync_interval: float = Field(default=1.0, ge=0, le=3_600)
    # Live OpenTelemetry export of each task as it ends (needs the `otel` extra); off unless switched on here or by
    # SOP_TELEMETRY_OTLP=1. The endpoint is a base URL or a full /v1/traces URL; None follows the standard
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables (default http://localhost:4318).
    otlp_enabled: bool = False
    otlp_endpoint: Optional[str] = None
    # Which framework integrations to install: names ("smolagents", "langchain"), "-name" to leave one out, "all"
    # or "none"; a list or a comma-separated string. None: all. SOP_TELEMETRY_INTEGRATIONS wins over it.
    integrations: Optional[List[str]] = None

    @field_validator("integrations", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        # Checked here rather than at the first write: a path that cannot work is a ConfigError now, not a
        # counted error on every write later (and no session file ever).
        if isinstance(value, PurePath) and "\0" in str(value):
            raise ValueError("storage_dir must not contain a NUL character")
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("storage_dir must not be empty")
            if "\0" in value:
                raise ValueError("storage_dir must not contain a NUL character")
            try:
                return Path(value).expanduser()
            except RuntimeError as exc:  # "~name" of an unknown user, or no home directory at all
                raise ValueError(f"cannot expand {value!r}: {exc}") from None
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL")
        return value.strip() if value is not None else None

    def resolved_storage_dir(self) -> Path:
        """`storage_dir`, or the platform's default cache folder when it is not set."""
        if self.storage_dir is not None:
            return Path(self.storage_dir)
        return default_storage_dir()


class ConfigError(ValueError):
    """Raised by `initialize()` for unknown keys or bad values; the message names each problem."""


def default_storage_dir() -> Path:
    """`~/.cache/ept/sop_agents` on Linux (honouring XDG_CACHE_HOME), the platform's cache folder elsewhere."""
    import platformdirs

    return Path(platformdirs.user_cache_path("ept")) / "sop_agents"


def config_items(config: Optional[Mapping[str, Any] | TelemetryConfig] = None) -> Dict[str, Any]:
    """The keys given in code (for a TelemetryConfig, only those set on it), before any validation."""
    if isinstance(config, TelemetryConfig):
        return config.model_dump(exclude_unset=True)
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"config must be a mapping or TelemetryConfig, not {type(config).__name__}")


def build_config(config: Optional[Mapping[str, Any] | TelemetryConfig] = None,
                 use_env_dir: bool = True) -> TelemetryConfig:
    """Validates `config` and applies the environment overrides; raises ConfigError with a readable message.
    `use_env_dir=False` leaves SOP_TELEMETRY_DIR out (the manager's fallback when that variable is unusable)."""
    data = config_items(config)
    env_dir = os.environ.get("SOP_TELEMETRY_DIR", "").strip() if use_env_dir else ""
    if env_dir:
        data["storage_dir"] = env_dir
    if env_disabled():
        data["enabled"] = False
    env_otlp = os.environ.get("SOP_TELEMETRY_OTLP", "").strip().lower()
    if env_otlp:
        data["otlp_enabled"] = env_otlp in {"1", "true", "yes", "on"}
    for variable, key in (("SOP_TELEMETRY_MAX_TASKS_PER_SESSION", "max_tasks_per_session"),
                          ("SOP_TELEMETRY_MAX_SESSION_BYTES", "max_session_bytes")):
        value = os.environ.get(variable, "").strip()
        if value:
            data[key] = value  # (validated below: a bad value is a ConfigError naming the key)
    try:
        return TelemetryConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid sop_telemetry config: {problems}") from None


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        return f"{where}: unknown key (known keys: {', '.join(TelemetryConfig.model_fields)})"
    return f"{where}: {err['msg']}"
