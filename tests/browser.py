"""The system's Chromium, headless, driven through Playwright (its PyPI wheel carries the driver; the browser is
Debian's `chromium`, nothing is downloaded), for the tests that look at pages.

Usage::

    with Browser.start() as browser:
        page = browser.open("file:///tmp/x.html")           # 1280x800 unless told otherwise
        assert page.console_errors == [] and page.requests == ["file:///tmp/x.html"]
        page.screenshot("viewer.png")                        # into ARTIFACTS (build/test-artifacts)

Without the browser or Playwright the tests skip, unless SOP_TELEMETRY_REQUIRE_BROWSER=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import pytest

CHROMIUM = os.environ.get("SOP_TELEMETRY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skips the calling test when there is no browser to drive (fails instead when CI asks for one)."""
    missing = None
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is None:
        return
    if os.environ.get("SOP_TELEMETRY_REQUIRE_BROWSER") == "1":
        pytest.fail(missing)
    pytest.skip(missing)


@dataclass
class Page:
    page: Any
    console_errors: List[str] = field(default_factory=list)
    requests: List[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def screenshot(self, name: str, full_page: bool = False) -> Path:  # type: ignore[override]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


class Browser:
    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._profile = tempfile.mkdtemp(prefix="sop-telemetry-chromium-")
        self._driver = sync_playwright().start()
        # A persistent context is the way to hand Chromium its own fresh --user-data-dir.
        self._context = self._driver.chromium.launch_persistent_context(
            self._profile, executable_path=CHROMIUM, headless=True, args=FLAGS[1:],
            viewport={"width": 1280, "height": 800}, service_workers="block")

    @classmethod
    def start(cls) -> "Browser":
        require_browser()
        return cls()

    def open(self, url: str, width: int = 1280, height: int = 800, wait_for: Optional[str] = ".card") -> Page:
        page = self._context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        shown = Page(page)
        page.on("console", lambda m: shown.console_errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: shown.console_errors.append(f"uncaught: {exc}"))
        page.on("request", lambda r: shown.requests.append(r.url))
        page.goto(url)
        if wait_for:
            page.wait_for_selector(wait_for)
        return shown

    def close(self) -> None:
        try:
            self._context.close()
            self._driver.stop()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
