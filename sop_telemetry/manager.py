"""The manager: one per process; owns the configuration, the current session's collector and its file.

Usage::

    from sop_telemetry import TelemetryManager
    manager = TelemetryManager.get_instance()
    manager.initialize({"storage_dir": "/tmp/telemetry"})   # optional: zero configuration works
    collector = manager.get_collector()
    manager.flush_data()                                     # optional: files are written without it
    manager.wait_until_written(timeout=5)                    # until the writer has written the tasks ended so far
    session = manager.get_session_data()                     # the current session
    print(manager.get_storage_stats()["storage_path"])

Writing happens on a background thread: when a task ends (at once, unless the last write was so recent that
rewriting now would keep the writer busy more than ~5% of the time), every `flush_interval` seconds while records
arrive, and once more, synchronously, at interpreter exit. A process that records nothing writes nothing. Files are
fsynced at most once every `fsync_interval` seconds (a write sooner than that is renamed into place at once and
synced when the interval is over); an explicit flush and the exit's write are synced at once.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from .collector import (
    DEFAULT_MAX_SESSION_BYTES,
    DEFAULT_MAX_TASKS_PER_SESSION,
    TelemetryCollector,
    _copies,
    current,
    env_disabled,
    size_units,
    switch,
)
from .error_handler import get_error_handler, guard, report, safe_telemetry_operation
from .status import TaskStatus

if TYPE_CHECKING:
    from .config import TelemetryConfig
    from .models import TaskExecution, TelemetrySession
    from .storage import TelemetryDataStore

logger = logging.getLogger("sop_telemetry")

_WRITE_BACKOFF = 20.0  # the writer spends at most about 1/21 of the time writing
_MAX_WRITE_PAUSE = 2.0

# Recording must start without pydantic (slow to import; docs/design.md): the collector is made at once, and the
# configuration, storage and models are imported on first use by the API below or by the writer thread.


class TelemetryManager:
    """The process's telemetry: its configuration, its session (the collector) and the thread that writes it.

    One per process; get it with `TelemetryManager.get_instance()`. Nothing needs setting up: the first record
    starts it with the defaults. Usage::

        manager = TelemetryManager.get_instance()
        manager.initialize({"storage_dir": "/tmp/telemetry", "capture_content": True})   # optional, once, early
        ...                                                  # agents run: their records go to the session
        session = manager.get_session_data()                 # this process's session so far (a TelemetrySession)
        path = manager.flush_data()                          # write it now (it is written at task ends and exit)
        manager.wait_until_written(timeout=5)                # or wait for the writer thread to have written it
        manager.get_all_session_ids()                        # stored sessions, oldest first
        manager.disable_telemetry()                          # stop recording, until enable_telemetry()

    No method raises into the program except `initialize` (ConfigError for a bad configuration); the others log
    and count their own errors (`sop_telemetry.get_error_handler()`) and return a default.
    """

    _instance: Optional["TelemetryManager"] = None
    _instance_lock = threading.Lock()

    @classmethod
    def get_instance(cls) -> "TelemetryManager":
        """The process's one manager (made on first call; thread-safe)."""
        instance = cls._instance
        if instance is None:
            with cls._instance_lock:
                instance = cls._instance
                if instance is None:
                    instance = cls._instance = cls()
        return instance

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._config: Optional[TelemetryConfig] = None
        # The keys given to initialize() so far: a later call changes only the keys it names.
        self._given: Dict[str, Any] = {}
        self._use_env_dir = True
        self._store: Optional[TelemetryDataStore] = None
        # The store `_writable_store` last found usable, and the folders it has said it falls back from.
        self._checked_store: Optional[TelemetryDataStore] = None
        self._fell_back_from: set = set()
        self._collector: Optional[TelemetryCollector] = None
        self._prices: Any = None
        self._environment: Any = None
        # (session id, task id) -> (the task's state, its JSON, token usage, end) of the current part's (and of
        # ended parts not yet written) finished tasks: each is validated, priced, serialized and masked once.
        self._task_json: Dict[tuple, tuple] = {}
        # The part whose file this manager wrote last (later tasks of it go to its tail); tasks ended in it not yet
        # appended (a failed append is tried again); ended parts not yet written.
        self._disk_part: Optional[str] = None
        self._unappended: List[dict] = []
        self._sealed: List[dict] = []
        # Parts this manager has appended to the tail of (a tail to remove when the part is written whole).
        self._tailed: set = set()
        self._secrets: Optional[List[str]] = None
        self._wake = threading.Event()
        # Set by shutdown() and by a part's end: ends the writer's pause between writes at once.
        self._halt = threading.Event()
        self._stopped = False
        # A task ended since the writer last looked (`_due`); the writer is in its pause after a write and will look
        # when it is over, so that a task's end need not wake it (`_pausing`). See _write_until_stopped.
        self._due = False
        self._pausing = False
        # What `wait_until_written` waits for: tasks' ends told to the manager (`_requested`), how many of them a
        # completed write had taken in (`_served`), and failed writes; `_served_cond` is notified after every write.
        self._requested = 0
        self._served = 0
        self._failed_writes = 0
        self._served_cond = threading.Condition(threading.Lock())
        self._writer_state = "stopped"
        self._writer: Optional[threading.Thread] = None
        self._writer_running = False  # set by _start_writer, cleared by the writer thread as it ends
        self._written_generation = -1
        # Files written without their fsync (see TelemetryConfig.fsync_interval), oldest first, and when the last
        # fsync was (time.monotonic()); both under _write_lock.
        self._unsynced: Dict[Path, None] = {}
        self._last_sync = float("-inf")
        self._cleanup_done = False
        self._atexit_registered = False
        self._loaded: "OrderedDict[str, tuple]" = OrderedDict()
        self._unreadable: Dict[str, tuple] = {}
        self.last_flush_time: Optional[float] = None
        self.last_flush_path: Optional[Path] = None
        # Set by the `sop-telemetry` command: it reads sessions and must never write one of its own.
        self.read_only = False
        # The live OTLP exporter (sop_telemetry.otel.LiveOtlpExporter) when `otlp_enabled`; None otherwise.
        self._otlp: Any = None

    # -- configuration -----------------------------------------------------------------------------------------
    def initialize(self, config: Optional[Mapping[str, Any] | "TelemetryConfig"] = None) -> None:
        """Applies `config`, a dict of `TelemetryConfig` keys (or a TelemetryConfig); raises ConfigError for unknown
        keys or bad values. Example: `initialize({"storage_dir": "/tmp/telemetry", "max_file_age_days": 7})`.

        Calling it again changes only the keys it names (so the spec's bare `initialize()` keeps an earlier
        storage_dir): later records and writes follow the new settings; the current session goes on (its file
        moves to the new storage directory at the next write).
        """
        from .config import build_config, config_items
        from .pricing import PriceBook
        from .storage import TelemetryDataStore

        items = config_items(config)
        with self._lock:
            given = {**self._given, **items}
            cfg = build_config(given, use_env_dir=self._use_env_dir)
            self._given = given
            self._environment = None  # the allowlist may have changed
            self._task_json = {}  # and the prices: costs are computed again
            old_store = self._store
            self._store = TelemetryDataStore(cfg.resolved_storage_dir(), fsync=cfg.fsync)
            if old_store is None or old_store.directory != self._store.directory:
                self._disk_part = None  # the part is written whole in its new directory first
            self._prices = PriceBook(cfg.prices)
            self._loaded.clear()
            # Set only now: _ensure() on another thread returns as soon as it sees a config, without the lock, and
            # then uses the store and prices.
            self._config = cfg
            if self._collector is None:
                self._collector = self._new_collector()
            else:
                self._written_generation = -1
            self._apply_limits(self._collector)
            # Only an `enabled` given in this call (or SOP_TELEMETRY_DISABLED) moves the switch: a lazy default
            # initialization must not undo an earlier disable_telemetry().
            if "enabled" in items or env_disabled():
                switch.enabled = cfg.enabled
            self._configure_otlp(cfg)
        if "integrations" in items:
            from . import registry

            guard("manager.integrations", registry.arm, ",".join(cfg.integrations or ["all"]))

    def _configure_otlp(self, cfg: "TelemetryConfig") -> None:
        """Live OTLP export is opt-in: only then is sop_telemetry.otel (and OpenTelemetry with it) imported.
        Without the `otel` extra this logs one warning (counted as `otlp.setup` in the error summary), never raises."""
        old = self._otlp
        wanted = cfg.enabled and cfg.otlp_enabled and not self.read_only
        if old is not None and wanted and not old.closed and old.configured_endpoint == cfg.otlp_endpoint:
            return
        self._otlp = None
        if old is not None:
            old.shutdown(timeout=0)
        if not wanted:
            return
        try:
            from .otel import LiveOtlpExporter

            self._otlp = LiveOtlpExporter(endpoint=cfg.otlp_endpoint, cost=self._prices.cost)
            self._otlp.collect = self._materialize
        except Exception as exc:  # noqa: BLE001 - e.g. ImportError without the otel extra
            report("otlp.setup", exc)

    def _materialize(self) -> None:
        collector = self._collector
        if collector is not None:
            collector.materialize()

    def _task_ended(self, session_id: str, task: dict, series: "tuple[str, int]") -> None:
        otlp = self._otlp
        if otlp is not None and not self.read_only:
            otlp.submit(session_id, task, series)

    def _ensure(self) -> "TelemetryConfig":
        cfg = self._config
        if cfg is None:
            from .config import ConfigError

            with self._lock:
                if self._config is None:
                    try:
                        self.initialize()
                    except ConfigError as exc:
                        # A bad SOP_TELEMETRY_DIR must not break the program: fall back to the default place
                        # (without touching the program's environment).
                        logger.warning("sop_telemetry: %s; using the defaults", exc)
                        self._use_env_dir = False
                        self.initialize()
                cfg = self._config
        assert cfg is not None
        return cfg

    @property
    def config(self) -> "TelemetryConfig":
        """The configuration in effect (a validated `TelemetryConfig`, environment overrides applied)."""
        return self._ensure()

    def _new_collector(self) -> TelemetryCollector:
        from .storage import new_session_id

        collector = TelemetryCollector(new_session_id(), on_change=self._on_change)
        collector.on_task_end = self._task_ended
        collector.on_part_end = self._part_ended
        collector.max_tasks_per_part = DEFAULT_MAX_TASKS_PER_SESSION
        collector.max_part_bytes = DEFAULT_MAX_SESSION_BYTES
        self._apply_limits(collector)
        return collector

    def _apply_limits(self, collector: TelemetryCollector) -> None:
        cfg = self._config
        if cfg is not None:
            collector.max_records_per_task = cfg.max_records_per_task
            collector.max_string_length = cfg.max_string_length
            collector.capture_content = cfg.capture_content
            collector.max_tasks_per_part = cfg.max_tasks_per_session
            collector.max_part_bytes = cfg.max_session_bytes

    # -- the spec's API ----------------------------------------------------------------------------------------
    def get_collector(self) -> TelemetryCollector:
        """The collector of the current session: records tasks and calls by hand (see `TelemetryCollector`)."""
        collector = self._collector
        if collector is None:
            with self._lock:
                if self._collector is None:
                    self._collector = self._new_collector()
                collector = self._collector
        return collector

    @safe_telemetry_operation("manager.flush_data")
    def flush_data(self) -> Optional[Path]:
        """Writes the current session now (if it has records); returns its path, or None if nothing was written."""
        self._ensure()
        return self._write(final=False, force=True)

    @safe_telemetry_operation("manager.wait_until_written", default=False)
    def wait_until_written(self, timeout: Optional[float] = None) -> bool:
        """Waits until every task that has ended so far is in the session file, written by the background writer
        (this thread writes nothing: `flush_data()` writes now); True when it is, False if `timeout` seconds went
        by first, or the writes are failing (the records stay in memory), or the manager never writes
        (`read_only`). Tasks still running are not waited for. Example, before reading the file from another
        process: `manager.wait_until_written(timeout=5)`."""
        if self.read_only:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._served_cond:
            target, failed = self._requested, self._failed_writes
            while self._served < target:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._failed_writes != failed or self._stopped \
                        or not self._writer_running:
                    return False
                self._served_cond.wait(left)
        return True

    @property
    def writer_state(self) -> str:
        """What the background writer is doing: "writing"; "pausing" (after a write; a task that ends now is
        written when the pause is over, without waking it); "idle" (waiting: a task's end wakes it); "stopped"."""
        return self._writer_state if self._writer_running else "stopped"

    @safe_telemetry_operation("manager.get_session_data")
    def get_session_data(self, session_id: Optional[str] = None) -> Optional["TelemetrySession"]:
        """The current session when `session_id` is None, a stored one by id, or None if there is no such session."""
        from .storage import is_session_id

        self._ensure()
        collector = self.get_collector()
        if session_id is None or session_id == collector.session_id:
            return self._build_current(final=False)
        ended = self._ended_part(session_id, collector)
        if ended is not None:
            return ended
        if not is_session_id(session_id):
            return None
        return self._load_cached(session_id)

    def _ended_part(self, session_id: str, collector: TelemetryCollector) -> Optional["TelemetrySession"]:
        """A part that has ended but is not written yet, or None."""
        from .models import TelemetrySession

        with collector._lock:
            parts = [p for p in (*self._sealed, *collector.sealed) if p["session_id"] == session_id]
            if not parts:
                return None
            data = {**parts[0], "tasks": _copies(parts[0]["tasks"]), "environment": self._environment_info()}
        session = TelemetrySession.model_validate(data)
        self._apply_costs(session)
        return session

    def _load_cached(self, session_id: str) -> Optional["TelemetrySession"]:
        from .storage import SessionLoadError

        store = self._store
        assert store is not None
        path = store.path_for(session_id)
        try:
            st = os.stat(path, follow_symlinks=False)  # type: ignore[arg-type]
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._loaded.get(session_id)
        if hit is not None and hit[0] == key:
            self._loaded.move_to_end(session_id)
            return hit[1]
        try:
            session = store.load(session_id)
        except KeyError:
            return None
        except SessionLoadError as exc:
            # Remembered (until the file changes) so that a listing loop warns once per bad file, not per look.
            if self._unreadable.get(session_id) != key:
                self._unreadable[session_id] = key
                logger.warning("sop_telemetry: skipping %s", exc)
            return None
        self._unreadable.pop(session_id, None)
        limit = self.config.max_memory_sessions
        if limit:
            self._loaded[session_id] = (key, session)
            while len(self._loaded) > limit:
                self._loaded.popitem(last=False)
        return session

    @safe_telemetry_operation("manager.get_storage_stats", default={})
    def get_storage_stats(self) -> Dict[str, Any]:
        """A dict describing storage and recording: `storage_path`, `total_files`, `total_bytes`,
        `current_session_id`, `current_session_tasks`, `enabled`, `last_flush_time`, `unwritten_changes`,
        `dropped_records` (per kind), `telemetry_errors`, `otlp` (the live exporter's counters), and `integrations`
        (the framework integrations installed now, with their framework's version)."""
        from . import registry

        cfg = self._ensure()
        store = self._store
        assert store is not None
        files, size = store.stats()
        collector = self._collector
        dropped: Dict[str, int] = {}
        if collector is not None:
            for task in collector.snapshot()["tasks"]:
                for kind, count in task["dropped_records"].items():
                    dropped[kind] = dropped.get(kind, 0) + count
        return {
            "storage_path": str(store.directory),
            "active_collectors": 1 if collector is not None and collector.has_records() else 0,
            "total_files": files,
            "total_bytes": size,
            "current_session_id": collector.session_id if collector is not None else None,
            "current_session_tasks": collector.task_count() if collector is not None else 0,
            "current_series_id": collector.series_id if collector is not None else None,
            "current_part": collector.part if collector is not None else None,
            "enabled": switch.enabled,
            "max_file_age_days": cfg.max_file_age_days,
            "last_flush_time": self.last_flush_time,
            "unwritten_changes": collector is not None and collector.has_records()
            and collector.generation != self._written_generation,
            "dropped_records": dropped,
            "telemetry_errors": get_error_handler().total_errors(),
            "otlp": self._otlp.stats() if self._otlp is not None else {"enabled": False},
            "integrations": registry.active(),
        }

    @safe_telemetry_operation("manager.get_all_session_ids", default=[])
    def get_all_session_ids(self) -> List[str]:
        """Ids of stored sessions, oldest first; the current session is included once it has records."""
        self._ensure()
        assert self._store is not None
        ids = set(self._store.session_ids())
        collector = self._collector
        if collector is not None and collector.has_records():
            ids.add(collector.session_id)
        return sorted(ids)

    @safe_telemetry_operation("manager.cleanup_old_data", default=0)
    def cleanup_old_data(self, max_age_days: Optional[float] = None, dry_run: bool = False) -> int:
        """Removes session files older than `max_age_days` (default: the config's); returns how many."""
        cfg = self._ensure()
        assert self._store is not None
        age = cfg.max_file_age_days if max_age_days is None else float(max_age_days)
        if age < 0:
            raise ValueError("max_age_days must be >= 0")
        keep = self._collector.session_id if self._collector is not None else None
        removed = self._store.cleanup(age, dry_run=dry_run, keep=keep)
        for sid in removed:
            self._loaded.pop(sid, None)
        return len(removed)

    def disable_telemetry(self) -> None:
        """Every wrapper becomes a pass-through and nothing more is recorded, until `enable_telemetry()`."""
        switch.enabled = False

    def enable_telemetry(self) -> None:
        """Records again after `disable_telemetry()`; SOP_TELEMETRY_DISABLED, the operator's switch, still wins."""
        if env_disabled():
            logger.debug("sop_telemetry: SOP_TELEMETRY_DISABLED is set; enable_telemetry() leaves telemetry off")
            return
        switch.enabled = True

    def is_enabled(self) -> bool:
        """Whether records are being made (False after `disable_telemetry()` or with SOP_TELEMETRY_DISABLED)."""
        return switch.enabled

    # -- writing -----------------------------------------------------------------------------------------------
    def _on_change(self, urgent: bool) -> None:
        if self.read_only:
            return
        if not self._atexit_registered:
            with self._lock:
                if not self._atexit_registered:
                    atexit.register(self._at_exit)
                    self._atexit_registered = True
        if not self._writer_running:  # (a flag, not Thread.is_alive(): this runs twice in every agent run)
            self._start_writer()
        if urgent:
            with self._served_cond:
                self._requested += 1
            self._due = True
            if not self._pausing:
                self._wake.set()

    def _part_ended(self, behind: bool) -> None:
        """A part is full: the writer writes it now, even in its pause (once a part: the wake is rare). When
        another part is still waiting (`behind`: tasks end faster than the writer, sharing the GIL, can write them)
        the thread that starts the next task writes them itself, so that memory stays bounded whatever the pace."""
        if behind:
            self._write(final=False)
        self._on_change(True)
        self._halt.set()

    def _start_writer(self) -> None:
        with self._lock:
            self._stopped = False
            self._halt.clear()
            if self._writer is not None and self._writer.is_alive():
                return
            self._writer = threading.Thread(target=self._writer_loop, name="sop_telemetry-writer", daemon=True)
            self._writer_state = "idle"
            self._writer_running = True
            try:
                self._writer.start()
            except BaseException:
                self._writer_running = False
                raise

    def _writer_loop(self) -> None:
        try:
            self._write_until_stopped()
        finally:
            self._writer_running = False
            with self._served_cond:
                self._served_cond.notify_all()  # (a wait_until_written waiting on this writer ends)

    def _write_until_stopped(self) -> None:
        resume = 0.0  # (perf_counter) when the pause after the last write ends
        while not self._stopped:
            # Rewriting the file costs time in proportion to the session, and it holds the GIL the agents need.
            # After a write that took d seconds the writer pauses _WRITE_BACKOFF * d: a small session is still
            # written moments after each task's end, while a large one with short tasks ending back to back is
            # written a few times a second instead of after every task.
            # The pause is taken right after the write, on the writer's own timer, so that a task that ends during
            # it does not wake the writer: `_on_change` only sets `_due`, which the writer reads when the pause is
            # over. Waking a sleeping thread costs the thread that does it a system call and, on a VM, an interrupt
            # to another CPU, on the agent's thread at the end of its run (measured: docs/design.md, "The writer
            # and its pause"). So only a task that ends while the writer is idle (a pause went by
            # with nothing to write) pays for a wake; short tasks run back to back pay none. The price: after each
            # pause the writer looks once, even when nothing is due (one GIL acquisition per write, off the agent's
            # thread). `_pausing` is cleared before `_due` is read, and `_on_change` sets `_due` before it reads
            # `_pausing`: a task's end is either seen here or wakes the writer.
            pause = resume - time.perf_counter()
            if pause > 0.002:
                self._writer_state = "pausing"
                self._pausing = True
                self._halt.wait(pause)
                self._pausing = False
            if self._stopped:
                return
            self._halt.clear()  # (set by a part's end; shutdown() sets _stopped first)
            if not self._due:
                self._writer_state = "idle"
                self._await_change(self._config.flush_interval if self._config is not None else 30.0)
            self._writer_state = "writing"
            tick = not self._due  # (the flush interval went by: the open tasks are written too)
            self._due = False
            self._wake.clear()
            if self._stopped:
                return
            began = now = time.perf_counter()
            try:
                self._maybe_cleanup()
                self._write(final=False, tick=tick)
                now = time.perf_counter()
                self._sync_if_due()  # (not counted in the pause: an fsync waits on the disk, without the GIL)
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                report("manager.writer", exc)
            resume = now + min(_WRITE_BACKOFF * (now - began), _MAX_WRITE_PAUSE)
            collector = self._collector
            if collector is not None and collector.sealed:
                # Parts ended while this pass wrote: no pause, or tasks that end faster than the pause allows for
                # their writing would pile up in memory without bound (docs/long-running.md).
                resume, self._due = now, True

    def _await_change(self, interval: float) -> None:
        """Waits until a task's end wakes the writer or `interval` (the flush interval) is over. Files whose deferred
        fsync comes due meanwhile are synced on the way, without a write: a write pass there would rewrite the
        session of a task still running, in the middle of its run (holding the GIL, then pausing)."""
        deadline = time.perf_counter() + interval
        while not self._stopped:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            sync_wait = self._sync_wait()
            if sync_wait is None or sync_wait >= left:
                self._wake.wait(left)
                return
            if self._wake.wait(sync_wait):
                return
            guard("manager.writer", self._sync_if_due)  # (the writer thread must survive anything)
            if self._due:
                return  # a failed fsync: the session is to be written again

    def _maybe_cleanup(self) -> None:
        cfg = self._config
        if self._cleanup_done or cfg is None or not cfg.auto_cleanup or self._store is None:
            return
        self._cleanup_done = True
        try:
            removed = self._store.cleanup(cfg.max_file_age_days, keep=self.get_collector().session_id)
            if removed:
                logger.debug("sop_telemetry: auto-cleanup removed %d old session file(s)", len(removed))
        except OSError as exc:
            report("storage.cleanup", exc)

    def _environment_info(self) -> Any:
        """The session's EnvironmentInfo, collected once (again after initialize(): the allowlist may change)."""
        from .environment import collect_environment, framework_versions

        if self._environment is None:
            self._environment = collect_environment(self.config.environment_allowlist)
        else:
            frameworks = framework_versions()  # (a framework may have been imported since)
            if frameworks != self._environment.frameworks:
                self._environment = self._environment.model_copy(update={"frameworks": frameworks})
        return self._environment

    def _build_current(self, final: bool) -> "TelemetrySession":
        collector = self.get_collector()
        session = collector.build_session(self._environment_info(), end_time=time.time() if final else None)
        self._apply_costs(session)
        return session

    def _apply_costs(self, session: "TelemetrySession") -> None:
        for task in session.tasks:
            self._apply_task_costs(task)

    def _apply_task_costs(self, task: "TaskExecution") -> None:
        prices = self._prices
        if prices is None:
            return
        for call in task.llm_calls:
            if call.cost_estimate is None and call.tokens_reported:
                call.cost_estimate = prices.cost(call.model, call.prompt_tokens, call.completion_tokens)

    def _task_entry(self, session_id: str, task: dict, finished: bool) -> Optional[tuple]:
        """(state, masked JSON, token usage, end) of `task`; a finished task's is made once and kept (until its part
        is written whole), so that no write pays again for the tasks before it. None when the task cannot be
        written: one bad task must not keep the others off the disk; it is counted, and tried again next time."""
        from .models import TaskExecution

        key = _finished_task_state(task) if finished else None
        entry = self._task_json.get((session_id, task["task_id"])) if finished else None
        if entry is None or entry[0] != key:
            try:
                execution = TaskExecution.model_validate(task)
                self._apply_task_costs(execution)
                # The computed total is summed once, not again for the dump: the same JSON as model_dump_json().
                usage = execution.token_usage
                text = "".join((execution.model_dump_json(exclude=_TOKEN_USAGE)[:-1], ',"token_usage":',
                                usage.model_dump_json(), "}"))
                entry = (key, _redacted(text, self._secrets), usage, execution.end_time or execution.start_time)
            except Exception as exc:  # noqa: BLE001 - a value the model refuses, or cannot serialize
                report("manager.task", exc)
                return None
            if finished:
                self._task_json[(session_id, task["task_id"])] = entry
        return entry

    def _session_text(self, data: dict, open_ids: "set[str]") -> str:
        """The file text of a part (`data`: a snapshot, or an ended part): what `_file_text` of the same session
        gives, built from each finished task's kept JSON (tests/test_manager_write_cache.py holds the two equal)."""
        from .models import TelemetrySession, TokenUsage

        tasks = data["tasks"]
        shell = TelemetrySession.model_validate({**data, "tasks": [], "environment": self._environment_info()})
        session_id = shell.session_id
        parts, total, ends = [], TokenUsage(), []
        for task in tasks:
            entry = self._task_entry(session_id, task, task["task_id"] not in open_ids)
            if entry is None:
                continue
            parts.append(entry[1])
            total.add(entry[2])
            ends.append(entry[3])
        # The same document as TelemetrySession.to_json(): its fields in order, then the computed totals (the same
        # arithmetic as TelemetrySession.total_tokens / total_duration).
        end = shell.end_time if shell.end_time is not None else max(ends, default=shell.start_time)
        duration = max(0.0, (end - shell.start_time).total_seconds())
        head = _redacted(shell.model_dump_json(exclude={"tasks", "total_tokens", "total_duration"}), self._secrets)
        totals = _redacted(total.model_dump_json(), self._secrets)
        return "".join((head[:-1], ',"tasks":[', ",".join(parts), '],"total_tokens":', totals,
                        ',"total_duration":', json.dumps(duration), "}"))

    def _write(self, final: bool, force: bool = False, tick: bool = False) -> Optional[Path]:
        """Writes what changed since the last write: parts that have ended (each whole, once), then the current
        part: whole at its first write, at `final` (exit) and `force` (flush_data()), else only the tasks ended
        since the last write, appended to its tail (and, at a `tick` of the flush interval, the open tasks as they
        are). Errors are counted, logged once and swallowed; the records stay in memory and the next write tries
        again."""
        if self.read_only:
            return None
        requested = self._requested  # (read before the records are taken: the tasks' ends counted are in them)
        collector = self._collector
        if collector is None or not (collector.has_records() or collector.sealed):
            self._served_up_to(requested)
            return None
        self._ensure()
        store = self._store
        assert store is not None
        if get_error_handler().is_suspended("storage.write") and not (final or force):
            self._served_up_to(requested, failed=True)
            return None
        with self._write_lock:
            try:
                store = self._writable_store()
            except OSError as exc:
                report("storage.write", exc, hint=_kept_in_memory(store))
                self._served_up_to(requested, failed=True)
                return None
            for _ in range(10):  # (another pass only when a part ends while this one is being written)
                try:
                    path = self._write_locked(store, collector, final, force, tick)
                except Exception as exc:  # noqa: BLE001 - disk full, read-only, deleted directory, a bug
                    report("storage.write", exc, hint=_kept_in_memory(store))
                    self._served_up_to(requested, failed=True)
                    return None
                if path is not _AGAIN:
                    break
            else:
                self._served_up_to(requested, failed=True)
                return None
            self._served_up_to(requested)
            if path is not None:
                get_error_handler().record_success("storage.write")
                self.last_flush_time = time.time()
                self.last_flush_path = path
                logger.debug("sop_telemetry: wrote %s", path)
            return path

    def _write_locked(self, store: "TelemetryDataStore", collector: TelemetryCollector, final: bool, force: bool,
                      tick: bool) -> Any:
        from .environment import secret_values

        self._secrets = secret_values()  # (once a pass: _task_entry and _session_text mask with them)
        sealed, part_id, finished, still_open = collector.take_for_write(with_open=tick and not (final or force))
        self._sealed.extend(sealed)
        if self._disk_part != part_id:
            self._unappended = []  # (tasks of a part that has ended: in its file, written whole)
        self._unappended.extend(finished)
        written = self._write_sealed(store)
        if not collector.has_records():
            return written
        generation = collector.generation
        if generation == self._written_generation and not (final or force):
            return written
        durable = final or force
        if durable or self._disk_part != part_id:
            data, open_ids = collector.snapshot_with_open_ids(end_time=time.time() if final else None)
            if data["session_id"] != part_id:
                return _AGAIN  # a part ended meanwhile: it is written first
            text = self._session_text(data, open_ids)
            self._unsynced.pop(store.tail_path(part_id), None)  # type: ignore[arg-type]  # (removed below: no fsync)
            path = self._put(store, part_id, text, durable=durable or self._disk_part == part_id)
            self._drop_tail(store, part_id)
            self._task_json = {k: v for k, v in self._task_json.items() if k[0] == part_id}
            self._disk_part = part_id
            collector.note_written(len(text.encode("utf-8")), sum(size_units(task) for task in data["tasks"]))
        elif not os.path.exists(store.path_for(part_id)):  # type: ignore[arg-type]
            self._disk_part = None  # removed (by hand, or its directory): the next pass writes the part whole
            return _AGAIN
        else:
            lines = []
            for tasks, ended in ((self._unappended, True), (still_open, False)):
                for task in tasks:
                    entry = self._task_entry(part_id, task, ended)
                    if entry is not None:
                        lines.append(entry[1])
            if not lines:
                self._written_generation = generation
                return written
            payload = ("\n".join(lines) + "\n").encode("utf-8")
            path = self._put(store, part_id, payload, durable=False, tail=True)
            collector.note_written(len(payload), sum(size_units(task) for task in (*self._unappended, *still_open)))
        self._unappended = []
        self._written_generation = generation
        return path

    def _served_up_to(self, requested: int, failed: bool = False) -> None:
        """A write pass that took in the first `requested` tasks' ends is over: tells `wait_until_written`."""
        with self._served_cond:
            if failed:
                self._failed_writes += 1
            elif requested > self._served:
                self._served = requested
            self._served_cond.notify_all()

    def _write_sealed(self, store: "TelemetryDataStore") -> Optional[Path]:
        """Writes each ended part whole, with its end time, and removes its tail: from then on its file is final.
        Synced at once, since the tail it replaces goes. An error propagates, and the current part is not written
        before the ended ones (a task it took over would be in two files)."""
        path = None
        while self._sealed:
            part = self._sealed[0]
            self._unsynced.pop(store.tail_path(part["session_id"]), None)  # type: ignore[arg-type]
            if part["tasks"]:
                path = self._put(store, part["session_id"], self._session_text(part, set()), durable=True)
                logger.debug("sop_telemetry: part %s is full; continuing in the next", part["session_id"])
            self._drop_tail(store, part["session_id"])
            self._task_json = {k: v for k, v in self._task_json.items() if k[0] != part["session_id"]}
            if self._disk_part == part["session_id"]:
                self._disk_part = None
            self._sealed.pop(0)
        return path

    def _drop_tail(self, store: "TelemetryDataStore", part_id: str) -> None:
        if part_id in self._tailed:  # (most parts never get one: a short script's, a part written whole at its end)
            store.drop_tail(part_id)
            self._tailed.discard(part_id)

    def _writable_store(self) -> "TelemetryDataStore":
        """The configured store, checked before its first write: a folder that cannot be used then (a file in the
        way, no permission, a read-only file system: a setting to fix, not a passing fault) is replaced by the
        default folder, or else a private one in the temp folder, and the switch said once on stderr. A folder
        that worked and fails later is kept: the session stays in memory and is written when it works again.
        Raises OSError when no folder can be used. Under _write_lock."""
        store = self._store
        assert store is not None
        if store is self._checked_store:
            return store
        problem = store.unusable()
        if problem is not None:
            import tempfile

            from .config import default_storage_dir
            from .storage import TelemetryDataStore

            user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
            for directory, private in ((default_storage_dir(), False),
                                       (Path(tempfile.gettempdir()) / f"sop_telemetry-{user}", True)):
                fallback = TelemetryDataStore(directory, fsync=store.fsync)
                if directory != store.directory and fallback.unusable(private) is None:
                    break
            else:
                raise NotADirectoryError(errno.ENOTDIR, f"cannot write sessions there: {problem}",
                                         str(store.directory))
            if store.directory not in self._fell_back_from:
                self._fell_back_from.add(store.directory)
                logger.warning("sop_telemetry: cannot use the storage folder %s (%s); sessions are written to %s "
                               "instead. Set SOP_TELEMETRY_DIR (or storage_dir) to a writable folder.",
                               store.directory, problem, directory)
            self._store = store = fallback
        self._checked_store = store
        return store

    def _put(self, store: "TelemetryDataStore", session_id: str, text: "str | bytes", durable: bool,
             tail: bool = False) -> Path:
        """`store.write` (or `store.append_tail` with `tail`) with its fsync, unless the last fsync was less than
        `fsync_interval` ago and this write is not `durable` (an explicit flush, the exit's): then the file is
        synced when the interval is over (`_sync_if_due`, on the writer thread). Under _write_lock."""
        if tail:
            self._tailed.add(session_id)
        write = store.append_tail if tail else store.write
        cfg = self._config
        if not store.fsync or cfg is None:
            return write(session_id, text)  # type: ignore[arg-type]
        if durable or time.monotonic() - self._last_sync >= cfg.fsync_interval:
            path = write(session_id, text)  # type: ignore[arg-type]
            self._last_sync = time.monotonic()  # (the interval counts from the fsync's end)
            self._unsynced.pop(path, None)
            self._sync_files()  # any others waiting for theirs: one batch
            return path
        path = write(session_id, text, sync=False)  # type: ignore[arg-type]
        self._unsynced[path] = None
        return path

    def _sync_wait(self) -> Optional[float]:
        """Seconds until the files written without their fsync are due for it; None when there are none."""
        if not self._unsynced:
            return None
        cfg = self._config
        interval = cfg.fsync_interval if cfg is not None else 0.0
        return max(0.0, self._last_sync + interval - time.monotonic())

    def _sync_if_due(self, now: bool = False) -> None:
        if self._unsynced:
            with self._write_lock:
                wait = self._sync_wait()
                if wait is not None and (now or wait <= 0):
                    self._sync_files()

    def _sync_files(self) -> None:
        """fsyncs the files written without it. Under _write_lock. A failed fsync is counted, and the current
        part is written again, whole (after a failed fsync the kernel may have dropped the data)."""
        store = self._store
        if not self._unsynced or store is None:
            return
        failed = False
        while self._unsynced:
            path = next(iter(self._unsynced))
            del self._unsynced[path]
            try:
                store.sync(path)
            except OSError as exc:
                failed = True
                report("storage.sync", exc)
                collector = self._collector
                if collector is not None and path in (store.path_for(collector.session_id),
                                                      store.tail_path(collector.session_id)):
                    self._written_generation = -1
                    self._disk_part = None
                    self._due = True  # rewritten when the writer looks next, and synced as it is written
        if not failed:
            self._last_sync = time.monotonic()

    def _at_exit(self) -> None:
        try:
            collector = self._collector
            if collector is None or not collector.has_records() or self.read_only:
                return
            self._ensure()  # before the last tasks end: the live exporter, if configured, must exist to get them
            collector.materialize()
            for task in list(collector._open.values()):
                if task.get("implicit"):
                    collector.close_task(task, TaskStatus.COMPLETED)
            self._write(final=True)
            if self._otlp is not None:
                self._otlp.shutdown()  # a bounded wait for queued tasks; none if the collector is failing
        except Exception as exc:  # noqa: BLE001 - never fail the interpreter's exit
            report("manager.at_exit", exc)
        finally:
            # Tails written without their fsync; the final write synced the rest.
            guard("manager.at_exit", self._sync_if_due, True)

    def shutdown(self, flush: bool = True) -> None:
        """Writes the session one last time (unless flush=False) and stops the writer thread. Used at exit and
        by tests that replace the manager; recording afterwards starts the writer again."""
        if flush:
            self._at_exit()
        otlp, self._otlp = self._otlp, None
        if otlp is not None:
            otlp.shutdown(timeout=0)
        self._stopped = True
        self._halt.set()
        self._wake.set()
        with self._served_cond:
            self._served_cond.notify_all()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=5)
        if self._atexit_registered:
            atexit.unregister(self._at_exit)
            self._atexit_registered = False

    @classmethod
    def _reset_instance(cls) -> "TelemetryManager":
        """Replaces the singleton with a fresh one (tests; a forked child). The old one is shut down unflushed."""
        with cls._instance_lock:
            old = cls._instance
            cls._instance = cls()
        if old is not None:
            old.shutdown(flush=False)
        return cls._instance

    def _after_fork_in_child(self) -> None:
        """A forked child starts its own session: sharing the parent's id would overwrite the parent's file."""
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._due = self._pausing = False
        self._requested = self._served = self._failed_writes = 0
        self._served_cond = threading.Condition(threading.Lock())
        self._writer = None
        self._writer_running = False
        self._written_generation = -1
        self._unsynced = {}  # the parent's files: the parent syncs them
        self._last_sync = float("-inf")
        self._disk_part = None
        self._unappended = []
        self._sealed = []
        self._tailed = set()
        self._task_json = {}
        self._environment = None  # it holds the parent's pid
        if self._collector is not None:
            self._collector = self._new_collector()
        # The forking thread's task belongs to the parent's session: the child's records go to its own.
        current.set(None)


