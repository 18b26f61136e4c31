"""Environment context for a session: OS, Python, working directory, project root, a few variables.

Usage::

    info = collect_environment(extra_allowlist=["MY_DEPLOYMENT"])

Only an allowlist of variables is recorded, and a name that looks like a credential is masked even when listed:
telemetry files get copied around, secrets must never be in them.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import time
from pathlib import Path
from typing import Dict, Iterable, Optional

from .collector import encodable
from .models import EnvironmentInfo

# Re-exported: the masking lives in `redaction`, which the collector uses without pydantic.
from .redaction import MASK, looks_secret, redact_json, remember_secret, secret_values  # noqa: F401

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
