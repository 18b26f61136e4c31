"""pytest plugin: sop_telemetry active for a whole test run, as if the code under test had `import sop_telemetry`.

Usage::

    SOP_TELEMETRY_DIR=/tmp/sessions PYTHONPATH=/path/to/repo:/path/to/repo/scripts \\
        python -m pytest -p sop_telemetry_pytest_plugin tests/

Loaded with `-p`, it is imported before any conftest or test module, so the frameworks are instrumented however the
tests import them. $SOP_TELEMETRY_SUITE_CONFIG, if set, is a JSON config for `initialize()` (e.g.
'{"capture_content": true, "max_records_per_task": 1}' to run every preview and cap path). At the end it writes
what telemetry recorded (proof that it was active) and its own errors to $SOP_TELEMETRY_SUITE_REPORT as JSON, for
scripts/run_smolagents_tests.sh and scripts/run_pydantic_ai_tests.sh (`instrumented`: the active integrations).
"""

from __future__ import annotations

import json
import os
from typing import Any

import sop_telemetry  # noqa: F401 - the point of the plugin

if os.environ.get("SOP_TELEMETRY_SUITE_CONFIG"):
    from sop_telemetry import TelemetryManager

    TelemetryManager.get_instance().initialize(json.loads(os.environ["SOP_TELEMETRY_SUITE_CONFIG"]))


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    from sop_telemetry import TelemetryDataStore, TelemetryManager, get_error_handler, registry

    manager = TelemetryManager.get_instance()
    manager.flush_data()
    store = TelemetryDataStore(manager.config.resolved_storage_dir())
    sessions = list(store.iter_sessions())
    tasks = [task for s in sessions for task in s.tasks]
    report = {
        "instrumented": registry.active(),
        "storage_dir": str(store.directory),
        "sessions": len(sessions),
        "tasks": len(tasks),
        "llm_calls": sum(len(t.llm_calls) + t.dropped_records.get("llm_calls", 0) for t in tasks),
        "tool_calls": sum(len(t.tools) + t.dropped_records.get("tools", 0) for t in tasks),
        "steps": sum(len(t.steps) for t in tasks),
        "telemetry_errors": get_error_handler().get_error_summary(),
    }
    path = os.environ.get("SOP_TELEMETRY_SUITE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, default=str)
