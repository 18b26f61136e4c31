"""The integration registry: which frameworks are instrumented, and the contract each integration keeps.

Usage::

    from sop_telemetry import registry
    registry.active()                       # {"smolagents": "1.26.0"}: integrations installed now, with versions
    registry.get("smolagents").uninstall()  # and .install(), .is_installed()

An integration is a module in `sop_telemetry.integrations` with one `Integration` subclass instance named
`integration`, and a line in `BUILTIN` naming it and the module it hooks. `import sop_telemetry` calls `arm()`, which
puts one post-import hook on `sys.meta_path` for every selected integration's module: when the framework is
imported (or at once if it already is), the integration module is imported and installed. The core knows the
integrations only by these names; it never imports one.

Selection: the `integrations` config key or `SOP_TELEMETRY_INTEGRATIONS` (which wins), a comma-separated list:
`smolagents,langchain` selects only those; `-langchain` all but that one; `none` none; empty or `all` all.

The post-import hook is our own small meta-path finder rather than `wrapt.register_post_import_hook`: importing
wrapt 2 pulls in asyncio and importlib.metadata, which alone would be twice the import budget of `import
sop_telemetry` (benchmarks/imports.py).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:
    from importlib.abc import Loader
else:
    Loader = object  # (importlib.abc would cost `import sop_telemetry` a third of its import budget)

logger = logging.getLogger("sop_telemetry")

# (name, the module whose import installs it, the module holding its `integration`).
BUILTIN: Tuple[Tuple[str, str, str], ...] = (
    ("smolagents", "smolagents", "sop_telemetry.integrations.smolagents"),
    ("pydantic_ai", "pydantic_ai", "sop_telemetry.integrations.pydantic_ai"),
    ("langchain", "langchain_core", "sop_telemetry.integrations.langchain"),
)

ENV_VAR = "SOP_TELEMETRY_INTEGRATIONS"


def report(operation: str, exc: BaseException) -> None:
    """The guard's inline shape (error_handler.report), imported when first needed: `import sop_telemetry` loads
    this module and nothing else of ours."""
    from .error_handler import report as guard_report

    guard_report(operation, exc)


class DidNotEnable(Exception):
    """Raised by an integration's `setup()` when it cannot run here: it is skipped with one log line."""


