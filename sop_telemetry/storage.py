"""Session files on disk: one JSON file per session, written atomically, private to the user.

Usage::

    store = TelemetryDataStore(Path("~/.cache/ept/sop_agents").expanduser())
    store.write(session_id, session.to_json())
    for sid in store.session_ids():          # oldest first
        session = store.load(sid)             # KeyError when missing, SessionLoadError when unreadable

A session still being written by a long-lived process may have a tail beside its file: `.<id>.tail.jsonl`, one
finished task's JSON a line, appended as tasks end so that each is written once (docs/long-running.md). `load`
reads it while the file has no `end_time`; the file is rewritten whole, and the tail removed, when the session ends.

Only names matching the session-file pattern are ever read or removed, so a storage_dir pointed at a busy folder
loses nothing else. Ids are checked against the same pattern before any path is built from them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

if TYPE_CHECKING:
    from .models import TaskExecution, TelemetrySession

logger = logging.getLogger("sop_telemetry")

SESSION_ID_RE = re.compile(r"\A\d{8}T\d{6}_\d{6}_[0-9a-f]{8}\Z")
_FILE_RE = re.compile(r"\A(\d{8}T\d{6}_\d{6}_[0-9a-f]{8})\.json\Z")
_TMP_RE = re.compile(r"\A\.(\d{8}T\d{6}_\d{6}_[0-9a-f]{8})\.json\.[0-9a-f]{8}\.tmp\Z")
_TAIL_RE = re.compile(r"\A\.(\d{8}T\d{6}_\d{6}_[0-9a-f]{8})\.tail\.jsonl\Z")
_STALE_TMP_SECONDS = 3600.0


def new_session_id(now: Optional[float] = None) -> str:
    """A session id that sorts by start time (UTC, microseconds) and is unique across processes."""
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    return f"{moment:%Y%m%dT%H%M%S_%f}_{secrets.token_hex(4)}"


def is_session_id(value: object) -> bool:
    """Whether `value` is a well-formed session id (the only strings ever turned into a path)."""
    return isinstance(value, str) and SESSION_ID_RE.match(value) is not None


class SessionLoadError(Exception):
    """A session file that exists but cannot be read as a session (corrupt, truncated, wrong types, newer schema)."""


class TelemetryDataStore:
    """The session files of one directory: write them atomically, list, load and clean them up.

    Usage::

        store = TelemetryDataStore(Path("/tmp/telemetry"))
        for session_id in store.session_ids():                  # oldest first
            try:
                session = store.load(session_id)               # a validated TelemetrySession
            except SessionLoadError as exc:                    # corrupt, truncated or from a newer version
                print(exc)
        store.cleanup(max_age_days=30, dry_run=True)            # ids of the files that would be removed

    Only files named like sessions are ever read or removed. `fsync=False` skips syncing files to the disk.
    """

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        # The (file, tail) paths of the last session ids asked for: the writer asks for the same few at every write.
        self._paths: Dict[str, Tuple[Path, Path]] = {}
        # Tails whose last append here was written whole: the next one need not look for a torn last line.
        self._whole_tails: set = set()

    # -- paths -------------------------------------------------------------------------------------------------
    def _paths_of(self, session_id: str) -> Optional[Tuple[Path, Path]]:
        paths = self._paths.get(session_id)
        if paths is None:
            if not is_session_id(session_id):
                return None
            if len(self._paths) >= 64:
                self._paths.clear()
            paths = self._paths[session_id] = (self.directory / f"{session_id}.json",
                                               self.directory / f".{session_id}.tail.jsonl")
        return paths

    def path_for(self, session_id: str) -> Optional[Path]:
        """The file of `session_id`, or None if the id is not a valid session id (e.g. holds `/`, `..` or NUL)."""
        paths = self._paths_of(session_id)
        return paths[0] if paths is not None else None

    def tail_path(self, session_id: str) -> Optional[Path]:
        """The tail of `session_id` (tasks appended since its file was last written whole), or None for a bad id."""
        paths = self._paths_of(session_id)
        return paths[1] if paths is not None else None

    def ensure_directory(self) -> None:
        """Creates the directory (mode 0700) if needed; raises NotADirectoryError when the path is something else."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "storage path is not a directory", str(self.directory))

    def unusable(self, private: bool = False) -> Optional[str]:
        """Why session files cannot be written here (the folder is created if missing), or None if they can.
        `private`: the folder must also be ours, not a link (a shared place such as the temp folder)."""
        try:
            self.ensure_directory()
        except OSError as exc:
            if self.directory.exists() and not self.directory.is_dir():
                return "it is a file, not a folder"
            return exc.strerror or str(exc)
        if private:
            st = os.lstat(self.directory)
            if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                return "it is not a private folder of this user"
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return "it is not writable"
        return None

    # -- writing -----------------------------------------------------------------------------------------------
    def write(self, session_id: str, payload: str | bytes, sync: bool = True) -> Path:
        """Writes the session atomically: a temp file in the same directory, fsync (when the store syncs and `sync`
        asks for it; see `sync`), then os.replace."""
        path = self.path_for(session_id)
        if path is None:
            raise ValueError(f"not a session id: {session_id!r}")
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        tmp = self.directory / f".{session_id}.json.{secrets.token_hex(4)}.tmp"
        try:
            write_private(path, data, tmp, fsync=self.fsync and sync)
        except FileNotFoundError:  # (the folder, made on first use or removed since: two system calls fewer a write)
            self.ensure_directory()
            write_private(path, data, tmp, fsync=self.fsync and sync)
        return path

    def append_tail(self, session_id: str, lines: bytes, sync: bool = True) -> Path:
        """Appends `lines` (whole JSON lines, each ending in a newline) to the session's tail. A process killed
        mid-append leaves at most one torn last line, which readers skip."""
        path = self.tail_path(session_id)
        if path is None:
            raise ValueError(f"not a session id: {session_id!r}")
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        whole = self._whole_tails
        try:
            if session_id not in whole and os.fstat(fd).st_size and not _ends_with_newline(fd):
                lines = b"\n" + lines  # after a torn line: the new ones start on their own
            whole.discard(session_id)
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view):]
            if lines.endswith(b"\n"):
                whole.add(session_id)
            if self.fsync and sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def drop_tail(self, session_id: str) -> None:
        """Removes the session's tail (its tasks are in the file now)."""
        path = self.tail_path(session_id)
        if path is not None:
            self._whole_tails.discard(session_id)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def sync(self, path: Path) -> None:
        """fsyncs a file written earlier with ``sync=False``. One gone since (a cleaner removed it) needs none."""
        # Windows' fsync (_commit) needs a handle open for writing; opening one changes nothing in the file.
        flags = (os.O_RDWR if os.name == "nt" else os.O_RDONLY) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------------------------
    def _entries(self) -> Tuple[List[Tuple[str, os.DirEntry]], Dict[str, os.DirEntry]]:
        """(session files, tails by session id) in the directory, by name only."""
        found, tails = [], {}
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    match = _FILE_RE.match(entry.name)
                    if match is not None:
                        found.append((match.group(1), entry))
                    elif entry.name.endswith(".jsonl"):
                        match = _TAIL_RE.match(entry.name)
                        if match is not None:
                            tails[match.group(1)] = entry
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found, tails

    def session_ids(self) -> List[str]:
        """Ids of the stored sessions, oldest first (ids sort by start time). Like `session_files`, only regular
        files count: a folder or a link named like a session is not one we can read."""
        return [sid for sid, _path, _size, _mtime in self.session_files()]

    def session_files(self) -> List[Tuple[str, Path, int, float]]:
        """(id, path, size in bytes, mtime) of each regular session file, oldest first; links are left out. Size and
        mtime count the session's tail too (its latest tasks)."""
        return self._listing()[0]

    def _listing(self) -> Tuple[List[Tuple[str, Path, int, float]], List[Tuple[Path, float]]]:
        """(session_files(), [(path, mtime) of each tail whose session file is missing])."""
        rows = []
        entries, tails = self._entries()
        for sid, entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size, mtime = st.st_size, st.st_mtime
            tail = tails.pop(sid, None)
            if tail is not None:
                try:
                    tail_st = tail.stat(follow_symlinks=False)
                    size, mtime = size + tail_st.st_size, max(mtime, tail_st.st_mtime)
                except OSError:
                    pass
            rows.append((sid, Path(entry.path), size, mtime))
        rows.sort()
        orphans = []
        for tail in tails.values():
            try:
                orphans.append((Path(tail.path), tail.stat(follow_symlinks=False).st_mtime))
            except OSError:
                pass
        return rows, orphans

    def read_bytes(self, session_id: str) -> Optional[bytes]:
        """The raw file, or None when the id is invalid, the file is missing, or it is not a regular file here."""
        path = self.path_for(session_id)
        return _read_regular(path) if path is not None else None

    def load(self, session_id: str) -> "TelemetrySession":
        """Loads and validates a session; raises KeyError if absent, SessionLoadError if unreadable."""
        data = self.read_bytes(session_id)
        if data is None:
            raise KeyError(session_id)
        session = parse_session(data, source=session_id)
        if session.end_time is None:
            self._merge_tail(session)
        return session

    def _merge_tail(self, session: "TelemetrySession") -> None:
        """Adds the tasks of the session's tail: the last line of a task wins, and replaces the file's copy unless
        that one has ended (a tail left over from before the file's last write is older than it). The implicit
        task (records made outside any task) reads as ended while it still grows: the copy with more records wins."""
        path = self.tail_path(session.session_id)
        if path is None:
            return
        data = _read_regular(path)
        if not data:
            return
        from pydantic import ValidationError

        from .models import TaskExecution

        latest: Dict[str, "TaskExecution"] = {}
        for line in data.split(b"\n")[:-1]:  # (after the last newline: a torn line, or nothing)
            try:
                task = TaskExecution.model_validate_json(line)
            except (ValidationError, ValueError):
                continue  # a torn line followed by others
            latest[task.task_id] = task
        if not latest:
            return
        index = {task.task_id: i for i, task in enumerate(session.tasks)}
        for task_id, task in latest.items():
            i = index.get(task_id)
            if i is None:
                session.tasks.append(task)
            elif session.tasks[i].end_time is None or (task.implicit and _records(task) >= _records(session.tasks[i])):
                session.tasks[i] = task

    def iter_sessions(self) -> Iterator["TelemetrySession"]:
        """Every readable session, oldest first, one at a time; unreadable files are logged once and skipped."""
        for sid in self.session_ids():
            try:
                yield self.load(sid)
            except KeyError:
                continue
            except SessionLoadError as exc:
                logger.warning("sop_telemetry: skipping %s", exc)

    # -- cleanup -----------------------------------------------------------------------------------------------
    def cleanup(self, max_age_days: float, dry_run: bool = False, keep: Optional[str] = None) -> List[str]:
        """Removes session files older than `max_age_days` (by last write) and stale temp files of crashed writers.

        Returns the ids removed (or that would be removed with dry_run). `keep` is never removed (the live session).
        """
        cutoff = time.time() - max_age_days * 86400.0
        removed = []
        files, orphans = self._listing()
        for sid, path, _size, mtime in files:
            if sid == keep or mtime >= cutoff:
                continue
            if not dry_run:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                self.drop_tail(sid)
            removed.append(sid)
        if not dry_run:
            for path, mtime in orphans:  # a tail whose file was removed by hand
                if mtime < cutoff:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            self._remove_stale_temp_files()
        return removed

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if _TMP_RE.match(entry.name) is None:
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                    except OSError:
                        pass
        except OSError:
            pass

    def stats(self) -> Tuple[int, int]:
        """(number of session files, their total size in bytes)."""
        files = self.session_files()
        return len(files), sum(size for _, _, size, _ in files)



def write_private(path: Path, data: bytes, tmp: Path, fsync: bool = False) -> None:
    """Writes `data` to `path` whole and readable by this user only: into `tmp` (same folder, new, never through a
    link), fsynced if asked, then renamed over `path`; `tmp` is removed if anything fails."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

def _records(task: "TaskExecution") -> int:
    return len(task.agents) + len(task.tools) + len(task.llm_calls) + len(task.steps)


def _read_regular(path: Path) -> Optional[bytes]:
    """The bytes of `path`, or None when it is missing or not a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO named like a session would otherwise wait for a writer forever (it has no
        # effect on reading a regular file). O_NOFOLLOW: a link is never followed out of the directory.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) == b"\n" if hasattr(os, "pread") else True


def parse_session(data: bytes | str, source: str = "session") -> "TelemetrySession":
    """A session from a file's bytes or text; raises SessionLoadError naming `source` when it is not one."""
    from pydantic import ValidationError

    from .models import TelemetrySession

    try:
        return TelemetrySession.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"msg": str(exc), "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ())) or "file"
        raise SessionLoadError(f"{source}: not a valid session file ({where}: {first.get('msg')})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SessionLoadError(f"{source}: not a valid session file ({exc})") from None
