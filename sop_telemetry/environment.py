"""Environment context for a session: OS, Python, working directory, project root, a few variables.

Usage::

    info = collect_environment(extra_allowlist=["MY_DEPLOYMENT"])

Only an allowlist of variables is recorded, and a name that looks like a credential is masked even when listed:
telemetry files get copied around, secrets must never be in them.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from .collector import encodable
from .models import EnvironmentInfo

MASK = "***"

# Variables that help analysis (which venv, which CI, which locale) and say nothing private.
DEFAULT_ALLOWLIST = (
    "VIRTUAL_ENV",
    "CONDA_DEFAULT_ENV",
    "CI",
    "GITHUB_ACTIONS",
    "LANG",
    "TZ",
    "PYTHONHASHSEED",
    "HF_HUB_OFFLINE",
    "SOP_TELEMETRY_DIR",
    "SOP_TELEMETRY_DISABLED",
)

_SECRET_RE = re.compile(r"KEY|TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE|SIGNATURE|CERT", re.I)


def looks_secret(name: str) -> bool:
    return _SECRET_RE.search(name) is not None


# Credential values seen at run time (a model's api_key): masked like the environment's, wherever they turn up.
_remembered: Set[str] = set()
# Shorter values ("1", "true", a session number) are not worth masking and would mangle unrelated text.
_MIN_SECRET_LENGTH = 8
# Named like a password by the regex above, but they hold the current directory.
_NOT_SECRETS = {"PWD", "OLDPWD"}


def remember_secret(value: object) -> None:
    """Masks `value` in every session file written from now on (e.g. a key quoted by an HTTP error message)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
        _remembered.add(value)


def secret_values() -> List[str]:
    """The values to mask: remembered ones, and those of environment variables named like credentials."""
    found = set(_remembered)
    for name, value in dict(os.environ).items():
        if len(value) >= _MIN_SECRET_LENGTH and name not in _NOT_SECRETS and looks_secret(name):
            found.add(value)
    return sorted(found, key=len, reverse=True)  # longest first: one secret may contain another


# Fields whose format is checked when a file is read: a "secret" that happens to equal "completed" must not make
# the file unreadable.
_FORMATTED = {"status", "start_time", "end_time", "schema_version", "session_id"}


def redact_json(text: str, secrets: Sequence[str]) -> str:
    """A session file's JSON with every secret value replaced by MASK inside string values (and model names used
    as keys). Parsed and rewritten only when a secret is there, so the usual write costs one scan per secret."""
    present = [s for s in secrets if s in text or json.dumps(s, ensure_ascii=False)[1:-1] in text]
    if not present:
        return text

    def mask(value: str) -> str:
        for secret in present:
            value = value.replace(secret, MASK)
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


def select_environment(environ: Dict[str, str], extra_allowlist: Iterable[str] = ()) -> Dict[str, str]:
    selected = {}
    for name in (*DEFAULT_ALLOWLIST, *extra_allowlist):
        if name in environ:
            selected[name] = MASK if looks_secret(name) else environ[name]
    return selected


def find_project_root(start: Path) -> str:
    """The nearest folder at or above `start` holding `.git` or `pyproject.toml`; `start` itself if none does."""
    try:
        current = start.resolve()
        for folder in (current, *current.parents):
            if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
                return str(folder)
        return str(current)
    except OSError:
        return str(start)


def _version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata
        return None


def _user() -> Optional[str]:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return None


def collect_environment(extra_allowlist: Iterable[str] = ()) -> EnvironmentInfo:
    try:
        cwd = Path(os.getcwd())
    except OSError:
        cwd = Path(".")
    fields = dict(
        os_type=platform.system(),
        os_version=platform.release(),
        python_version=platform.python_version(),
        working_directory=str(cwd),
        project_root=find_project_root(cwd),
        user_name=_user(),
        timezone=time.strftime("%Z") or "UTC",
        hostname=socket.gethostname(),
        telemetry_version=_version("sop-telemetry"),
    )
    # A folder or a variable with bytes that are not UTF-8 (decoded with surrogateescape) must not make the file
    # unwritable.
    fields = {key: encodable(value) if isinstance(value, str) else value for key, value in fields.items()}
    variables = select_environment(dict(os.environ), extra_allowlist)
    return EnvironmentInfo(**fields, pid=os.getpid(), frameworks=framework_versions(),
                           environment_variables={encodable(k): encodable(v) for k, v in variables.items()})


def framework_versions() -> Dict[str, str]:
    """The version of each framework instrumented now, by integration name."""
    from .registry import active

    return {name: encodable(version) for name, version in active().items() if version is not None}
