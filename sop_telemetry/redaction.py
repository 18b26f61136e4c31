"""Credentials kept out of everything we write or send: known secret values are masked, whole or cut in two.

Usage::

    remember_secret(model.api_key)                        # masked from now on, wherever it turns up
    text = mask_secrets(text, secret_values())            # every whole occurrence becomes ***
    clipped = mask_cut_secret(text[:499], secret_values()) + "…"   # and the beginning of one a cut went through
    file_text = redact_json(session_json, secret_values())

The secrets are the values of environment variables named like credentials and the values remembered at run time (a
model's key). This module imports nothing of ours and no pydantic: the collector's `clip` uses it on the agent's
thread.
"""

from __future__ import annotations

import json
import os
import re
import time
from functools import lru_cache
from typing import Any, List, Optional, Sequence, Set, Tuple

MASK = "***"
ELLIPSIS = "…"  # what `collector.clip` ends a cut text with

_SECRET_RE = re.compile(r"KEY|TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE|SIGNATURE|CERT", re.I)

# Credential values seen at run time (a model's api_key): masked like the environment's, wherever they turn up.
_remembered: Set[str] = set()
# Shorter values ("1", "true", a session number) are not worth masking and would mangle unrelated text.
_MIN_SECRET_LENGTH = 8
# The shortest beginning of a secret masked at a cut: three characters ("sk-") tell nothing.
_MIN_FRAGMENT = 4
# Named like a password by the regex above, but they hold the current directory.
_NOT_SECRETS = {"PWD", "OLDPWD"}


@lru_cache(maxsize=4096)  # (the same few dozen variable names at every write)
def looks_secret(name: str) -> bool:
    return _SECRET_RE.search(name) is not None


def remember_secret(value: object) -> None:
    """Masks `value` in every session file written from now on (e.g. a key quoted by an HTTP error message)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
        _remembered.add(value)


# (the environment as it was, how many values were remembered, and the secrets found then): see secret_values.
_found: Tuple[Any, int, List[str]] = (None, -1, [])


def secret_values() -> List[str]:
    """The values to mask: remembered ones, and those of environment variables named like credentials."""
    global _found
    # Looked up again only when the environment or the remembered values changed: decoding every variable was about
    # 80 µs of each write. CPython's os.environ keeps its raw mapping in `_data`, compared in one C call.
    raw, last = getattr(os.environ, "_data", None), _found
    if raw is not None and last[1] == len(_remembered) and last[0] == raw:
        return list(last[2])
    found = set(_remembered)
    for name, value in dict(os.environ).items():
        if len(value) >= _MIN_SECRET_LENGTH and name not in _NOT_SECRETS and looks_secret(name):
            found.add(value)
    values = sorted(found, key=len, reverse=True)  # longest first: one secret may contain another
    _found = (dict(raw) if raw is not None else None, len(_remembered), values)
    return list(values)


_recent: Tuple[Any, List[str]] = (None, [])


def recent_secret_values() -> List[str]:
    """`secret_values()`, read again at most once a second unless a secret was remembered or a variable added or
    removed since: for `clip` on the agent's thread. What is written or sent is masked again with the current
    values (redact_json), including the beginning of a secret a clip cut through."""
    global _recent
    key = (len(_remembered), len(os.environ), int(time.monotonic()))
    if _recent[0] != key:
        _recent = (key, secret_values())
    return _recent[1]


def mask_secrets(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_cut_secret(text: str, secrets: Sequence[str]) -> str:
    """`text` (what a cut kept) with the longest beginning of a secret that it ends with masked."""
    best = 0
    for secret in secrets:
        if secret[:_MIN_FRAGMENT] not in text[-len(secret):]:
            continue  # (the usual case, found in one scan of the tail)
        for length in range(min(len(secret) - 1, len(text)), max(best, _MIN_FRAGMENT - 1), -1):
            if text.endswith(secret[:length]):
                best = length
                break
    return text[:-best] + MASK if best else text


def _cut_secret_present(text: str, secrets: Sequence[str]) -> bool:
    if not secrets:
        return False
    longest = max(len(secret) for secret in secrets)
    at = text.find(ELLIPSIS)
    while at >= 0:
        before = text[max(0, at - longest):at]
        if mask_cut_secret(before, secrets) is not before:
            return True
        at = text.find(ELLIPSIS, at + 1)
    return False


@lru_cache(maxsize=256)  # (the same few secrets at every write)
def _escaped(secret: str) -> str:
    """How `secret` reads inside a JSON string."""
    return json.dumps(secret, ensure_ascii=False)[1:-1]


# Fields whose format is checked when a file is read: a "secret" that happens to equal "completed" must not make
# the file unreadable.
_FORMATTED = {"status", "start_time", "end_time", "schema_version", "session_id"}


def redact_json(text: str, secrets: Sequence[str]) -> str:
    """A session file's JSON with every secret value replaced by MASK inside string values (and model names used
    as keys), and the beginning of a remembered one that a clip cut through (a text ending in "…") masked too.
    Parsed and rewritten only when a secret is there, so the usual write costs a scan or two per secret."""
    present = [s for s in secrets if s in text or _escaped(s) in text]
    # A clip masks the secrets known when it cuts; one remembered later (a model's key, learned when its run's records
    # are built) may have been cut through, so the beginnings of those are looked for here.
    late = [s for s in secrets if s in _remembered and s[:_MIN_FRAGMENT] in text]
    if not present and not _cut_secret_present(text, late):
        return text

    def mask(value: str) -> str:
        value = mask_secrets(value, present)
        if late and value.endswith(ELLIPSIS):
            value = mask_cut_secret(value[:-1], late) + ELLIPSIS
        return value

    def clean(value: Any, key: Optional[str] = None) -> Any:
        if isinstance(value, str):
            return value if key in _FORMATTED else mask(value)
        if isinstance(value, list):
            return [clean(item, key) for item in value]
        if isinstance(value, dict):
            return {mask(k) if key == "model_breakdown" else k: clean(v, k) for k, v in value.items()}
        return value

    return json.dumps(clean(json.loads(text)), ensure_ascii=False, separators=(",", ":"))