def _release(version: str) -> Tuple[int, ...]:
    """The numeric release of a version string: "1.26.0rc1" -> (1, 26, 0)."""
    parts: List[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def version_in(version: str, spec: str) -> bool:
    """Whether `version` meets a specifier such as ">=1.23,<1.27" (>=, >, <=, <, ==, != on release numbers)."""
    mine = _release(version)
    for clause in spec.split(","):
        clause = clause.strip()
        if not clause:
            continue
        op = next(o for o in (">=", "<=", "==", "!=", ">", "<", "") if clause.startswith(o))
        theirs = _release(clause[len(op):].strip())
        width = max(len(mine), len(theirs))
        a, b = mine + (0,) * (width - len(mine)), theirs + (0,) * (width - len(theirs))
        ok = {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b, "": a == b}[op]
        if not ok:
            return False
    return True


class Integration:
    """The contract. A subclass sets `name`, `module` (the import that triggers it), `supported` (a version
    specifier for `distribution`, default the module's top-level name) and implements `setup()` (patch, register
    handlers; raise DidNotEnable to be skipped) and `teardown()` (undo exactly what setup did). `install()` and
    `uninstall()` are idempotent and thread-safe and never raise; a version outside `supported` is skipped with one
    warning, and any other failure of setup() or teardown() is counted by the guard."""

    name: str = ""
    module: str = ""
    distribution: Optional[str] = None
    supported: str = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._installed = False
        self._skipped: Optional[str] = None  # why install() last declined, logged once

    # -- what a subclass implements ------------------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------------------------------
    def version(self) -> Optional[str]:
        """The installed version of the framework, or None if it is not installed."""
        top = sys.modules.get(self.module.partition(".")[0])
        version = getattr(top, "__version__", None)
        if isinstance(version, str):
            return version
        try:
            from importlib.metadata import version as dist_version

            return dist_version(self.distribution or self.module.partition(".")[0])
        except Exception:  # noqa: BLE001 - not installed, or broken metadata
            return None

    def is_installed(self) -> bool:
        return self._installed

    def install(self) -> bool:
        """Instruments the framework; True if it is (now or already) instrumented."""
        with self._lock:
            if self._installed:
                logger.debug("sop_telemetry: %s already instrumented", self.name)
                return True
            try:
                version = self.version()
                if version is None:
                    raise DidNotEnable(f"{self.distribution or self.module} is not installed")
                if self.supported and not version_in(version, self.supported):
                    raise DidNotEnable(f"{self.name} {version} is outside the supported range ({self.supported})")
                self.setup()
            except DidNotEnable as reason:
                if self._skipped != str(reason):
                    self._skipped = str(reason)
                    logger.warning("sop_telemetry: %s; it is not instrumented", reason)
                return False
            except Exception as exc:  # noqa: BLE001 - the guard: a failed install never reaches the user's import
                report(f"integrations.{self.name}.install", exc)
                return False
            self._installed = True
            self._skipped = None
            logger.debug("sop_telemetry: %s %s instrumented", self.name, version)
            return True

    def uninstall(self) -> None:
        """Undoes install(). Idempotent."""
        with self._lock:
            if not self._installed:
                logger.debug("sop_telemetry: %s not instrumented; nothing to uninstall", self.name)
                return
            self._installed = False
            try:
                self.teardown()
            except Exception as exc:  # noqa: BLE001 - the guard
                report(f"integrations.{self.name}.uninstall", exc)


# -- the registry --------------------------------------------------------------------------------------------------
_lock = threading.RLock()
_known: Dict[str, Tuple[str, str]] = {name: (module, path) for name, module, path in BUILTIN}
_loaded: Dict[str, Integration] = {}
_selection: Optional[str] = None  # the config key's value; the environment variable wins over it
_finder: Optional["_PostImportFinder"] = None


def register(name: str, module: str, path: str) -> None:
    """Adds an integration outside BUILTIN (a third-party one): `path` is the module holding its `integration`,
    installed when `module` is imported. Takes effect at the next `arm()`."""
    with _lock:
        _known[name] = (module, path)


def names() -> List[str]:
    return list(_known)


def get(name: str) -> Integration:
    """The integration object (its module is imported now; its framework is not)."""
    with _lock:
        integration = _loaded.get(name)
        if integration is None:
            integration = _loaded[name] = importlib.import_module(_known[name][1]).integration
        return integration


def selected(spec: Optional[str] = None, known: Optional[Iterable[str]] = None) -> List[str]:
    """The integrations a selection names (see the module's docstring); unknown names are ignored with a warning."""
    known = list(_known if known is None else known)
    if spec is None:
        spec = os.environ.get(ENV_VAR)
        if spec is None:
            spec = _selection
    items = [item.strip() for item in (spec or "").split(",") if item.strip()]
    if not items or items == ["all"]:
        return known
    if items == ["none"]:
        return []
    wanted = [item for item in items if not item.startswith("-")]
    unwanted = {item[1:].strip() for item in items if item.startswith("-")}
    for item in [*wanted, *unwanted]:
        if item not in known and item not in ("all", "none"):
            logger.warning("sop_telemetry: %s names no integration %r (known: %s)", ENV_VAR, item, ", ".join(known))
    base = known if not wanted or "all" in wanted else [name for name in known if name in wanted]
    return [name for name in base if name not in unwanted]


def active() -> Dict[str, Optional[str]]:
    """The integrations installed now, with the version of their framework."""
    with _lock:
        return {name: integration.version() for name, integration in _loaded.items() if integration.is_installed()}


def describe() -> List[Dict[str, Any]]:
    """Every known integration: name, hooked module, supported range, framework version found (without importing
    the framework), whether it is selected and active. For `sop-telemetry stats`."""
    chosen = selected()
    rows = []
    for name, (module, _path) in _known.items():
        integration = _loaded.get(name)
        supported = version = None
        if integration is not None:
            supported, version = integration.supported, integration.version()
        else:
            try:
                integration = get(name)
                supported, version = integration.supported, integration.version()
            except Exception:  # noqa: BLE001 - an integration module that cannot even be imported
                pass
        rows.append({"name": name, "module": module, "supported": supported, "version": version,
                     "selected": name in chosen, "active": integration is not None and integration.is_installed()})
    return rows


def _install(name: str) -> None:
    try:
        get(name).install()
    except Exception as exc:  # noqa: BLE001 - an integration module that cannot be imported: the guard
        report(f"integrations.{name}.install", exc)


def _imported(module: str) -> bool:
    return module in sys.modules and getattr(sys.modules[module], "__spec__", None) is not None


def arm(selection: Any = None) -> None:
    """Installs each selected integration whose framework is imported, and hooks the import of the others.
    `selection` (the config key: a list or a comma-separated string) replaces the one given before; selected
    integrations that are installed but no longer selected are uninstalled. Safe to call repeatedly."""
    global _selection, _finder
    with _lock:
        if selection is not None:
            _selection = selection if isinstance(selection, str) else ",".join(selection)
        chosen = selected()
        for name, integration in list(_loaded.items()):
            if name not in chosen and integration.is_installed():
                integration.uninstall()
        waiting: Dict[str, List[str]] = {}
        for name in chosen:
            module = _known[name][0]
            if _imported(module):
                _install(name)
            else:
                waiting.setdefault(module, []).append(name)
        if _finder is not None:
            _finder.remove()
            _finder = None
        if waiting:
            _finder = _PostImportFinder(waiting, _install)
            sys.meta_path.insert(0, _finder)


class _HookedLoader(Loader):
    """Delegates to the real loader and runs the callback after the module body has executed."""

    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self._loader = loader
        self._callback = callback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        # Later code (pickling, importlib.reload) must see the real loader, not this shim.
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        try:
            module.__loader__ = self._loader
        except AttributeError:
            pass
        self._loader.exec_module(module)
        self._callback()


class _PostImportFinder:
    """One meta-path finder for every hooked module: right after module M finishes importing, installs the
    integrations waiting for M; leaves sys.meta_path when none waits any more."""

    def __init__(self, waiting: Dict[str, List[str]], install: Callable[[str], None]) -> None:
        self.waiting = waiting
        self.install = install
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.waiting or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        names = self.waiting.pop(fullname, [])
        if not self.waiting:
            self.remove()

        def installed() -> None:
            for name in names:
                self.install(name)

        spec.loader = _HookedLoader(spec.loader, installed)
        return spec

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
