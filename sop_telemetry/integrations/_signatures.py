"""Wrappers that take the wrapped function's own parameters, generated from a template.

Usage::

    make = factory(TEMPLATE, globals())
    wrapper = make(original)        # same parameters and defaults as `original`; calls it through the template

Why: a wrapper `def f(self, *args, **kwargs): return original(self, *args, **kwargs)` packs the caller's arguments
into a tuple and a dict and unpacks them again, on every step; a wrapper with the original's own parameters that
passes them on by position does not (measured: docs/design.md, "Patch shapes").

A template is the source of ``def make(original): def <name>(PARAMS): ... original(CALL) ...; return <name>``,
compiled with `namespace` as its globals, with these words replaced:

- PARAMS: the original's parameters (the defaults are the original's own objects, set after compiling);
- CALL: the arguments passed on, the positional ones by position. ``original(CALL)`` as a whole, when the original
  takes ``**kwargs`` (every smolagents model's `generate` does) and no ``*args``, becomes
  ``(original(a, b) if not kwargs else original(a, b, **kwargs))``: smolagents passes no extra keywords, and a call
  with ``**kwargs`` in it builds a tuple and a dict and goes through CALL_FUNCTION_EX even when the dict is empty
  (docs/design.md, "Patch shapes");
- SELF: the first parameter's name;
- ARGS / KWARGS: expressions for the positional arguments after SELF (a tuple) and the keyword-only and extra
  keyword ones (a dict), for code that needs the call's arguments (content capture).

Anything that is not a plain function with a positional first parameter, or whose parameters are named like a name
the template uses, gets the generic wrapper `(self, *args, **kwargs)` made from the same template.
"""

from __future__ import annotations

import inspect
import itertools
import linecache
import re
from types import CodeType, FunctionType
from typing import Any, Callable, Dict, Optional, Tuple

_GENERIC = {"PARAMS": "self, *args, **kwargs", "CALL": "self, *args, **kwargs", "SELF": "self", "ARGS": "args",
            "KWARGS": "kwargs"}
_serial = itertools.count(1)
_WORD = re.compile(r"\b(PARAMS|CALL|SELF|ARGS|KWARGS)\b")


def _fill(template: str, words: Dict[str, str]) -> str:
    template = template.replace("original(CALL)", words.get("INVOKE", "original(CALL)"))
    return _WORD.sub(lambda match: words[match.group(1)], template)


def _compile(source: str, namespace: Dict[str, Any]) -> Callable[..., Any]:
    # Named after the module the template is in, and registered with linecache, so that a traceback through the
    # wrapper says where it comes from and shows its lines.
    filename = f"{namespace.get('__file__', 'sop_telemetry')} (generated wrapper {next(_serial)})"
    lines = source.splitlines(True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    scope: Dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace, scope)  # noqa: S102 - our own template, see the docstring
    return scope["make"]


def _inner_code(make: Callable[..., Any]) -> CodeType:
    return next(const for const in make.__code__.co_consts if isinstance(const, CodeType))


def _words(original: Any) -> Optional[Dict[str, str]]:
    """The replacements for `original`'s own signature, or None when it gets the generic one."""
    if type(original) is not FunctionType:
        return None
    code = original.__code__
    count = code.co_argcount
    if count == 0:
        return None
    names = code.co_varnames
    positional = list(names[:count])
    kwonly = list(names[count:count + code.co_kwonlyargcount])
    index = count + len(kwonly)
    star = dstar = None
    if code.co_flags & inspect.CO_VARARGS:
        star = names[index]
        index += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        dstar = names[index]
    first_default = count - len(original.__defaults__ or ())
    kwdefaults = original.__kwdefaults__ or {}
    params = []
    for i, name in enumerate(positional):
        params.append(name + ("=None" if i >= first_default else ""))  # (placeholders: see `factory`)
        if i + 1 == code.co_posonlyargcount:
            params.append("/")
    if star:
        params.append("*" + star)
    elif kwonly:
        params.append("*")
    params += [name + ("=None" if name in kwdefaults else "") for name in kwonly]
    if dstar:
        params.append("**" + dstar)
    rest = positional[1:] + (["*" + star] if star else [])
    keywords = [f"{name}={name}" for name in kwonly] + (["**" + dstar] if dstar else [])
    args = f"({', '.join(rest)},)" if rest else "()"
    kwargs = "{" + ", ".join([f"{name!r}: {name}" for name in kwonly] + (["**" + dstar] if dstar else [])) + "}"
    call = ", ".join(positional[:1] + rest + keywords)
    invoke = f"original({call})"
    if dstar and not star:
        plain = ", ".join(positional[:1] + rest + keywords[:-1])
        invoke = f"(original({plain}) if not {dstar} else {invoke})"
    return {
        "PARAMS": ", ".join(params),
        "CALL": call,
        "INVOKE": invoke,
        "SELF": positional[0],
        "ARGS": args,
        "KWARGS": kwargs,
    }


def factory(template: str, namespace: Dict[str, Any]) -> Callable[[Any], Any]:
    """`make(original)` for `template` (see the module's docstring). One compiled `make` per distinct signature."""
    compiled: Dict[Tuple[str, str], Callable[..., Any]] = {}
    reserved: set = set()

    def make(original: Any) -> Any:
        if not compiled:
            generic = _compile(_fill(template, _GENERIC), namespace)
            compiled[_GENERIC["PARAMS"], _GENERIC["CALL"]] = generic
            inner = _inner_code(generic)
            # Every name the template's code uses besides the generic parameters: a parameter of the original
            # named like one of them would shadow it.
            reserved.update(inner.co_varnames, inner.co_names, inner.co_freevars, generic.__code__.co_varnames)
            reserved.difference_update(("self", "args", "kwargs"))
        words = _words(original)
        if words is not None and reserved.intersection(original.__code__.co_varnames[:_arg_count(original)]):
            words = None
        if words is None:
            return compiled[_GENERIC["PARAMS"], _GENERIC["CALL"]](original)
        key = (words["PARAMS"], words["CALL"])
        if key not in compiled:
            compiled[key] = _compile(_fill(template, words), namespace)
        wrapper = compiled[key](original)
        # The source gave each default a None placeholder; these are the original's own objects (a sentinel the
        # original checks with `is` must arrive as that very object).
        wrapper.__defaults__ = original.__defaults__
        wrapper.__kwdefaults__ = original.__kwdefaults__
        return wrapper

    return make


def _arg_count(function: FunctionType) -> int:
    code = function.__code__
    flags = code.co_flags
    return (code.co_argcount + code.co_kwonlyargcount + bool(flags & inspect.CO_VARARGS)
            + bool(flags & inspect.CO_VARKEYWORDS))
