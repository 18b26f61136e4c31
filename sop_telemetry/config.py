"""Configuration: the spec's keys as a validated model, with environment overrides.

Usage::

    from sop_telemetry import TelemetryManager
    TelemetryManager.get_instance().initialize({"storage_dir": "/tmp/telemetry", "max_file_age_days": 7})

Environment: ``SOP_TELEMETRY_DISABLED=1`` turns everything off, ``SOP_TELEMETRY_DIR`` sets the storage directory.
Both win over values given in code, so an operator can always switch telemetry off or move it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .collector import DEFAULT_MAX_RECORDS_PER_TASK, DEFAULT_MAX_STRING_LENGTH, env_disabled


class ModelPrice(BaseModel):
    """A user's own price for a model, in dollars per million tokens; wins over the price database."""

    model_config = ConfigDict(extra="forbid")
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class TelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    storage_dir: Optional[Path] = None
    max_file_age_days: float = Field(default=14, gt=0)
    auto_cleanup: bool = True
    # Seconds between background flushes while records are waiting; a task's end is written at once regardless.
    flush_interval: float = Field(default=30.0, gt=0)
    # How many loaded sessions `get_session_data(id)` keeps in memory.
    max_memory_sessions: int = Field(default=10, ge=0)
    # Caps that keep memory bounded in long runs; what is over them is counted, not kept.
    max_records_per_task: int = Field(default=DEFAULT_MAX_RECORDS_PER_TASK, ge=1)
    max_tasks_per_session: int = Field(default=1_000, ge=1)
    max_string_length: int = Field(default=DEFAULT_MAX_STRING_LENGTH, ge=16)
    # Prompts, outputs and tool arguments are stored only when this is switched on.
    capture_content: bool = False
    # Extra environment variable names recorded in EnvironmentInfo (secret-looking names are masked anyway).
    environment_allowlist: List[str] = Field(default_factory=list)
    # Per model id, prices that win over the genai-prices database.
    prices: Dict[str, ModelPrice] = Field(default_factory=dict)
    # Write files with fsync so that a power cut cannot lose a flushed session.
    fsync: bool = True

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("storage_dir must not be empty")
            return Path(value).expanduser()
        return value

    def resolved_storage_dir(self) -> Path:
        if self.storage_dir is not None:
            return Path(self.storage_dir)
        return default_storage_dir()


class ConfigError(ValueError):
    """Raised by `initialize()` for unknown keys or bad values; the message names each problem."""


def default_storage_dir() -> Path:
    """`~/.cache/ept/sop_agents` on Linux (honouring XDG_CACHE_HOME), the platform's cache folder elsewhere."""
    import platformdirs

    return Path(platformdirs.user_cache_path("ept")) / "sop_agents"


def build_config(config: Optional[Mapping[str, Any] | TelemetryConfig] = None) -> TelemetryConfig:
    """Validates `config` and applies the environment overrides; raises ConfigError with a readable message."""
    if isinstance(config, TelemetryConfig):
        data: Dict[str, Any] = config.model_dump(exclude_unset=True)
    elif config is None:
        data = {}
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise ConfigError(f"config must be a mapping or TelemetryConfig, not {type(config).__name__}")
    env_dir = os.environ.get("SOP_TELEMETRY_DIR", "").strip()
    if env_dir:
        data["storage_dir"] = env_dir
    if env_disabled():
        data["enabled"] = False
    try:
        return TelemetryConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid sop_telemetry config: {problems}") from None
