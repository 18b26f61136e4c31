"""Compares a framework test suite's two runs (scripts/run_<framework>_tests.sh): without and with sop_telemetry.

Usage::

    python scripts/compare_suite_runs.py WORK_DIR INTEGRATION [--expected "TEST=REASON"]...

Reads WORK_DIR/without.xml and WORK_DIR/with.xml (pytest's JUnit XML) and WORK_DIR/telemetry-report.json (written by
sop_telemetry_pytest_plugin); prints both runs' counts, what telemetry recorded, and the tests that fail only with
telemetry. Exits 1 if there is any (other than those named, with the reason, by --expected), or if INTEGRATION was
not active or recorded no task.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(path: Path) -> dict:
    results = {}
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return results


def main(work: Path, integration: str, expected: dict) -> int:
    without, with_ = outcomes(work / "without.xml"), outcomes(work / "with.xml")
    for label, results in (("without sop_telemetry", without), ("with sop_telemetry   ", with_)):
        counts = {k: sum(1 for v in results.values() if v == k) for k in ("passed", "failed", "skipped")}
        print(f"{label}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
              f"({len(results)} tests)")
    failed_with = sorted(t for t, o in with_.items() if o == "failed" and without.get(t) != "failed")
    only_with = [t for t in failed_with if t not in expected]
    fixed = sorted(t for t, o in without.items() if o == "failed" and with_.get(t) == "passed")
    report = json.loads((work / "telemetry-report.json").read_text())
    active = report["instrumented"]
    print(f"telemetry recorded: {report['tasks']} tasks, {report['llm_calls']} model calls, {report['tool_calls']} "
          f"tool calls, {report['steps']} steps in {report['sessions']} session file(s); instrumented: "
          f"{active}; telemetry's own errors: {report['telemetry_errors'] or 'none'}")
    if fixed:
        print(f"{len(fixed)} test(s) fail only WITHOUT telemetry (flaky?): " + ", ".join(fixed))
    for test in failed_with:
        if test in expected:
            print(f"expected to fail only with sop_telemetry: {test} ({expected[test]})")
    print(f"{len(only_with)} test(s) fail only with sop_telemetry" + (" otherwise" if expected else "")
          + (":" if only_with else "."))
    for test in only_with:
        print(f"  {test}")
    return 1 if only_with or integration not in active or not report["tasks"] else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("integration")
    parser.add_argument("--expected", action="append", default=[], metavar="TEST=REASON")
    args = parser.parse_args()
    sys.exit(main(args.work, args.integration, dict(item.split("=", 1) for item in args.expected)))
