"""Configuration: the spec's keys, validation with readable errors, environment overrides, the default folder."""

from __future__ import annotations

import sys

import platformdirs
import pytest

from sop_telemetry import ConfigError, TelemetryConfig, TelemetryManager
from sop_telemetry.collector import switch
from sop_telemetry.config import build_config, default_storage_dir


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("SOP_TELEMETRY_DIR", raising=False)
    monkeypatch.delenv("SOP_TELEMETRY_DISABLED", raising=False)


def test_defaults_are_the_specs():
    cfg = build_config()
    assert cfg.enabled is True
    assert cfg.max_file_age_days == 14
    assert cfg.auto_cleanup is True
    assert cfg.flush_interval > 0
    assert cfg.max_memory_sessions >= 0
    assert cfg.storage_dir is None
    assert cfg.resolved_storage_dir() == default_storage_dir()


def test_the_specs_example_config_is_accepted(tmp_path):
    cfg = build_config({"enabled": True, "storage_dir": str(tmp_path / "custom"), "max_file_age_days": 14,
                        "auto_cleanup": True, "flush_interval": 600, "max_memory_sessions": 20})
    assert cfg.resolved_storage_dir() == tmp_path / "custom"
    assert cfg.flush_interval == 600 and cfg.max_memory_sessions == 20


def test_storage_dir_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build_config({"storage_dir": "~/t"}).resolved_storage_dir() == tmp_path / "t"


def test_a_telemetry_config_object_is_accepted(tmp_path):
    cfg = build_config(TelemetryConfig(storage_dir=tmp_path, max_file_age_days=3))
    assert cfg.storage_dir == tmp_path and cfg.max_file_age_days == 3


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError) as info:
        build_config({"max_file_age": 7})
    message = str(info.value)
    assert "max_file_age" in message
    assert "max_file_age_days" in message  # the known keys are listed, so the typo is easy to spot


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enabled", "maybe"),
        ("max_file_age_days", 0),
        ("max_file_age_days", -1),
        ("max_file_age_days", "soon"),
        ("flush_interval", 0),
        ("max_memory_sessions", -1),
        ("storage_dir", ""),
        ("storage_dir", 42),
        ("max_records_per_task", 0),
        ("max_string_length", 3),
        ("environment_allowlist", "MY_VAR"),
        ("prices", {"m": {"input_per_million": -1, "output_per_million": 1}}),
    ],
)
def test_bad_values_give_a_clear_error(key, value):
    with pytest.raises(ConfigError, match=f"invalid sop_telemetry config: {key}"):
        build_config({key: value})


def test_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="mapping"):
        build_config(["enabled"])  # type: ignore[arg-type]


def test_initialize_raises_config_error(manager):
    with pytest.raises(ConfigError, match="nonsense"):
        manager.initialize({"nonsense": 1})
    with pytest.raises(ConfigError, match="flush_interval"):
        manager.initialize({"flush_interval": -5})


def test_environment_overrides_win_over_code(monkeypatch, tmp_path):
    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(tmp_path / "from_env"))
    monkeypatch.setenv("SOP_TELEMETRY_DISABLED", "1")
    cfg = build_config({"storage_dir": str(tmp_path / "from_code"), "enabled": True})
    assert cfg.resolved_storage_dir() == tmp_path / "from_env"
    assert cfg.enabled is False


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_disabled_values(monkeypatch, value):
    monkeypatch.setenv("SOP_TELEMETRY_DISABLED", value)
    assert build_config().enabled is False


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_not_disabled_values(monkeypatch, value):
    monkeypatch.setenv("SOP_TELEMETRY_DISABLED", value)
    assert build_config().enabled is True


def test_blank_env_dir_is_ignored(monkeypatch):
    monkeypatch.setenv("SOP_TELEMETRY_DIR", "   ")
    assert build_config().storage_dir is None


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_CACHE_HOME is the Linux convention")
def test_default_dir_is_the_platform_cache_and_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_storage_dir() == platformdirs.user_cache_path("ept") / "sop_agents"
    assert default_storage_dir() == tmp_path / "xdg" / "ept" / "sop_agents"


def test_initialize_through_the_manager_applies_env_overrides(manager, monkeypatch, tmp_path):
    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(tmp_path / "env_dir"))
    manager.initialize({"storage_dir": str(tmp_path / "code_dir")})
    assert manager.get_storage_stats()["storage_path"] == str(tmp_path / "env_dir")
    monkeypatch.setenv("SOP_TELEMETRY_DISABLED", "1")
    manager.initialize({"enabled": True})
    assert manager.is_enabled() is False
    # The operator's switch also wins over enable_telemetry().
    manager.enable_telemetry()
    assert manager.is_enabled() is False


def test_initialize_without_a_config_keeps_the_current_one(manager, storage_dir):
    """The spec calls `manager.initialize()` on a manager that is already set up: that must not reset it."""
    manager.initialize()
    assert manager.get_storage_stats()["storage_path"] == str(storage_dir)


def test_initialize_again_changes_only_the_given_keys(manager, storage_dir):
    manager.initialize({"flush_interval": 600, "max_memory_sessions": 20})
    assert manager.config.flush_interval == 600
    assert manager.config.max_memory_sessions == 20
    assert manager.config.resolved_storage_dir() == storage_dir
    assert manager.config.fsync is False


def test_lazy_initialization_keeps_disable_telemetry(monkeypatch, tmp_path):
    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(tmp_path))
    fresh = TelemetryManager._reset_instance()
    try:
        fresh.disable_telemetry()
        fresh.get_storage_stats()  # initializes lazily with the defaults
        assert fresh.is_enabled() is False
    finally:
        fresh.shutdown(flush=False)
        switch.enabled = True


def test_the_bounds_of_a_session_file_come_from_code_or_the_environment(monkeypatch):
    cfg = build_config({"max_tasks_per_session": 50, "max_session_bytes": 2_000_000})
    assert (cfg.max_tasks_per_session, cfg.max_session_bytes) == (50, 2_000_000)
    monkeypatch.setenv("SOP_TELEMETRY_MAX_TASKS_PER_SESSION", "200")
    monkeypatch.setenv("SOP_TELEMETRY_MAX_SESSION_BYTES", " 1000000 ")
    cfg = build_config({"max_tasks_per_session": 50})
    assert (cfg.max_tasks_per_session, cfg.max_session_bytes) == (200, 1_000_000)  # the operator's word wins
    monkeypatch.setenv("SOP_TELEMETRY_MAX_SESSION_BYTES", "lots")
    with pytest.raises(ConfigError, match="max_session_bytes"):
        build_config()


def test_the_manager_applies_the_bounds_to_its_collector(manager):
    manager.initialize({"max_tasks_per_session": 7, "max_session_bytes": 123_456})
    collector = manager.get_collector()
    assert (collector.max_tasks_per_part, collector.max_part_bytes) == (7, 123_456)