_AGAIN: Any = object()
_TOKEN_USAGE = {"token_usage"}


def _finished_task_state(task: dict) -> tuple:
    """What can still change in a closed task's snapshot: its records are appended to, never rewritten, once the
    task is closed, except an agent record ended late (a nested stream dropped after its parent's task closed)."""
    return (
        task["end_time"], task["status"], len(task["agents"]), len(task["tools"]), len(task["llm_calls"]),
        len(task["steps"]), tuple(sorted(task["dropped_records"].items())), tuple(task["code_changes"].values()),
        tuple((a.get("end_time"), a.get("status"), a.get("steps")) for a in task["agents"]),
    )


def _kept_in_memory(store: "TelemetryDataStore") -> str:
    return (f"the session stays in memory and is written when {store.directory} works again; to write elsewhere, "
            "set SOP_TELEMETRY_DIR to a writable folder")


def _file_text(session: "TelemetrySession") -> str:
    """What goes into a session file: the session's JSON with every known credential masked."""
    return _redacted(session.to_json())


def _redacted(text: str, secrets: Optional[List[str]] = None) -> str:
    """`text` (a session's JSON) with every known credential masked, since error messages and task descriptions are
    the host's own text and may quote a key (an HTTP error naming the URL, say). `secrets`: `secret_values()`, when
    the caller masks many texts at once (finding them reads the whole environment)."""
    from .environment import redact_json, secret_values

    return redact_json(text, secret_values() if secrets is None else secrets)


def _after_fork() -> None:
    instance = TelemetryManager._instance
    if instance is not None:
        instance._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
