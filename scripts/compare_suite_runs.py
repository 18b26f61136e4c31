"""Compares a framework's test suite run without and with sop_telemetry (the junit XML files `without.xml` and
`with.xml` in a work folder, and the plugin's `telemetry-report.json`): prints both counts, what telemetry
recorded, and the tests that fail only with it. Exits 1 if there is any (other than those named as expected, with
the reason, by `--expected`), or if telemetry recorded nothing.

Usage::

    python scripts/compare_suite_runs.py /tmp/sop-telemetry-langchain-tests \
        --expected "tests.unit_tests.runnables.test_config::test_merge_config_callbacks=counts the handlers"
"""

from __future__ import annotations

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


def main(work: Path, expected: dict) -> int:
    without, with_ = outcomes(work / "without.xml"), outcomes(work / "with.xml")
    for label, results in (("without sop_telemetry", without), ("with sop_telemetry   ", with_)):
        counts = {k: sum(1 for v in results.values() if v == k) for k in ("passed", "failed", "skipped")}
        print(f"{label}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
              f"({len(results)} tests)")
    failed_with = sorted(t for t, o in with_.items() if o == "failed" and without.get(t) != "failed")
    only_with = [t for t in failed_with if t not in expected]
    fixed = sorted(t for t, o in without.items() if o == "failed" and with_.get(t) == "passed")
    report = json.loads((work / "telemetry-report.json").read_text())
    print(f"telemetry recorded: {report['tasks']} tasks, {report['llm_calls']} model calls, {report['tool_calls']} "
          f"tool calls, {report['steps']} steps in {report['sessions']} session file(s); instrumented: "
          f"{report['instrumented']}; telemetry's own errors: {report['telemetry_errors'] or 'none'}")
    if fixed:
        print(f"{len(fixed)} test(s) fail only WITHOUT telemetry (flaky?): " + ", ".join(fixed))
    for test in failed_with:
        if test in expected:
            print(f"expected to fail only with sop_telemetry: {test} ({expected[test]})")
    print(f"{len(only_with)} test(s) fail only with sop_telemetry" + (" otherwise" if expected else "")
          + (":" if only_with else "."))
    for test in only_with:
        print(f"  {test}")
    return 1 if only_with or not report["instrumented"] or not report["tasks"] else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--expected", action="append", default=[], metavar="TEST=REASON")
    args = parser.parse_args()
    sys.exit(main(args.work, dict(item.split("=", 1) for item in args.expected)))
