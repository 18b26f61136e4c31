"""The integration registry and contract: selection, version ranges, post-import installation, active versions."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sop_telemetry import registry


@pytest.mark.parametrize("spec, expected", [
    (None, ["smolagents", "pydantic_ai", "langchain"]),
    ("", ["smolagents", "pydantic_ai", "langchain"]),
    ("all", ["smolagents", "pydantic_ai", "langchain"]),
    ("none", []),
    ("smolagents,langchain", ["smolagents", "langchain"]),
    (" langchain , smolagents ", ["smolagents", "langchain"]),
    ("-langchain", ["smolagents", "pydantic_ai"]),
    ("-langchain,-smolagents", ["pydantic_ai"]),
    ("smolagents,-smolagents", []),
])
def test_selection(spec, expected, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.selected(spec or "", known=["smolagents", "pydantic_ai", "langchain"]) == expected


def test_unknown_names_are_warned_about_and_ignored(caplog):
    with caplog.at_level("WARNING", logger="sop_telemetry"):
        assert registry.selected("smolagent", known=["smolagents"]) == []
    assert "names no integration 'smolagent'" in caplog.text


@pytest.mark.parametrize("version, spec, ok", [
    ("1.26.0", ">=1.23,<1.27", True),
    ("1.27.0", ">=1.23,<1.27", False),
    ("1.22.9", ">=1.23,<1.27", False),
    ("1.23", ">=1.23,<1.27", True),
    ("1.26.0rc1", ">=1.23,<1.27", True),
    ("2.0.0.dev3", ">=1.0", True),
    ("1.2", "==1.2.0", True),
    ("1.2.1", "!=1.2.1", False),
])
def test_version_ranges(version, spec, ok):
    assert registry.version_in(version, spec) is ok


def _fake_framework(tmp_path, version: str) -> None:
    (tmp_path / "fakework_fw").mkdir()
    (tmp_path / "fakework_fw" / "__init__.py").write_text(f"__version__ = {version!r}\nhooked = False\n")
    (tmp_path / "fakework_integration.py").write_text(textwrap.dedent("""
        import sys
        from sop_telemetry.registry import DidNotEnable, Integration

        class FakeIntegration(Integration):
            name = "fakework"
            module = "fakework_fw"
            supported = ">=1.0,<2"

            def setup(self):
                fw = sys.modules["fakework_fw"]
                if getattr(fw, "refuse", False):
                    raise DidNotEnable("fakework is configured to refuse")
                fw.hooked = True

            def teardown(self):
                sys.modules["fakework_fw"].hooked = False

        integration = FakeIntegration()
    """))


def test_installed_when_its_framework_is_imported_and_listed_active(tmp_path):
    _fake_framework(tmp_path, "1.4.2")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import sop_telemetry
        from sop_telemetry import registry
        registry.register("fakework", "fakework_fw", "fakework_integration")
        registry.arm()
        assert "fakework_integration" not in sys.modules   # nothing imported before the framework is
        import fakework_fw
        assert fakework_fw.hooked is True
        print(registry.active())
        registry.get("fakework").uninstall()
        assert fakework_fw.hooked is False and "fakework" not in registry.active()
        registry.get("fakework").install()
        registry.arm("-fakework")                          # a selection that drops it uninstalls it
        assert fakework_fw.hooked is False
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "", "SOP_TELEMETRY_DISABLED": "", "PYTHONPATH": sys.path[0]})
    assert out.returncode == 0, out.stderr
    assert "'fakework': '1.4.2'" in out.stdout


def test_unsupported_version_is_skipped_with_one_log_line(tmp_path):
    _fake_framework(tmp_path, "2.1.0")
    code = textwrap.dedent(f"""
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        sys.path.insert(0, {str(tmp_path)!r})
        from sop_telemetry import registry
        registry.register("fakework", "fakework_fw", "fakework_integration")
        import fakework_fw
        registry.arm()
        registry.arm()
        assert registry.get("fakework").install() is False
        assert fakework_fw.hooked is False and registry.active() == {{}}
        fakework_fw.__version__ = "1.5"
        fakework_fw.refuse = True
        assert registry.get("fakework").install() is False   # DidNotEnable from setup: skipped too
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "fakework" in line]
    assert lines == ["sop_telemetry: fakework 2.1.0 is outside the supported range (>=1.0,<2); it is not "
                     "instrumented", "sop_telemetry: fakework is configured to refuse; it is not instrumented"]


def test_environment_variable_selects_integrations_at_import():
    code = textwrap.dedent("""
        import sop_telemetry, smolagents
        from sop_telemetry import registry
        from sop_telemetry.integrations import smolagents as integration
        print(integration.is_installed(), registry.active())
    """)
    env = {"SOP_TELEMETRY_INTEGRATIONS": "-smolagents", "PYTHONPATH": sys.path[0]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False {}"


def test_active_integrations_in_storage_stats(manager):
    import smolagents

    stats = manager.get_storage_stats()
    # (Other integrations are active too once a test has imported their framework.)
    assert stats["integrations"]["smolagents"] == smolagents.__version__


def test_config_key_selects_integrations(manager, monkeypatch):
    from smolagents.models import Model

    from sop_telemetry.integrations import smolagents as integration
    from sop_telemetry.integrations.patching import is_ours

    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    try:
        manager.initialize({"integrations": "-smolagents"})
        assert integration.is_installed() is False and not is_ours(vars(Model)["generate"])
        assert "smolagents" not in manager.get_storage_stats()["integrations"]
        manager.initialize({"integrations": ["smolagents"]})
        assert integration.is_installed() is True and is_ours(vars(Model)["generate"])
    finally:
        manager.initialize({"integrations": None})
    assert integration.is_installed() is True
