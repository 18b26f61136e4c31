"""Patching helpers shared by wrapper-based integrations: wrap and unwrap by identity, subclass hooks.

Usage::

    from sop_telemetry.integrations.patching import Patcher

    patches = Patcher("myframework")
    patches.wrap(SomeClass, "method", make_wrapper)    # make_wrapper(original) -> wrapper(self, *args, **kwargs)
    for cls in subclasses(SomeClass):
        patches.wrap(cls, "method", make_wrapper)
    patches.hook_subclasses(SomeClass, lambda cls: patches.wrap(cls, "method", make_wrapper))
    patches.undo()                                     # every attribute back to the very object it held

A wrapper is a plain function marked as ours (`functools.update_wrapper`, so `__wrapped__`, the name and the
signature are the original's) rather than a `wrapt.FunctionWrapper`, which builds a bound wrapper object at every
attribute access (docs/integrations.md has the measurement). `undo()` puts an original back only where what is there
now is what we installed: if someone patched on top of us, removing our layer would also remove theirs.
"""

from __future__ import annotations

import functools
import logging
import threading
from types import FunctionType
from typing import Any, Callable, Collection, List, Optional, Tuple

logger = logging.getLogger("sop_telemetry")

ABSENT: Any = object()  # "the attribute was not in the owner's __dict__"
MARK = "__sop_telemetry_wrapper__"


def is_ours(obj: Any) -> bool:
    """Whether `obj` is a wrapper made by a Patcher."""
    return getattr(obj, MARK, False) is True


def as_method(value: Any) -> Callable[..., Any]:
    """The original as a function of (self, *args, **kwargs). A plain function already is; anything else in a
    class's dict (a callable object, another library's wrapper) is looked up as Python would on an instance."""
    if type(value) is FunctionType:  # (not isinstance: a wrapt proxy of a function claims to be one)
        return value
    get = getattr(type(value), "__get__", None)
    if get is None:
        return lambda self, *args, **kwargs: value(*args, **kwargs)
    return lambda self, *args, **kwargs: get(value, self, type(self))(*args, **kwargs)


def subclasses(base: type) -> List[type]:
    """`base` and every class derived from it, now."""
    seen: List[type] = []
    todo = [base]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        try:
            todo.extend(type.__subclasses__(cls))
        except TypeError:
            pass
    return seen


class Patcher:
    """What one integration patched, so that `undo()` reverses exactly that. Thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        # (owner, attribute, what was in owner.__dict__ before (the original, or ABSENT), what we put there)
        self.patched: List[Tuple[Any, str, Any, Any]] = []

    def wrap(self, owner: Any, attr: str, factory: Callable[[Callable[..., Any]], Callable[..., Any]],
             method: bool = True) -> bool:
        """Replaces `owner.attr` (only if `owner` itself defines it, it is callable and not ours already) by
        `factory(original)`; with `method=True` the original is passed as a function of (self, ...)."""
        current_value = vars(owner).get(attr, ABSENT)
        if current_value is ABSENT or is_ours(current_value) or not callable(current_value):
            return False
        ours = factory(as_method(current_value) if method else current_value)
        try:
            functools.update_wrapper(ours, current_value)
        except Exception:  # noqa: BLE001 - an original with odd metadata: ours keeps its own, it still wraps
            pass
        setattr(ours, MARK, True)
        with self.lock:
            setattr(owner, attr, ours)
            self.patched.append((owner, attr, current_value, ours))
        logger.debug("sop_telemetry: %s patched %s.%s", self.name, getattr(owner, "__qualname__", owner), attr)
        return True

    def hook_subclasses(self, base: type, on_subclass: Callable[[type], None]) -> None:
        """Calls `on_subclass(cls)` for each class derived from `base` from now on (guarded). These bases usually
        inherit object's no-op `__init_subclass__`, so we set one and remember to delete it; a base that defines
        its own is chained."""
        original = vars(base).get("__init_subclass__", ABSENT)

        def __init_subclass__(cls: type, **kwargs: Any) -> None:
            if original is not ABSENT:
                original.__get__(None, cls)(**kwargs)
            else:
                super(base, cls).__init_subclass__(**kwargs)  # type: ignore[arg-type]
            from ..error_handler import guard

            with self.lock:
                guard(f"{self.name}.patch_subclass", on_subclass, cls)

        base.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment]
        with self.lock:
            self.patched.append((base, "__init_subclass__", original, vars(base)["__init_subclass__"]))

    def undo(self, attrs: Optional[Collection[str]] = None) -> None:
        """Restores every attribute patched (or only those named in `attrs`), newest first, by identity."""
        with self.lock:
            keep = [patch for patch in self.patched if attrs is not None and patch[1] not in attrs]
            undo = [patch for patch in self.patched if attrs is None or patch[1] in attrs]
            self.patched = keep
            while undo:
                owner, attr, original, ours = undo.pop()
                now = vars(owner).get(attr, ABSENT)
                if now is not ours:
                    logger.debug("sop_telemetry: %s.%s was changed by someone else; left as is", owner, attr)
                    continue
                if original is ABSENT:
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, original)
