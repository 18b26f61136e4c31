"""Every test gets a fresh TelemetryManager writing into its own tmp directory, with telemetry enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

import sop_telemetry  # noqa: F401 - installs the smolagents hook before any test imports smolagents
from sop_telemetry.collector import current, switch
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.manager import TelemetryManager


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "telemetry"


@pytest.fixture
def manager(storage_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SOP_TELEMETRY_DISABLED", raising=False)
    monkeypatch.delenv("SOP_TELEMETRY_DIR", raising=False)
    switch.enabled = True
    token = current.set(None)  # a task a previous test left open must not swallow this test's records
    get_error_handler().reset_error_state()
    instance = TelemetryManager._reset_instance()
    instance.initialize({"storage_dir": str(storage_dir), "auto_cleanup": False, "fsync": False})
    yield instance
    instance.shutdown(flush=False)
    current.reset(token)
    switch.enabled = True

