"""How long a page of a large session takes to build and to open: a task of 5,000 steps and 10,000 calls.

Usage::

    python -m benchmarks.viewer_page          # medians of 3; the browser part needs /usr/bin/chromium and playwright

Not part of `python -m benchmarks` (it needs a browser); figures in docs/viewer.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> None:
    sys.path.insert(0, str(TESTS))
    from browser import Browser
    from recorded_sessions import synthetic_session

    from sop_telemetry.viewer import session_html

    session = synthetic_session(steps=5000, calls_per_step=2)
    builds = []
    for _ in range(3):
        started = time.perf_counter()
        html = session_html(session)
        builds.append(time.perf_counter() - started)
    print(f"build: median {statistics.median(builds):.2f} s of {[round(b, 2) for b in builds]}; "
          f"{len(html.encode()) / 1e6:.1f} MB")
    path = Path(tempfile.mkdtemp()) / "big.html"
    path.write_text(html, encoding="utf-8")
    opens = []
    with Browser.start() as browser:
        for _ in range(3):
            started = time.perf_counter()
            page = browser.open(path.as_uri(), wait_for=".wf-row")
            opens.append(time.perf_counter() - started)
            page.close()
    print(f"open in Chromium until the waterfall is drawn: median {statistics.median(opens):.2f} s of "
          f"{[round(o, 2) for o in opens]}")


if __name__ == "__main__":
    main()
