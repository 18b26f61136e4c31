"""`sop-telemetry ui`: a local, read-only dashboard over the sessions folder (standard library only).

Usage::

    server = DashboardServer(Path("~/.cache/ept/sop_agents").expanduser())   # 127.0.0.1, a free port
    print(server.url)                # http://127.0.0.1:PORT/?token=...  (the token is required on every request)
    server.serve_forever()           # Ctrl-C (KeyboardInterrupt) ends it; server.server_close() releases the port

Safe by default: it listens on 127.0.0.1 only; every request must carry the random token of this run (as Jupyter
does), since the session files are private to their user; a Host header other than this address is refused (a web
page cannot reach it through DNS rebinding); only GET and HEAD are answered; nothing is read but session files
named by a valid session id in the folder, through the store (which never follows a link).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import stat
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from ..storage import SessionLoadError, TelemetryDataStore, is_session_id

logger = logging.getLogger("sop_telemetry")

FILTERS = ("since", "until", "agent", "model", "tool", "status")
_SESSION = re.compile(r"\A/session/([^/]+)\Z")
_API_SESSION = re.compile(r"\A/api/session/([^/]+)(/stamp)?\Z")
POLL_SECONDS = 1.5


class DashboardServer(ThreadingHTTPServer):
    """The dashboard over the session files in `directory`, on 127.0.0.1:`port` (0: a free port). `token`: the one
    every request must carry (default: a new random one); `filters`: the list's defaults (the keys of FILTERS)."""

    daemon_threads = True

    def __init__(self, directory: Path, port: int = 0, token: Optional[str] = None,
                 filters: Optional[Dict[str, str]] = None) -> None:
        self.store = TelemetryDataStore(Path(directory))
        self.token = token or secrets.token_urlsafe(24)
        self.filters = {k: v for k, v in (filters or {}).items() if v}
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def port(self) -> int:
        """The port listened on (the one the system gave, when asked for 0)."""
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The address to open, token included."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "sop-telemetry-ui"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines carry the token: they are not logged.
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only dashboard: only GET and HEAD\n", "text/plain",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    # -- routing ----------------------------------------------------------------------------------------------
    def _answer(self, head: bool) -> None:
        self._head_only = head
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if not self._allowed_host():
            return self._send(HTTPStatus.FORBIDDEN, b"unknown host\n", "text/plain")
        token = query.get("token", [""])[0]
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            return self._send(HTTPStatus.FORBIDDEN, b"this dashboard needs the token printed when it started "
                                                    b"(open the URL with ?token=...)\n", "text/plain")
        path = unquote(parts.path)
        try:
            if path == "/":
                return self._html(self._list_page())
            if path == "/api/sessions":
                return self._list(query)
            match = _SESSION.match(path)
            if match is not None:
                return self._session_page(match.group(1))
            match = _API_SESSION.match(path)
            if match is not None:
                return self._session_api(match.group(1), stamp_only=bool(match.group(2)))
        except _Refused as refused:
            return self._send(refused.status, refused.message.encode() + b"\n", "text/plain")
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _allowed_host(self) -> bool:
        host = self.headers.get("Host", "")
        return host in (f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}")

    # -- pages and data -----------------------------------------------------------------------------------
    def _list_page(self) -> str:
        from . import page

        return page({"kind": "list", "directory": str(self.server.store.directory),
                     "filters": self.server.filters}, "Sessions · sop_telemetry", served=True)

    def _list(self, query: Dict[str, list]) -> None:
        from ..analysis import load_sessions, parse_time

        wanted = dict(self.server.filters)
        wanted.update({k: query[k][0] for k in FILTERS if query.get(k, [""])[0]})
        try:
            for key in ("since", "until"):
                if key in wanted:
                    parse_time(wanted[key])
            rows = [_row(s) for s in load_sessions(directory=self.server.store.directory,
                                                   on_error=lambda _sid, _message: None, **wanted)]
        except ValueError as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, str(exc)) from None
        self._json(rows)

    def _load(self, session_id: str) -> Tuple[Any, str]:
        if not is_session_id(session_id):
            raise _Refused(HTTPStatus.NOT_FOUND, "no such session")
        stamp = self._stamp(session_id)
        try:
            return self.server.store.load(session_id), stamp
        except KeyError:
            raise _Refused(HTTPStatus.NOT_FOUND, "no such session") from None
        except SessionLoadError as exc:
            raise _Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"cannot read session {exc}") from None

    def _stamp(self, session_id: str) -> str:
        path = self.server.store.path_for(session_id)
        try:
            found = os.stat(path, follow_symlinks=False) if path is not None else None
        except OSError:
            found = None
        # A link, or anything else named like a session, is not one.
        if found is None or not stat.S_ISREG(found.st_mode):
            raise _Refused(HTTPStatus.NOT_FOUND, "no such session")
        try:  # a live part's latest tasks are in its tail (docs/long-running.md)
            tail = os.stat(self.server.store.tail_path(session_id), follow_symlinks=False)  # type: ignore[arg-type]
            tail_stamp = f"-{tail.st_mtime_ns}-{tail.st_size}"
        except OSError:
            tail_stamp = ""
        return f"{found.st_mtime_ns}-{found.st_size}{tail_stamp}"

    def _session_page(self, session_id: str) -> None:
        from . import session_html

        session, stamp = self._load(session_id)
        live = {"stamp": stamp, "stamp_url": f"/api/session/{session_id}/stamp",
                "data_url": f"/api/session/{session_id}", "interval": int(POLL_SECONDS * 1000)}
        self._html(session_html(session, live=live))

    def _session_api(self, session_id: str, stamp_only: bool) -> None:
        if stamp_only:
            if not is_session_id(session_id):
                raise _Refused(HTTPStatus.NOT_FOUND, "no such session")
            return self._json({"stamp": self._stamp(session_id)})
        from ._data import session_data

        session, stamp = self._load(session_id)
        self._json({"stamp": stamp, "session": session_data(session)})

    # -- responses ----------------------------------------------------------------------------------------
    def _html(self, text: str) -> None:
        self._send(HTTPStatus.OK, text.encode("utf-8"), "text/html; charset=utf-8")

    def _json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(value, default=str).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                   # The token is in the URL: no page of ours may pass it on in a Referer.
                   "Referrer-Policy": "no-referrer", **(extra or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _row(session: Any) -> Dict[str, Any]:
    from ..analysis import analyze_token_usage
    from ..status import TaskStatus

    usage = analyze_token_usage(session).total
    statuses = [TaskStatus(t.status) for t in session.tasks]
    return {"session_id": session.session_id, "start_time": session.start_time.isoformat(),
            "duration": session.total_duration, "tasks": len(session.tasks),
            "failed_tasks": statuses.count(TaskStatus.FAILED), "running": TaskStatus.RUNNING in statuses,
            "total_tokens": usage.total_tokens, "cost": usage.cost, "unpriced_calls": usage.unpriced_calls}
