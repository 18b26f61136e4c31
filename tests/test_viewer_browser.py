"""The viewer's page in a real browser (headless Chromium): a real recorded session (a CodeAgent that plans and
manages an agent whose tool fails twice) drawn from `file://` with no request, figures equal to the file's, one bar
per record, one point per step, the failing tool named in a finding, no console error; the comparison page; a task
of 10,000 calls; a narrow window. Screenshots go to build/test-artifacts/ (SOP_TELEMETRY_UPDATE_SCREENSHOT=1 also
copies the main one to docs/images/viewer.png)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from browser import Browser
from recorded_sessions import managed_run, new_manager, planned_managed_run, record, synthetic_session, tool_calling_run

from sop_telemetry.viewer import comparison_html, session_html

DOCS_IMAGE = Path(__file__).resolve().parent.parent / "docs" / "images" / "viewer.png"


@pytest.fixture(scope="module")
def browser():
    with Browser.start() as started:
        yield started


def write(tmp_path: Path, name: str, html: str) -> str:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path.as_uri()


def no_trouble(page, url: str) -> None:
    assert page.console_errors == []
    assert page.requests == [url], "the page made a request"
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, [role=button], a, input, select')]
        .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim() || e.labels?.length))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == [], "interactive elements without an accessible name"


def test_a_recorded_session_drawn_from_a_file(browser, manager, storage_dir, tmp_path):
    session = record(manager, planned_managed_run)
    raw = json.loads((storage_dir / f"{session.session_id}.json").read_text())
    task = raw["tasks"][0]
    url = write(tmp_path, "session.html", session_html(session))
    page = browser.open(url)

    text = page.inner_text("body")
    for name in ["CodeAgent", "adder", "explode", "add", "final_answer", "gpt-4o", "gpt-4o-mini"]:
        assert name in text
    wf = page.inner_text(".wf")
    for name in {a["agent_name"] for a in task["agents"]} | {t["tool_name"] for t in task["tools"]} | \
            {c["model"] for c in task["llm_calls"]}:
        assert name in wf, f"{name} is not in the timeline"

    shot = page.screenshot("viewer.png")  # as it opens, at 1280x800
    page.screenshot("viewer-full.png", full_page=True)
    if os.environ.get("SOP_TELEMETRY_UPDATE_SCREENSHOT") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)

    figures = {k: page.get_attribute(f'.card[data-fig="{k}"]', "data-value")
               for k in ("tasks", "model_calls", "total_tokens", "cost", "duration", "status")}
    assert int(figures["tasks"]) == len(raw["tasks"])
    assert int(figures["model_calls"]) == len(task["llm_calls"]) == 7
    assert int(figures["total_tokens"]) == raw["total_tokens"]["total_tokens"] == 2395
    assert float(figures["cost"]) == pytest.approx(raw["total_tokens"]["cost_estimate"])
    assert float(figures["duration"]) == pytest.approx(raw["total_duration"])
    assert figures["status"] == "completed"
    assert page.inner_text('.card[data-fig="total_tokens"] .v') == "2,395"

    bars = {kind: page.locator(f".wf .bar.{kind}").count() for kind in ("agent", "step", "model", "tool")}
    assert bars == {"agent": len(task["agents"]), "step": len(task["steps"]), "model": len(task["llm_calls"]),
                    "tool": len(task["tools"])}
    assert page.locator(".wf .bar").count() == sum(bars.values())
    assert page.locator(".wf .bar.tool.error").count() == 2
    assert page.locator(".chart circle.pt").count() == len(task["steps"]) == 7

    finding = page.locator('#findings li[data-rule="tool_failing"]')
    assert "explode" in finding.inner_text() and "failed 2 of 2 calls" in finding.inner_text()

    # Hover: the bar's figures; click: every field of the record, the error first.
    first_explode = page.locator(".wf .bar.tool.error").first
    first_explode.hover()
    assert "explode" in page.inner_text("#tip") and "exploded: first" in page.inner_text("#tip")
    first_explode.click()
    assert page.is_visible("#details")
    details = page.inner_text("#details")
    assert "ValueError: exploded: first" in details and "adder" in details
    page.keyboard.press("Escape")
    assert not page.is_visible("#details")
    finding.locator("button").click()
    assert page.locator(".wf-row.hit").count() == 2

    no_trouble(page, url)
    page.close()


def test_a_narrow_window_does_not_scroll_sideways(browser, manager, tmp_path):
    url = write(tmp_path, "narrow.html", session_html(record(manager, planned_managed_run)))
    page = browser.open(url, width=420, height=800)
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    assert page.is_visible(".wf .bar.agent")
    page.screenshot("viewer-narrow.png", full_page=True)
    no_trouble(page, url)
    page.close()


def test_ten_thousand_calls_open_in_seconds_collapsed(browser, tmp_path):
    session = synthetic_session(steps=5000, calls_per_step=2)
    url = write(tmp_path, "big.html", session_html(session))
    started = time.perf_counter()
    page = browser.open(url, wait_for=".wf-row")
    opened = time.perf_counter() - started
    assert opened < 15, opened  # about 2 s here; generous for a loaded CI machine
    # The steps start collapsed: rows are the run and its steps, and only the first 1,500 are drawn.
    assert page.locator(".wf .bar.model").count() == 0
    assert page.locator(".wf .bar").count() == 1500
    assert "Show 1,500 more rows" in page.inner_text(".wf")
    page.locator('.wf [aria-label="Expand action 2"]').click()
    assert page.locator(".wf .bar.model").count() == 1 and page.locator(".wf .bar.tool").count() == 1
    page.locator(".wf [data-more]").click()
    assert page.locator(".wf .bar").count() == 3000  # two pages of rows
    assert page.locator(".chart circle.pt").count() == 5000
    assert page.inner_text('.card[data-fig="model_calls"] .v') == "5,000"
    no_trouble(page, url)
    page.close()


def test_two_sessions_compared(browser, manager, storage_dir, tmp_path):
    first = record(manager, tool_calling_run, managed_run)
    second = record(new_manager(storage_dir), managed_run)
    url = write(tmp_path, "compare.html", comparison_html(first, second))
    page = browser.open(url, wait_for="#compare-figures")
    model_calls = page.locator('#compare-figures tr[data-fig="model_calls"] td')
    assert model_calls.all_inner_texts() == ["Model calls", "6", "3", "−3 (-50%)"]
    assert "down" in (model_calls.nth(3).get_attribute("class") or "")
    # The first tasks differ (a ToolCallingAgent, then the CodeAgent): steps only one side has are marked.
    assert page.locator("text=only in A").count() > 0
    assert page.locator("tr[data-changed]").count() > 0
    page.screenshot("compare.png", full_page=True)
    page.locator('[role="tab"][data-tab="b"]').click()
    assert page.locator(".wf .bar.model").count() == len(second.tasks[0].llm_calls)
    assert page.get_attribute('.card[data-fig="model_calls"]', "data-value") == "3"
    no_trouble(page, url)
    page.close()


def test_long_lists_collapse(browser, tmp_path):
    session = synthetic_session(steps=12, calls_per_step=2)
    for number, tool in enumerate(session.tasks[0].tools):
        tool.tool_name, tool.status, tool.error_type = f"tool{number}", "error", "OSError"
    url = write(tmp_path, "many.html", session_html(session))
    page = browser.open(url)
    assert page.locator("#findings li").count() == 8
    page.click('#findings [data-all="findings"]')
    assert page.locator('#findings li[data-rule="tool_failing"]').count() == 12
    assert page.locator("#per-tool tbody tr").count() == 10
    page.click('#per-tool [data-all="per-tool"]')
    assert page.locator("#per-tool tbody tr").count() == 12
    assert page.locator("#findings li").count() == 12  # still all shown after the redraw
    no_trouble(page, url)
    page.close()


def test_a_running_session_and_an_empty_one(browser, tmp_path):
    session = synthetic_session(steps=2)
    task = session.tasks[0]
    session.end_time = task.end_time = task.duration = None
    task.status = "running"
    task.tools[-1].status, task.tools[-1].end_time, task.tools[-1].duration = "running", None, None
    url = write(tmp_path, "running.html", session_html(session))
    page = browser.open(url)
    assert page.get_attribute('.card[data-fig="status"]', "data-value") == "running"
    assert page.locator(".wf .bar.tool.running").count() == 1
    no_trouble(page, url)
    page.close()
    empty = session.model_copy(update={"tasks": []})
    url = write(tmp_path, "empty.html", session_html(empty))
    page = browser.open(url)
    assert "No tasks recorded." in page.inner_text("body")
    assert page.inner_text('.card[data-fig="cost"] .v') == "unknown"
    no_trouble(page, url)
    page.close()
