"""The session viewer: one self-contained HTML page per session (or per pair of sessions), and the local dashboard.

Usage::

    from sop_telemetry.viewer import session_html, comparison_html
    Path("session.html").write_text(session_html(session), encoding="utf-8")
    Path("diff.html").write_text(comparison_html(before, after), encoding="utf-8")

The page holds the session's data, its script and its styles inline and loads nothing: its Content-Security-Policy
forbids any request, so it opens the same from `file://`, an e-mail attachment or a CI artifact. `sop-telemetry ui`
(`sop_telemetry.viewer.server`) serves the same page from 127.0.0.1 with a live refresh.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Dict, Optional

from ..models import TelemetrySession
from ._compare import compare
from ._data import session_data

__all__ = ["comparison_html", "page", "session_data", "session_html"]

# No request of any kind from a file; the dashboard's pages may call back their own server, nothing else.
_CSP_FILE = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
_CSP_SERVED = _CSP_FILE + "; connect-src 'self'"


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _json(data: Any) -> str:
    # Inside <script> the only dangerous sequence is "</" (and "<!--"): escaping every "<" rules both out.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def page(data: Dict[str, Any], title: str, served: bool = False) -> str:
    """The HTML page drawing `data` (a dict with "kind": "session", "compare" or "list")."""
    from .. import __version__

    data = dict(data, version=__version__)
    html = _asset("template.html")
    for marker, value in (("<!--sop:csp-->", _CSP_SERVED if served else _CSP_FILE),
                          ("<!--sop:version-->", __version__),
                          ("<!--sop:title-->", _escape(title)),
                          ("<!--sop:style-->", _asset("viewer.css")),
                          ("<!--sop:script-->", _asset("viewer.js"))):
        html = html.replace(marker, value, 1)
    # The data goes in last, so that nothing in it is taken for a marker.
    head, _, tail = html.partition("<!--sop:data-->")
    return head + _json(data) + tail


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def session_html(session: TelemetrySession, live: Optional[Dict[str, Any]] = None) -> str:
    """One self-contained HTML page showing `session`."""
    data = {"kind": "session", "session": session_data(session)}
    if live is not None:
        data["live"] = live
    return page(data, f"Session {session.session_id} · sop_telemetry", served=live is not None)


def comparison_html(a: TelemetrySession, b: TelemetrySession, task_a: Optional[str] = None,
                    task_b: Optional[str] = None) -> str:
    """One self-contained HTML page comparing two sessions (or one task of each, `task_a` / `task_b`), aligned by
    task and by step, with each session's own view in a tab. A task id that is not in its session: KeyError."""
    data_a, data_b = session_data(a), session_data(b)
    comparison = compare(a, b, task_a, task_b)
    return page({"kind": "compare", "a": data_a, "b": data_b, "comparison": comparison},
                f"{a.session_id} vs {b.session_id} · sop_telemetry")
