"""`sop-telemetry ui`: the dashboard serves the session list and each session's page on 127.0.0.1 to requests that
carry its token, refuses everything else (no token, another Host, writes, paths out of the folder, links), follows a
session as it is written, and stops on Ctrl-C. Requests go out raw (http.client) so that no path is normalised on
the way."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from browser import Browser
from recorded_sessions import managed_run, record, tool_calling_run

from sop_telemetry.viewer.server import DashboardServer

SECRET = "a secret outside the sessions folder"


@pytest.fixture
def dashboard(storage_dir: Path):
    storage_dir.mkdir(parents=True, exist_ok=True)
    server = DashboardServer(storage_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def get(server: DashboardServer, path: str, method: str = "GET", token: Optional[str] = "",
        headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """A request sent as written; token "" means the server's own, None none at all."""
    if token is not None:
        path += ("&" if "?" in path else "?") + "token=" + (token or server.token)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", (headers or {}).get("Host", f"127.0.0.1:{server.port}"))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_token_is_required(manager, dashboard):
    session = record(manager, tool_calling_run)
    assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/?token={dashboard.token}"
    assert dashboard.server_address[0] == "127.0.0.1" and len(dashboard.token) >= 32
    for path in ("/", "/api/sessions", f"/session/{session.session_id}", f"/api/session/{session.session_id}"):
        status, _headers, body = get(dashboard, path, token=None)
        assert status == 403 and b"token" in body
        assert get(dashboard, path, token="wrong")[0] == 403
        status, headers, _body = get(dashboard, path)
        assert status == 200
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
    status, _headers, body = get(dashboard, "/api/sessions")
    assert [row["session_id"] for row in json.loads(body)] == [session.session_id]
    status, _headers, body = get(dashboard, f"/api/session/{session.session_id}")
    assert json.loads(body)["session"]["header"]["total_tokens"] == 330
    # Another name for this address (a rebinding DNS name) is refused even with the token.
    assert get(dashboard, "/", headers={"Host": f"evil.example:{dashboard.port}"})[0] == 403


def test_nothing_outside_the_folder_is_served(manager, dashboard, storage_dir, tmp_path):
    session = record(manager, tool_calling_run)
    outside = tmp_path / "outside.json"
    outside.write_text(SECRET)
    linked = "20990101T000000_000000_deadbeef"
    os.symlink(outside, storage_dir / f"{linked}.json")
    relative = os.path.relpath(outside, storage_dir)
    for path in [f"/session/{relative}", f"/session/..%2F{outside.name}", f"/session/%2e%2e%2f{outside.name}",
                 f"/session/..%252F{outside.name}", f"/api/session/..%2F..%2F{outside.name}",
                 "/api/session/%2E%2E/stamp", f"/../{outside.name}", f"/{outside}", "/etc/passwd",
                 f"/session/{session.session_id}/../../{outside.name}", f"/session/{linked}",
                 f"/api/session/{linked}", f"/api/session/{linked}/stamp", f"/session/{session.session_id}%00",
                 "/session/", "/api/session//stamp", f"/%2e%2e/%2e%2e/{outside}"]:
        status, _headers, body = get(dashboard, path)
        assert status == 404, (path, status)
        assert SECRET.encode() not in body
    assert linked not in get(dashboard, "/api/sessions")[2].decode()


def test_no_endpoint_writes(manager, dashboard, storage_dir):
    session = record(manager, tool_calling_run)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in storage_dir.iterdir())
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/", "/api/sessions", f"/api/session/{session.session_id}"):
            status, headers, _body = get(dashboard, path, method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(dashboard, "/", method="HEAD")[2] == b""
    assert sorted((p.name, p.stat().st_mtime_ns) for p in storage_dir.iterdir()) == before


def test_bad_filters_are_a_clear_error(manager, dashboard):
    record(manager, tool_calling_run)
    status, _headers, body = get(dashboard, "/api/sessions?since=yesterday-ish")
    assert status == 400 and b"not a time" in body
    status, _headers, body = get(dashboard, "/api/sessions?tool=explode")
    assert status == 200 and len(json.loads(body)) == 1
    assert json.loads(get(dashboard, "/api/sessions?tool=nothing")[2]) == []


def test_list_session_and_live_refresh_in_a_browser(manager, dashboard):
    session = record(manager, tool_calling_run)
    with Browser.start() as browser:
        page = browser.open(dashboard.url, wait_for=f'a:has-text("{session.session_id}")')
        assert page.inner_text("#list tbody tr td:nth-child(4)") == "1"
        page.click(f'a:has-text("{session.session_id}")')
        page.wait_for_selector(".wf .bar")
        assert page.get_attribute('.card[data-fig="tasks"]', "data-value") == "1"
        assert page.locator(".wf .bar.model").count() == 3
        # The program goes on: a second task is written into the same file; the open page shows it.
        managed_run()
        assert manager.flush_data() == dashboard.store.path_for(session.session_id)
        page.wait_for_selector('.card[data-fig="tasks"][data-value="2"]', timeout=15000)
        assert page.locator("details.task").count() == 2
        assert "adder" in page.inner_text("#per-agent")
        page.screenshot("dashboard-session.png")
        assert page.console_errors == []
        origin = f"http://127.0.0.1:{dashboard.port}/"
        assert all(url.startswith(origin) for url in page.requests), page.requests
        page.close()


def test_ui_command_stops_cleanly_on_ctrl_c(manager, storage_dir):
    record(manager, tool_calling_run)
    sessions_before = sorted(p.name for p in storage_dir.glob("*.json"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY")}
    child = subprocess.Popen([sys.executable, "-m", "sop_telemetry", "--dir", str(storage_dir), "ui",
                              "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment)
    try:
        assert child.stdout.readline().startswith("Serving the sessions in ")
        url = child.stdout.readline().removeprefix("Open: ").strip()
        host, _, rest = url.removeprefix("http://").partition("/")
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", "/" + rest)
        assert connection.getresponse().status == 200
        connection.close()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert out == "Stopped.\n" and err == ""
    # It wrote no session of its own (the recording manager may have added its session's tail beside its file).
    assert len(sessions_before) == 1 and sorted(p.name for p in storage_dir.glob("*.json")) == sessions_before
