"""`import sop_telemetry` itself: what it loads, and what tools that walk modules see of it."""

from __future__ import annotations

import subprocess
import sys


def test_walking_the_modules_attributes_imports_nothing_more(tmp_path):
    # freezegun reads every attribute dir() lists of every loaded module at each freeze_time: loading the public
    # names then imported the analysis side under a frozen clock (pydantic failed on FakeDatetime, and the frozen
    # clock stayed frozen for the tests after: langchain-core's suite hung).
    code = ("import sys, sop_telemetry\n"
            "before = set(sys.modules)\n"
            "for name in dir(sop_telemetry):\n"
            "    getattr(sop_telemetry, name)\n"
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('sop_telemetry')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={"SOP_TELEMETRY_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_still_load_on_first_use():
    import sop_telemetry

    assert "TelemetryManager" in sop_telemetry.__all__
    assert sop_telemetry.TelemetryManager.__name__ == "TelemetryManager"
