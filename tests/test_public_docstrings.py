"""Every public name says what it is for: what `from sop_telemetry import *` gives, the methods and properties of
those classes, and the functions and classes of the modules a user reads sessions with, so that `help()` on any of
them is useful."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Iterator, Tuple

import pytest

import sop_telemetry

READING_MODULES = ["sop_telemetry.analysis", "sop_telemetry.exports", "sop_telemetry.storage", "sop_telemetry.cli",
                   "sop_telemetry.viewer", "sop_telemetry.viewer.server"]


def _own_members(cls: type) -> Iterator[Tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value):
            yield name, value


def _public() -> Iterator[Tuple[str, Any]]:
    for name in sop_telemetry.__all__:
        if not name.startswith("__"):
            yield f"sop_telemetry.{name}", getattr(sop_telemetry, name)
    for module_name in READING_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name \
                    and (inspect.isfunction(value) or inspect.isclass(value)):
                yield f"{module_name}.{name}", value


def _undocumented() -> Iterator[str]:
    for where, value in _public():
        if not (value.__doc__ or "").strip():
            yield where
        if inspect.isclass(value):
            for name, member in _own_members(value):
                if not (member.__doc__ or "").strip() and not _documented_above(value, name):
                    yield f"{where}.{name}"


def _documented_above(cls: type, name: str) -> bool:
    """An override documented by the class it overrides (help() shows that docstring)."""
    return any((getattr(getattr(base, name, None), "__doc__", None) or "").strip() for base in cls.__mro__[1:])


def test_every_public_class_and_function_has_a_docstring():
    missing = sorted(set(_undocumented()))
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("name", ["TelemetryManager", "TelemetryCollector", "TelemetrySession", "TelemetryDataStore"])
def test_the_main_classes_show_how_to_call_them(name):
    doc = inspect.getdoc(getattr(sop_telemetry, name))
    assert re.search(r"^\s+\w+ = \w+(\.\w+)*\(", doc, re.M), f"{name}'s docstring has no example:\n{doc}"
