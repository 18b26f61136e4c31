"""The `sop-telemetry` command line: read, analyse, export and clean up stored sessions; run a program with telemetry.

Usage::

    sop-telemetry list                                   # sessions: id, start, duration, tasks, failed, tokens, cost
    sop-telemetry show latest                            # summary, token and time tables, and the task trees
    sop-telemetry export latest --format csv -o out/     # also json, mermaid, text, html; -o FILE or stdout
    sop-telemetry view latest --open                     # one self-contained HTML page; view A B compares two
    sop-telemetry ui                                     # local read-only dashboard on 127.0.0.1 (Ctrl-C stops)
    sop-telemetry report --since 7d                      # across sessions: per day, model, tool, agent
    sop-telemetry stats
    sop-telemetry cleanup --max-age-days 30 --dry-run
    sop-telemetry run -- python my_agent.py --flag       # telemetry on, no code change; prints the session path
    sop-telemetry --dir /tmp/telemetry --json list       # another storage directory; machine-readable output

Exit status: 0 on success, 1 for a user error (unknown session, bad option) with one line on stderr; `run` exits with
the program's own status (127 when the command is not found, as a shell does). Tables are drawn with rich on a
terminal and as plain text when piped. This process never records or writes a session of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence

PROG = "sop-telemetry"
_FORMATS = ("json", "csv", "mermaid", "text", "html", "otlp")
_ID_HELP = "a session id, a unique prefix of one, 'latest' (the newest readable session), or a session file's path"
_REPORT_ENV = "_SOP_TELEMETRY_RUN_REPORT"


class UserError(Exception):
    """A mistake in how the command was called: reported as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits 2; a bad flag is a user error like any other: one line, status 1.
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {PROG} --help)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `sop-telemetry` command: runs it with `argv` (default: the process's arguments) and returns its exit
    status, e.g. `main(["--json", "list", "--since", "7d"])`. See the module docstring for the commands."""
    _read_only()
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            # A terminal or pipe that cannot encode a tree line or a model name must not end the command.
            reconfigure(errors="backslashreplace")
    try:
        args = _parser().parse_args(argv)
        # Not set_defaults(): that would write the default into the action shared with every sub-command.
        args.dir = getattr(args, "dir", None)
        args.json = getattr(args, "json", False)
        if args.command is None:
            raise UserError(f"a command is needed: list, show, view, export, report, stats, cleanup, ui or run "
                            f"(see {PROG} --help)")
        return int(args.handler(args, _Output(args.json)) or 0)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sop-telemetry list | head`: the reader left; that is not an error.
        # Point stdout at /dev/null so that the flush at exit does not fail again (the recipe of Python's
        # signal module documentation).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as exc:
        # An unreadable directory or file (permissions, a vanished mount): say which, in one line.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _read_only() -> None:
    """This process only reads: whatever else runs in it (a user's sitecustomize, an instrumented import) must not
    make it record, or write a session file next to the ones it is reading."""
    from .collector import switch
    from .manager import TelemetryManager

    TelemetryManager.get_instance().read_only = True
    switch.enabled = False


# -- arguments -----------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # Accepted before or after the command; SUPPRESS keeps a sub-command from resetting what came before it.
    common.add_argument("--dir", metavar="PATH", default=argparse.SUPPRESS,
                        help="storage directory (default: SOP_TELEMETRY_DIR or the platform cache directory)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable JSON output")

    parser = _Parser(prog=PROG, parents=[common],
                     description="Read, analyse, export and clean up sop_telemetry sessions, or run a program "
                                 "with telemetry on.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    listing = command("list", _cmd_list, "list stored sessions, oldest first")
    listing.add_argument("--limit", type=_positive_int, metavar="N", help="only the N most recent")
    _filters(listing)

    show = command("show", _cmd_show, "a session's summary, token and time tables, and task trees")
    show.add_argument("session", metavar="ID", help=_ID_HELP)

    view = command("view", _cmd_view, "write a session as one self-contained HTML page (two: a comparison)")
    view.add_argument("sessions", metavar="ID", nargs="*",
                      help=f"{_ID_HELP} (default latest); give two to compare them")
    view.add_argument("-o", "--output", metavar="FILE",
                      help="where to write the page, - for stdout (default: a private file in the temporary "
                           "directory)")
    view.add_argument("--open", action="store_true", help="open the page in the web browser")
    view.add_argument("--task", metavar="TASK_ID", action="append",
                      help="compare this task (once: the same id in both; twice: the first session's, then the "
                           "second's)")

    export = command("export", _cmd_export,
                     "export a session as JSON, CSV tables, a Mermaid gantt, a text tree or an HTML page, or send "
                     "it over OTLP")
    export.add_argument("session", metavar="ID", nargs="?",
                        help=f"{_ID_HELP} (otlp: or --since/--until instead)")
    export.add_argument("--format", "-f", choices=_FORMATS, default="json")
    export.add_argument("-o", "--output", metavar="PATH",
                        help="file to write (for csv: a directory, which gets one file per table); default stdout")
    export.add_argument("--task", metavar="TASK_ID", help="only this task (mermaid, text)")
    export.add_argument("--table", metavar="NAME",
                        help="csv to stdout: which table (tasks, agents, tools, llm_calls, steps; default tasks)")
    export.add_argument("--endpoint", metavar="URL",
                        help="otlp: collector URL (default: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)")
    export.add_argument("--header", metavar="KEY=VALUE", action="append", help="otlp: a request header (repeatable)")
    export.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", default=10.0,
                        help="otlp: seconds per request (default 10)")
    _filters(export, "sessions to send, --format otlp only: ")

    report = command("report", _cmd_report, "figures across sessions: per day, model, tool and agent")
    _filters(report)

    command("stats", _cmd_stats, "storage directory statistics")

    ui = command("ui", _cmd_ui, "a local read-only dashboard of the sessions (127.0.0.1, token in the URL)")
    ui.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default: a free one)")
    ui.add_argument("--no-browser", action="store_true", help="do not open the web browser")
    _filters(ui)

    cleanup = command("cleanup", _cmd_cleanup, "remove session files older than N days")
    cleanup.add_argument("--max-age-days", type=_non_negative_float, metavar="N", default=None,
                         help="age limit in days, by last write (default: the configured max_file_age_days, 14)")
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    run = command("run", _cmd_run, "run a program with telemetry on, then print where its session was written")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    return parser


def _filters(sub: argparse.ArgumentParser, scope: str = "") -> None:
    sub.add_argument("--since", metavar="WHEN",
                     help=f"{scope}from this time: an ISO date or time (2026-01-31, 2026-01-31T12:00, with an "
                          "optional Z or +02:00), 'today', or a time ago as a number and a unit: s (seconds), "
                          "m (minutes), h (hours), d (days), w (weeks), e.g. 30m, 24h, 7d, 1.5w")
    sub.add_argument("--until", metavar="WHEN", help=f"{scope}before this time (same forms as --since)")
    sub.add_argument("--agent", metavar="NAME", help="tasks that ran an agent of this name or type")
    sub.add_argument("--model", metavar="MODEL", help="tasks that called this model")
    sub.add_argument("--tool", metavar="TOOL", help="tasks that called this tool")
    sub.add_argument("--status", metavar="STATUS",
                     help="tasks with this status (pending, running, completed, failed, cancelled)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of days >= 0: {text!r}")
    return value


# -- output --------------------------------------------------------------------------------------------------------
class _Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.rich = not as_json and sys.stdout.isatty() and _has_rich()
        # An 80-column terminal: tables drop their borders and `list` its seconds, so that ids stay whole.
        self.narrow = self.rich and _terminal_width() < 100

    def data(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))

    def line(self, text: str = "") -> None:
        print(text)

    def tables(self, tables: List[Any]) -> None:
        if not self.rich:
            from .analysis import render_tables

            print(render_tables(tables))
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console()
        for table in tables:
            if table.columns is None:
                shown = Table(title=table.title, title_justify="left", show_header=False, box=None)
                shown.add_column(style="bold")
                shown.add_column()
            else:
                from rich import box

                if self.narrow:
                    shown = Table(title=table.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                                  collapse_padding=True)
                else:
                    shown = Table(title=table.title, title_justify="left")
                for index, (name, align) in enumerate(table.columns):
                    # The first column names the row (a session id, a task, a model): what a user copies. It is
                    # kept whole on a narrow terminal, and the other columns' values wrap first.
                    whole = max([len(name), *(len(row[0]) for row in table.rows)]) if index == 0 else len(name)
                    shown.add_column(name, justify="right" if align == ">" else "left", no_wrap=index == 0,
                                     min_width=whole, overflow="ellipsis" if index == 0 else "fold")
            for row in table.rows:
                # Text, not markup: a model or agent name like "[x]" must be shown as it is.
                shown.add_row(*(Text(cell) for cell in row))
            console.print(shown)


def _json_default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if isoformat is not None else str(value)


def _terminal_width() -> int:
    from rich.console import Console

    return Console().width


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# -- storage -------------------------------------------------------------------------------------------------------
def _directory(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir).expanduser()
    from .analysis import default_directory
    from .config import ConfigError

    try:
        return default_directory()
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _store(args: argparse.Namespace, check: bool = True) -> Any:
    """The storage directory's store; `check`: a file where the folder should be is a user error."""
    from .storage import TelemetryDataStore

    directory = _directory(args)
    if check and directory.exists() and not directory.is_dir():
        from .config import default_storage_dir

        where = "--dir" if args.dir else "SOP_TELEMETRY_DIR"
        message = f"{directory} ({where}) is a file, not a folder"
        default = default_storage_dir()
        if default != directory:
            message += f"; programs given it write their sessions to {default} instead (--dir {default})"
        raise UserError(message)
    return TelemetryDataStore(directory)


def _resolve(store: Any, wanted: str) -> str:
    """A session id from an id, a unique prefix of one, or a session file's name; UserError otherwise. Only regular
    session files directly in the directory count: links and other names are never followed."""
    if wanted.endswith(".json") and os.sep not in wanted and not (os.altsep and os.altsep in wanted):
        wanted = wanted[: -len(".json")]
    ids = [sid for sid, _path, _size, _mtime in store.session_files()]
    if not ids:
        raise UserError(f"no sessions in {store.directory}")
    if wanted in ids:
        return wanted
    if wanted and all(c.isalnum() or c in "_T" for c in wanted):
        matches = [sid for sid in ids if sid.startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"{wanted!r} matches {len(matches)} sessions; give more of the id")
    raise UserError(f"no session {wanted!r} in {store.directory}")


def _load(store: Any, wanted: str) -> Any:
    """The session `wanted` names: the path of a session file (anywhere, as `run` prints it), or see _resolve;
    'latest' is the newest readable one, with a warning for each newer file that cannot be read."""
    from .storage import SessionLoadError, TelemetryDataStore, is_session_id, parse_session

    path = Path(wanted).expanduser()
    if wanted != "latest" and (os.sep in wanted or wanted.endswith(".json")) and path.is_file():
        try:
            if path.suffix == ".json" and is_session_id(path.stem):  # with its tail, if it has one
                return TelemetryDataStore(path.parent).load(path.stem)
            return parse_session(path.read_bytes(), source=str(path))
        except KeyError:
            raise UserError(f"no session file {path}") from None
        except SessionLoadError as exc:
            raise UserError(f"cannot read session {exc}") from None
    if wanted == "latest":
        ids = store.session_ids()
        if not ids:
            raise UserError(f"no sessions in {store.directory}")
        for session_id in reversed(ids):
            try:
                return store.load(session_id)
            except KeyError:
                continue
            except SessionLoadError as exc:
                _warn(f"skipped {exc}")
        raise UserError(f"no readable session in {store.directory}")
    session_id = _resolve(store, wanted)
    try:
        return store.load(session_id)
    except KeyError:
        raise UserError(f"no session {wanted!r} in {store.directory}") from None
    except SessionLoadError as exc:
        raise UserError(f"cannot read session {exc}") from None


def _sessions(args: argparse.Namespace, store: Any, skipped: Optional[List[str]] = None) -> Any:
    """The matching sessions, one file at a time; call `_check_filters` first. Unreadable files are warned about
    and skipped (their ids appended to `skipped`)."""
    from .analysis import load_sessions

    def on_error(session_id: str, message: str) -> None:
        _warn(f"skipped {message}")
        if skipped is not None:
            skipped.append(session_id)

    return load_sessions(since=args.since, until=args.until, agent=args.agent, model=args.model, tool=args.tool,
                         status=args.status, directory=store.directory, on_error=on_error)


def _check_filters(args: argparse.Namespace) -> None:
    """Bad filter values are user errors, caught before any file is read (and even when there is none)."""
    from .analysis import parse_time
    from .status import TaskStatus

    try:
        for value in (args.since, args.until):
            if value is not None:
                parse_time(value)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    known = [status.value for status in TaskStatus]
    if args.status is not None and args.status not in known:
        raise UserError(f"unknown status {args.status!r} (one of: {', '.join(known)})")


def _missing(store: Any, out: _Output, empty: Any) -> bool:
    if store.directory.is_dir():
        return False
    if out.json:
        out.data(empty)
    else:
        out.line(f"No sessions: {store.directory} does not exist yet.")
    return True


# -- commands ------------------------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace, out: _Output) -> int:
    from .analysis import analyze_token_usage, format_cost, format_duration
    from .status import TaskStatus

    _check_filters(args)
    store = _store(args)
    if _missing(store, out, []):
        return 0
    rows: deque = deque(maxlen=args.limit)
    for session in _sessions(args, store):
        usage = analyze_token_usage(session).total
        rows.append({
            "session_id": session.session_id,
            "series_id": session.series_id or session.session_id,
            "part": session.part or 1,
            "start_time": session.start_time,
            "duration": session.total_duration,
            "tasks": len(session.tasks),
            "failed_tasks": sum(TaskStatus(t.status) is TaskStatus.FAILED for t in session.tasks),
            "total_tokens": usage.total_tokens,
            "cost_estimate": usage.cost,
            "unpriced_calls": usage.unpriced_calls,
        })
    if out.json:
        out.data(list(rows))
        return 0
    if not rows:
        filtered = any(getattr(args, k) is not None for k in ("since", "until", "agent", "model", "tool", "status"))
        out.line(f"No sessions {'match ' if filtered else ''}in {store.directory}.")
        return 0
    from .analysis import Table

    start_format = "%m-%d %H:%M" if out.narrow else "%Y-%m-%d %H:%M:%S"
    # The part column only when a long-lived process's series is among them: each of its files is one row.
    series = {r["series_id"] for r in rows if r["part"] > 1 or r["series_id"] != r["session_id"]}
    labels = [f"{r['part']} of {r['series_id']}" if r["series_id"] in series else "" for r in rows]
    out.tables([Table(f"Sessions in {store.directory}",
                      [("session", "<"), *([("part", "<")] if series else []), ("start", "<"), ("duration", ">"),
                       ("tasks", ">"), ("failed", ">"), ("tokens", ">"), ("cost", ">")],
                      [[r["session_id"], *([label] if series else []),
                        r["start_time"].astimezone().strftime(start_format),
                        format_duration(r["duration"]), str(r["tasks"]), str(r["failed_tasks"]),
                        f"{r['total_tokens']:,}", format_cost(r["cost_estimate"], r["unpriced_calls"])]
                       for r, label in zip(rows, labels, strict=True)])])
    return 0


def _cmd_show(args: argparse.Namespace, out: _Output) -> int:
    from .analysis import Table, analyze_performance, analyze_token_usage, format_cost
    from .exports import to_text_tree

    session = _load(_store(args), args.session)
    tokens = analyze_token_usage(session)
    performance = analyze_performance(session)
    if out.json:
        out.data({
            "session_id": session.session_id,
            "series_id": session.series_id or session.session_id,
            "part": session.part or 1,
            "start_time": session.start_time,
            "end_time": session.end_time,
            "duration": session.total_duration,
            "tasks": [{"task_id": t.task_id, "status": t.status.value, "duration": t.duration,
                       "total_tokens": t.token_usage.total_tokens} for t in session.tasks],
            "tokens": tokens.model_dump(mode="json"),
            "performance": performance.model_dump(mode="json"),
        })
        return 0
    env = session.environment
    series_id, part = session.series_id or session.session_id, session.part or 1
    header = Table(f"Session {session.session_id}", None, [
        *([["part", f"{part} of {series_id}"]] if part > 1 else []),
        ["started", session.start_time.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")],
        ["tasks", str(len(session.tasks))],
        ["total tokens", f"{tokens.total.total_tokens:,}"],
        ["estimated cost", format_cost(tokens.total.cost, tokens.total.unpriced_calls)],
        ["python", env.python_version or "-"],
        ["frameworks", ", ".join(f"{name} {version}" for name, version in env.frameworks.items()) or "-"],
        ["directory", env.working_directory or "-"],
    ])
    out.tables([header, *tokens.tables()[1:], *performance.tables()])  # (the first: durations and time split)
    out.line()
    out.line(to_text_tree(session).rstrip("\n"))
    return 0


def _cmd_export(args: argparse.Namespace, out: _Output) -> int:
    from . import exports

    if args.format == "otlp":
        return _export_otlp(args, out)
    if args.session is None:
        if args.since is not None or args.until is not None:
            raise UserError(f"--since/--until select sessions for --format otlp only; --format {args.format} "
                            "exports one session: give its ID (or 'latest')")
        raise UserError("give a session ID (or 'latest')")
    session = _load(_store(args), args.session)
    target = None if args.output in (None, "-") else Path(args.output).expanduser()
    if args.task is not None and args.format not in ("mermaid", "text"):
        raise UserError("--task applies to --format mermaid or text")
    if args.table is not None and (args.format != "csv" or target is not None):
        raise UserError("--table applies to --format csv written to stdout")
    try:
        if args.format == "csv" and target is not None:
            written = list(exports.write_csv(session, target).values())
        else:
            if args.format == "json":
                text = exports.to_json(session)
            elif args.format == "csv":
                text = exports.to_csv(session, args.table or "tasks")
            elif args.format == "mermaid":
                text = exports.to_mermaid(session, args.task)
            elif args.format == "html":
                from .viewer import session_html

                text = session_html(session)
            else:
                text = exports.to_text_tree(session, args.task)
            if target is None:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                return 0
            target.write_text(text, encoding="utf-8", newline="")
            written = [target]
    except (KeyError, ValueError) as exc:
        raise UserError(str(exc.args[0]) if exc.args else str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or target}: {exc.strerror or exc}") from None
    if out.json:
        out.data({"written": [str(p) for p in written]})
    else:
        for path in written:
            out.line(f"Wrote {path}")
    return 0


def _cmd_view(args: argparse.Namespace, out: _Output) -> int:
    from .viewer import comparison_html, session_html

    wanted = args.sessions or ["latest"]
    if len(wanted) > 2:
        raise UserError("view takes one session, or two to compare")
    tasks = args.task or []
    if len(tasks) > 2 or (tasks and len(wanted) == 1):
        raise UserError("--task picks the tasks to compare: give two sessions (the same one twice for two of its "
                        "tasks) and --task once or twice")
    store = _store(args)
    sessions = [_load(store, ref) for ref in wanted]
    try:
        if len(sessions) == 1:
            text = session_html(sessions[0])
        else:
            text = comparison_html(sessions[0], sessions[1], *(tasks + [None] * (2 - len(tasks))))
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output).expanduser() if args.output else _view_file("-vs-".join(s.session_id
                                                                                      for s in sessions))
    try:
        _write_private(target, text)
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or target}: {exc.strerror or exc}") from None
    if out.json:
        out.data({"written": [str(target)]})
    else:
        out.line(f"Wrote {target}")
    if args.open:
        import webbrowser

        if not webbrowser.open(target.resolve().as_uri()):
            _warn(f"no web browser could be started; open {target} yourself")
    return 0


def _view_file(name: str) -> Path:
    """A private place for pages written without -o: the pages hold the session's figures."""
    folder = Path(tempfile.gettempdir()) / f"sop-telemetry-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or (hasattr(os, "getuid") and folder.stat().st_uid != os.getuid()):
        raise UserError(f"{folder} is not this user's own folder; give -o FILE")
    return folder / f"{name}.html"


def _write_private(target: Path, text: str) -> None:
    """Written whole (temp file, then rename) and readable by this user only."""
    from .storage import write_private

    write_private(target, text.encode("utf-8"), target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp"))


def _cmd_ui(args: argparse.Namespace, out: _Output) -> int:
    from .viewer.server import FILTERS, DashboardServer

    _check_filters(args)
    try:
        server = DashboardServer(_directory(args), port=args.port,
                                 filters={k: getattr(args, k) for k in FILTERS})
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    if out.json:
        out.data({"url": server.url, "directory": str(server.store.directory)})
    else:
        out.line(f"Serving the sessions in {server.store.directory} (read-only); Ctrl-C stops.")
        out.line(f"Open: {server.url}")
    sys.stdout.flush()
    if not args.no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        if not out.json:
            out.line("Stopped.")
    finally:
        server.server_close()
    return 0


def _export_otlp(args: argparse.Namespace, out: _Output) -> int:
    """Backfill: sends stored sessions to an OTLP/HTTP collector. Ids are derived from the records, so sending a
    session twice gives the same trace, which backends recognise."""
    try:
        from .otel import export_sessions_otlp
    except ImportError as exc:  # the message names the extra to install
        raise UserError(str(exc)) from None
    store = _store(args)
    skipped: List[str] = []
    if args.session is not None:
        sessions: Any = [_load(store, args.session)]
    elif args.since is None and args.until is None:
        raise UserError("give a session ID or --since/--until")
    else:
        _check_filters(args)
        sessions = _sessions(args, store, skipped)
    headers = {}
    for item in args.header or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--header takes KEY=VALUE, not {item!r}")
        headers[key.strip()] = value
    result = export_sessions_otlp(sessions, endpoint=args.endpoint, headers=headers or None, timeout=args.timeout)
    ok = result.ok and not skipped
    if out.json:
        out.data({"endpoint": result.endpoint, "sessions": result.sessions, "tasks": result.tasks,
                  "spans": result.spans, "failed_spans": result.failed_spans, "errors": list(result.errors),
                  "unreadable_sessions": skipped, "ok": ok})
    else:
        out.line(result.summary() + (f"; {len(skipped)} unreadable session file(s) not sent" if skipped else ""))
    return 0 if ok else 1  # (a cron job must see that something was not sent)


def _cmd_report(args: argparse.Namespace, out: _Output) -> int:
    from .analysis import summarize_sessions

    _check_filters(args)
    store = _store(args)
    if _missing(store, out, {"sessions": 0}):
        return 0
    summary = summarize_sessions(_sessions(args, store))
    if out.json:
        out.data(summary.model_dump(mode="json"))
    elif summary.sessions == 0:
        out.line(f"No sessions match in {store.directory}.")
    else:
        out.tables(summary.tables())
    return 0


def _cmd_stats(args: argparse.Namespace, out: _Output) -> int:
    from . import registry
    from .analysis import Table
    from .storage import SessionLoadError

    store = _store(args)
    files = store.session_files()
    readable, unreadable = [], []
    for session_id, *_rest in files:  # (a file that only looks like a session is not one)
        try:
            store.load(session_id)
        except KeyError:
            continue
        except SessionLoadError as exc:
            _warn(f"skipped {exc}")
            unreadable.append(session_id)
        else:
            readable.append(session_id)
    data: Dict[str, Any] = {
        "storage_path": str(store.directory),
        "exists": store.directory.is_dir(),
        "sessions": len(readable),
        "unreadable_files": unreadable,
        "total_files": len(files),
        "total_bytes": sum(size for _sid, _path, size, _mtime in files),
        "oldest_session": readable[0] if readable else None,
        "newest_session": readable[-1] if readable else None,
        "last_write": max((mtime for *_rest, mtime in files), default=None),
        "integrations": registry.describe(),
    }
    if out.json:
        out.data(data)
        return 0
    last = "-" if data["last_write"] is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                                time.localtime(data["last_write"]))
    out.tables([Table("Storage", None, [
        ["directory", data["storage_path"] + ("" if data["exists"] else " (does not exist yet)")],
        ["sessions", str(data["sessions"])],
        ["session files", f"{data['total_files']}" + (f" ({len(unreadable)} unreadable)" if unreadable else "")],
        ["total size", _size(data["total_bytes"])],
        ["oldest session", data["oldest_session"] or "-"],
        ["newest session", data["newest_session"] or "-"],
        ["last write", last],
    ]), Table("Integrations", [(name, "<") for name in ("integration", "framework version", "supported", "selected")], [
        [row["name"], row["version"] or "not installed", row["supported"] or "-", "yes" if row["selected"] else "no"]
        for row in data["integrations"]
    ])])
    return 0


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _cmd_cleanup(args: argparse.Namespace, out: _Output) -> int:
    store = _store(args)
    age = args.max_age_days
    if age is None:
        from .config import TelemetryConfig

        age = TelemetryConfig().max_file_age_days
    if not store.directory.is_dir():
        if out.json:
            out.data({"removed": [], "dry_run": args.dry_run, "max_age_days": age})
        else:
            out.line(f"Nothing to clean: {store.directory} does not exist.")
        return 0
    removed = store.cleanup(age, dry_run=args.dry_run)
    if out.json:
        out.data({"removed": removed, "dry_run": args.dry_run, "max_age_days": age})
        return 0
    verb = "Would remove" if args.dry_run else "Removed"
    out.line(f"{verb} {len(removed)} session file(s) older than {age:g} days from {store.directory}.")
    for session_id in removed:
        out.line(f"  {session_id}")
    return 0


# -- run -----------------------------------------------------------------------------------------------------------
_SITECUSTOMIZE = '''\
"""Written by `sop-telemetry run`: switches sop_telemetry on in every Python process of the run, then runs the
sitecustomize this file hides, if there is one."""
import os as _os
import sys as _sys


def _sop_telemetry_report(path):
    # Registered before sop_telemetry registers its own exit hook, so it runs after the session's final write.
    # Says what this process wrote, or why it wrote nothing.
    try:
        import json
        from sop_telemetry.error_handler import get_error_handler
        from sop_telemetry.manager import TelemetryManager

        manager = TelemetryManager._instance
        collector = getattr(manager, "_collector", None)
        entry = {"pid": _os.getpid(), "recorded": bool(collector is not None and collector.has_records())}
        written = getattr(manager, "last_flush_path", None)
        if written is not None:
            entry["path"] = str(written)
        failed = get_error_handler().get_error_summary().get("storage.write")
        if failed:
            entry["error"] = failed["last_error"]
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps(entry) + "\\n")
    except Exception:
        pass


def _sop_telemetry_start():
    here = _os.path.dirname(_os.path.abspath(__file__))
    report = _os.environ.get("%(report)s")
    if report:
        import atexit

        atexit.register(_sop_telemetry_report, report)
    try:
        import sop_telemetry  # noqa: F401
    except Exception as exc:
        _sys.stderr.write("sop-telemetry run: telemetry is off in %%s: cannot import sop_telemetry (%%s)\\n"
                          %% (_sys.executable, exc))
    # Chain to the sitecustomize further down the path, as if this one were not there.
    mine = _sys.modules.pop("sitecustomize", None)
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]
    try:
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            _sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\\n%%s: %%s\\n"
                              %% (type(exc).__name__, exc))
        _sys.modules.setdefault("sitecustomize", mine)
    except Exception as exc:
        _sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\\n%%s: %%s\\n"
                          %% (type(exc).__name__, exc))
        _sys.modules.setdefault("sitecustomize", mine)


_sop_telemetry_start()
''' % {"report": _REPORT_ENV}


def _cmd_run(args: argparse.Namespace, out: _Output) -> int:
    program = list(args.program)
    if program[:1] == ["--"]:
        program = program[1:]
    if not program:
        raise UserError(f"run needs a command, e.g. {PROG} run -- python my_agent.py")
    store = _store(args, check=False)  # (a program given a file there falls back to another folder, and says so)
    before = {sid: mtime for sid, _path, _size, mtime in store.session_files()}
    with tempfile.TemporaryDirectory(prefix="sop_telemetry_run_") as scratch:
        hook = Path(scratch) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
        report = Path(scratch) / "written.jsonl"
        report.touch()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
        env[_REPORT_ENV] = str(report)
        if args.dir:
            env["SOP_TELEMETRY_DIR"] = str(store.directory.resolve())
        try:
            child = subprocess.Popen(program, env=env)
        except FileNotFoundError:
            raise UserError(f"command not found: {program[0]}", code=127) from None
        except OSError as exc:
            raise UserError(f"cannot run {program[0]}: {exc.strerror or exc}", code=126) from None
        # Ctrl-C reaches the whole foreground process group: the program decides what it means, we wait for it.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            status = child.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        entries = _reports(report)
        written = _written_sessions(entries, store, before, child.pid)
    why = None if written else _why_nothing(entries, env)
    if out.json:
        out.data({"exit_code": status, "sessions": [str(p) for p in written], "no_session_reason": why})
    elif written:
        for path in written:
            print(f"{PROG}: session written to {path}", file=sys.stderr)
    else:
        print(f"{PROG}: no session was written: {why}", file=sys.stderr)
    return status if status >= 0 else 128 - status


def _reports(report: Path) -> List[Dict[str, Any]]:
    """What each Python process of the run said at its exit (see _SITECUSTOMIZE)."""
    try:
        lines = report.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _why_nothing(entries: List[Dict[str, Any]], env: Dict[str, str]) -> str:
    from .collector import env_disabled

    failed = [entry["error"] for entry in entries if entry.get("error")]
    if failed:
        return f"storing it failed ({failed[0]}); set SOP_TELEMETRY_DIR or --dir to a writable folder"
    if env_disabled(env):
        return "telemetry is disabled by SOP_TELEMETRY_DISABLED"
    if entries:
        return "the program ran no agent, so nothing was recorded"
    return ("no Python process of the run loaded sop_telemetry (is the command a Python program of this "
            "environment? an import error would be shown above)")


def _written_sessions(entries: List[Dict[str, Any]], store: Any, before: Dict[str, float],
                      child_pid: int) -> List[Path]:
    """Session files of the run: those its processes reported at exit, plus files new or changed in the storage
    directory that a process of the run wrote (a process that ended with os._exit reports nothing)."""
    found: List[Path] = []
    pids: set = {child_pid}
    for entry in entries:
        pids.add(entry.get("pid"))
        path = Path(entry.get("path") or "")
        if path.name and path not in found:
            found.append(path)
    from .storage import SessionLoadError

    for sid, path, _size, mtime in store.session_files():
        if path in found or before.get(sid) == mtime:
            continue
        try:
            pid = store.load(sid).environment.pid
        except (KeyError, SessionLoadError):
            continue
        if pid in pids:
            found.append(path)
    return found
