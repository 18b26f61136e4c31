"""The fail-safe guard: errors are counted per operation, logged once, suspended when repeated, never raised."""

from __future__ import annotations

import logging
import types

import pytest

from sop_telemetry import error_handler, get_error_handler, safe_telemetry_operation
from sop_telemetry.error_handler import TelemetryErrorHandler, guard


@pytest.fixture
def clock(monkeypatch):
    """A clock the handler reads instead of time.time(), moved by hand."""
    now = [1_000_000.0]
    monkeypatch.setattr(error_handler, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture(autouse=True)
def fresh_state():
    get_error_handler().reset_error_state()
    yield
    get_error_handler().reset_error_state()


def warnings_of(caplog):
    return [r for r in caplog.records if r.name == "sop_telemetry" and r.levelno >= logging.WARNING]


def test_the_decorator_swallows_and_returns_the_default(caplog):
    @safe_telemetry_operation("custom_operation", default="fallback")
    def broken():
        raise RuntimeError("boom")

    assert broken() == "fallback"
    summary = get_error_handler().get_error_summary()
    assert summary["custom_operation"]["count"] == 1
    assert summary["custom_operation"]["last_error"] == "RuntimeError: boom"
    assert summary["custom_operation"]["last_error_type"] == "RuntimeError"
    assert summary["custom_operation"]["last_time"] > 0


def test_the_decorator_passes_results_and_arguments_through():
    @safe_telemetry_operation("ok")
    def add(a, b=0):
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert get_error_handler().get_error_summary() == {}


def test_the_specs_example_runs():
    @safe_telemetry_operation("custom_operation")
    def my_telemetry_function():
        """使用装饰器确保错误安全"""
        pass

    my_telemetry_function()
    error_summary = get_error_handler().get_error_summary()
    assert len(error_summary) == 0
    get_error_handler().reset_error_state()


def test_summary_is_per_operation_with_the_last_error(clock):
    handler = TelemetryErrorHandler()
    handler.record_error("a", ValueError("first"))
    clock[0] += 5
    handler.record_error("a", KeyError("second"))
    handler.record_error("b", OSError("disk"))
    summary = handler.get_error_summary()
    assert set(summary) == {"a", "b"}
    assert summary["a"]["count"] == 2
    assert summary["a"]["last_error"] == "KeyError: 'second'"
    assert summary["a"]["last_time"] == clock[0]
    assert summary["b"]["count"] == 1
    assert handler.total_errors() == 3


def test_repeated_failures_log_one_warning(caplog):
    @safe_telemetry_operation("noisy")
    def broken():
        raise RuntimeError("again")

    with caplog.at_level(logging.DEBUG, logger="sop_telemetry"):
        for _ in range(50):
            broken()
    assert len(warnings_of(caplog)) == 1
    assert "noisy" in warnings_of(caplog)[0].getMessage()


def test_repeated_failures_suspend_the_operation_for_a_while(clock):
    handler = get_error_handler()
    calls = []

    @safe_telemetry_operation("flaky", default=-1)
    def flaky():
        calls.append(1)
        raise OSError("no space left")

    for _ in range(20):
        assert flaky() == -1
    assert len(calls) == handler.failure_threshold
    assert handler.get_error_summary()["flaky"]["suspended"] is True
    assert handler.is_suspended("flaky")

    clock[0] += handler.cooldown + 1
    assert not handler.is_suspended("flaky")
    flaky()
    assert len(calls) == handler.failure_threshold + 1


def test_a_success_ends_the_suspension_streak(clock):
    handler = TelemetryErrorHandler(failure_threshold=3, cooldown=10)
    handler.record_error("op", ValueError())
    handler.record_error("op", ValueError())
    handler.record_success("op")
    handler.record_error("op", ValueError())
    handler.record_error("op", ValueError())
    assert not handler.is_suspended("op")
    handler.record_error("op", ValueError())
    assert handler.is_suspended("op")


def test_reset_error_state_clears_counts_and_suspension_and_logs_again(caplog, clock):
    @safe_telemetry_operation("op")
    def broken():
        raise RuntimeError("x")

    for _ in range(10):
        broken()
    handler = get_error_handler()
    assert handler.is_suspended("op")
    handler.reset_error_state()
    assert handler.get_error_summary() == {}
    assert not handler.is_suspended("op")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sop_telemetry"):
        broken()
    assert len(warnings_of(caplog)) == 1


def test_an_exception_whose_str_raises_is_still_counted():
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    handler = TelemetryErrorHandler()
    handler.record_error("op", Nasty())
    assert handler.get_error_summary()["op"]["last_error"] == "Nasty: <unprintable>"


def test_long_messages_are_cut():
    handler = TelemetryErrorHandler()
    handler.record_error("op", ValueError("x" * 10_000))
    assert len(handler.get_error_summary()["op"]["last_error"]) < 400


def test_base_exceptions_are_not_swallowed():
    @safe_telemetry_operation("op")
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()


def test_guard_calls_and_swallows():
    assert guard("g", lambda a: a * 2, 21) == 42
    assert guard("g", lambda: 1 / 0) is None
    assert get_error_handler().get_error_summary()["g"]["last_error_type"] == "ZeroDivisionError"


def test_report_is_the_guards_inline_shape_and_says_the_hint_in_its_one_line(caplog):
    caplog.set_level(logging.DEBUG, logger="sop_telemetry")
    error_handler.report("storage.write", OSError("disk full"), hint="the session stays in memory")
    error_handler.report("storage.write", OSError("disk full"), hint="the session stays in memory")
    (line,) = warnings_of(caplog)
    assert line.getMessage() == ("sop_telemetry: storage.write failed (OSError: disk full); the session stays in "
                                 "memory. Further failures of this operation are logged at debug level.")
    assert get_error_handler().get_error_summary()["storage.write"]["count"] == 2
