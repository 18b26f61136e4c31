"""Framework integrations, each in its own module with `install()` / `uninstall()`.

Usage::

    from sop_telemetry.integrations import smolagents as integration
    integration.uninstall()     # restore smolagents exactly as it was
    integration.install()       # and patch it again

`auto_install()` (run by `import sop_telemetry`) patches smolagents when it is imported, or at once if it already is.
The post-import hook is our own small meta-path finder rather than `wrapt.register_post_import_hook`: importing
wrapt 2 pulls in asyncio and importlib.metadata, which alone would exceed our import budget, while by the time
smolagents has been imported those are loaded anyway (docs/design.md, "Installing").
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from importlib.abc import Loader
else:
    Loader = object  # (importlib.abc would cost `import sop_telemetry` ≈12 ms, a third of its budget)

logger = logging.getLogger("sop_telemetry")


class _HookedLoader(Loader):
    """Delegates to the real loader and runs the callback after the module body has executed."""

    def __init__(self, loader: Any, callback: Callable[[Any], None]) -> None:
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
        self._callback(module)


class _PostImportFinder:
    """A meta-path finder that fires `callback` once, right after module `name` finishes importing."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        self.remove()
        spec.loader = _HookedLoader(spec.loader, self.callback)
        return spec

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


_finder: Optional[_PostImportFinder] = None
_lock = threading.Lock()


def _on_smolagents(_module: Any = None) -> None:
    try:
        from . import smolagents as integration

        integration.install()
    except Exception as exc:  # noqa: BLE001 - a failed install must not break the user's import
        from ..error_handler import get_error_handler

        get_error_handler().record_error("integrations.smolagents.install", exc)


def auto_install() -> None:
    """Patches smolagents now if it is imported, else as soon as it is; safe to call repeatedly."""
    global _finder
    if "smolagents" in sys.modules and getattr(sys.modules["smolagents"], "__spec__", None) is not None:
        _on_smolagents()
        return
    with _lock:
        if _finder is None or _finder not in sys.meta_path:
            _finder = _PostImportFinder("smolagents", _on_smolagents)
            sys.meta_path.insert(0, _finder)
