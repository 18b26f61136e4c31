"""Fail-safe: telemetry errors are counted and logged, never raised into the host program.

Usage::

    from sop_telemetry.error_handler import safe_telemetry_operation, get_error_handler

    @safe_telemetry_operation("custom_operation")
    def my_telemetry_function():
        ...

    get_error_handler().get_error_summary()   # {"custom_operation": {"count": 1, "last_error": ..., ...}}

An operation that fails `failure_threshold` times in a row is suspended for `cooldown` seconds (calls return the
default without running), so a broken disk or a bug on a hot path costs one log line, not one per call.

This is the one guard for all telemetry code, in three shapes with one behaviour: the decorator above, the call
`guard(operation, func, *args)`, and, inline on hot paths where a call costs too much, `except Exception as exc:
report(operation, exc)`. Each counts the error under its operation, logs it once (a warning, then debug lines) and
never raises into the program.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, TypeVar

logger = logging.getLogger("sop_telemetry")

F = TypeVar("F", bound=Callable[..., Any])


class _OpState:
    __slots__ = ("count", "consecutive", "last_error", "last_error_type", "last_time", "suspended_until", "logged")

    def __init__(self) -> None:
        self.count = 0
        self.consecutive = 0
        self.last_error = ""
        self.last_error_type = ""
        self.last_time = 0.0
        self.suspended_until = 0.0
        self.logged = False


class TelemetryErrorHandler:
    """Counts telemetry's own errors per operation, logs each operation's first failure as a warning (later ones at
    debug level), and suspends an operation for `cooldown` seconds after `failure_threshold` failures in a row.
    The process has one: `get_error_handler()`; read it with `get_error_summary()`."""

    def __init__(self, failure_threshold: int = 5, cooldown: float = 60.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._ops: Dict[str, _OpState] = {}
        self._lock = threading.Lock()

    def record_error(self, operation: str, exc: BaseException, hint: Optional[str] = None) -> None:
        """Counts the error; logs a warning the first time `operation` fails (one line: `hint` says what it means
        for the user, by default that the program is not affected), debug after that. Tracebacks go to the debug
        log only."""
        try:
            now = time.time()
            with self._lock:
                state = self._ops.get(operation)
                if state is None:
                    state = self._ops[operation] = _OpState()
                state.count += 1
                state.consecutive += 1
                state.last_error = _describe(exc)
                state.last_error_type = type(exc).__name__
                state.last_time = now
                first = not state.logged
                state.logged = True
                suspend = state.consecutive >= self.failure_threshold and state.suspended_until <= now
                if suspend:
                    state.suspended_until = now + self.cooldown
            if first:
                logger.warning(
                    "sop_telemetry: %s failed (%s); %s. Further failures of this operation are logged at debug level.",
                    operation,
                    state.last_error,
                    hint or "telemetry goes on, the program is not affected",
                )
                logger.debug("sop_telemetry: %s failed:", operation, exc_info=exc)
            else:
                logger.debug("sop_telemetry: %s failed again: %s", operation, state.last_error)
            if suspend:
                logger.debug("sop_telemetry: %s suspended for %.0fs after repeated failures", operation, self.cooldown)
        except Exception:  # noqa: BLE001 - the error path itself must never raise
            pass

    def record_success(self, operation: str) -> None:
        """Ends `operation`'s run of consecutive failures (and its suspension)."""
        state = self._ops.get(operation)
        if state is not None and state.consecutive:
            state.consecutive = 0
            state.suspended_until = 0.0

    def is_suspended(self, operation: str) -> bool:
        """Whether `operation` is skipped for now after repeated failures."""
        state = self._ops.get(operation)
        return state is not None and state.suspended_until > time.time()

    def get_error_summary(self) -> Dict[str, Dict[str, Any]]:
        """Per operation: `count`, `last_error`, `last_error_type`, `last_time` (epoch seconds), `suspended`."""
        now = time.time()
        with self._lock:
            return {
                name: {
                    "count": s.count,
                    "last_error": s.last_error,
                    "last_error_type": s.last_error_type,
                    "last_time": s.last_time,
                    "suspended": s.suspended_until > now,
                }
                for name, s in self._ops.items()
            }

    def total_errors(self) -> int:
        """How many errors telemetry has had in this process, all operations together."""
        with self._lock:
            return sum(s.count for s in self._ops.values())

    def reset_error_state(self) -> None:
        """Forgets every count and suspension."""
        with self._lock:
            self._ops.clear()


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = "<unprintable>"
    from .collector import clip

    return f"{type(exc).__name__}: {clip(text, 300)}"  # (clip masks credentials, even one it cuts through)


_handler = TelemetryErrorHandler()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; in the child it would never be released.
    _handler._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_error_handler() -> TelemetryErrorHandler:
    """The process's error handler: `get_error_handler().get_error_summary()` lists telemetry's own errors, e.g.
    `{"storage.write": {"count": 2, "last_error": "...", "last_error_type": "OSError", ...}}`; empty when all is
    well."""
    return _handler


def report(operation: str, exc: BaseException, hint: Optional[str] = None) -> None:
    """The guard's inline shape: counts `exc` under `operation` and logs it once (`hint`: what the one line says it
    means, see record_error). Never raises."""
    _handler.record_error(operation, exc, hint)


def _guarded(operation: str, default: Any, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    if _handler.is_suspended(operation):
        return default
    try:
        result = func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - this is the guard
        _handler.record_error(operation, exc)
        return default
    _handler.record_success(operation)
    return result


def safe_telemetry_operation(operation: str, default: Any = None) -> Callable[[F], F]:
    """Decorator: runs the function, and on any Exception counts it, logs it once and returns `default`."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return _guarded(operation, default, func, args, kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


def guard(operation: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Optional[Any]:
    """Calls `func` under the guard without decorating it; None if it failed (or its operation is suspended)."""
    return _guarded(operation, None, func, args, kwargs)
