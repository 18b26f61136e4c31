"""sop_telemetry: zero-configuration, local telemetry for AI agents (smolagents, pydantic-ai, LangChain/LangGraph).

Usage::

    import sop_telemetry            # every agent run in this process is now recorded
    ...
    from sop_telemetry import TelemetryManager
    session = TelemetryManager.get_instance().get_session_data()
    print(session.total_tokens.total_tokens, session.total_duration)

Importing this package only registers a hook: each framework's integration is installed when the framework is
imported (or at once if it already is). Public names are loaded on first use, so `import sop_telemetry` stays
cheap. `dir(sop_telemetry)` lists only the names already loaded: tools that walk every module's attributes
(freezegun, `inspect.getmembers`, `help()`) then never import our models behind the user's back, possibly while
`datetime` is replaced.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` below loads each name on first use
    from .analysis import analyze_performance, analyze_token_usage, load_sessions, summarize_sessions
    from .collector import TelemetryCollector
    from .config import ConfigError, TelemetryConfig
    from .error_handler import get_error_handler, safe_telemetry_operation
    from .manager import TelemetryManager
    from .models import (
        AgentExecution,
        CodeMetrics,
        EnvironmentInfo,
        LLMCall,
        StepExecution,
        TaskExecution,
        TelemetrySession,
        TokenUsage,
        ToolExecution,
    )
    from .status import CallStatus, TaskStatus
    from .storage import TelemetryDataStore

_EXPORTS = {
    "TelemetryManager": "manager",
    "TelemetryCollector": "collector",
    "TelemetryConfig": "config",
    "ConfigError": "config",
    "TelemetryDataStore": "storage",
    "TelemetrySession": "models",
    "TaskExecution": "models",
    "AgentExecution": "models",
    "ToolExecution": "models",
    "LLMCall": "models",
    "StepExecution": "models",
    "TokenUsage": "models",
    "EnvironmentInfo": "models",
    "CodeMetrics": "models",
    "TaskStatus": "status",
    "CallStatus": "status",
    "get_error_handler": "error_handler",
    "safe_telemetry_operation": "error_handler",
    "load_sessions": "analysis",
    "analyze_token_usage": "analysis",
    "analyze_performance": "analysis",
    "summarize_sessions": "analysis",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sop_telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def _activate() -> None:
    from . import registry

    registry.arm()


_activate()
