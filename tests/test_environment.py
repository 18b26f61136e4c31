"""Environment context: the spec's fields, the project root, and an allowlist of variables with secrets masked."""

from __future__ import annotations

import os
import platform

import pytest

from sop_telemetry.environment import (
    DEFAULT_ALLOWLIST,
    MASK,
    collect_environment,
    find_project_root,
    looks_secret,
    select_environment,
)


@pytest.mark.parametrize("name", ["MY_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                                  "DB_PASSWORD", "PASSWD", "GOOGLE_APPLICATION_CREDENTIALS", "AUTH_HEADER",
                                  "SSH_PRIVATE_KEY", "my_api_key", "SESSION_COOKIE"])
def test_secret_looking_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["CI", "LANG", "VIRTUAL_ENV", "HF_HUB_OFFLINE", "MY_DEPLOYMENT"])
def test_harmless_names(name):
    assert not looks_secret(name)


def test_only_the_allowlist_is_recorded_and_secrets_are_masked():
    environ = {"CI": "true", "LANG": "C.UTF-8", "HOME": "/root", "OPENAI_API_KEY": "sk-live",
               "MY_API_KEY": "sk-secret-123", "MY_DEPLOYMENT": "blue"}
    selected = select_environment(environ, extra_allowlist=["MY_API_KEY", "MY_DEPLOYMENT", "NOT_SET"])
    assert selected == {"CI": "true", "LANG": "C.UTF-8", "MY_API_KEY": MASK, "MY_DEPLOYMENT": "blue"}
    assert "sk-secret-123" not in repr(selected) and "sk-live" not in repr(selected)


def test_the_default_allowlist_holds_no_secret_names():
    assert not [name for name in DEFAULT_ALLOWLIST if looks_secret(name)]


def test_project_root_is_found_by_walking_up(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    deep = tmp_path / "repo" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_project_root(deep) == str(tmp_path / "repo")

    (tmp_path / "repo" / "src" / "pyproject.toml").write_text("[project]\n")
    assert find_project_root(deep) == str(tmp_path / "repo" / "src")


def test_a_git_file_marks_a_root_too(tmp_path):
    (tmp_path / "worktree").mkdir()
    (tmp_path / "worktree" / ".git").write_text("gitdir: /elsewhere\n")
    assert find_project_root(tmp_path / "worktree") == str(tmp_path / "worktree")


def test_a_folder_named_pyproject_does_not_count(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "a" / "pyproject.toml").mkdir(parents=True)
    assert find_project_root(tmp_path / "a") == str(tmp_path)


def test_no_marker_gives_the_start_folder(tmp_path, monkeypatch):
    start = tmp_path / "plain"
    start.mkdir()
    monkeypatch.setattr("pathlib.Path.exists", lambda self: False)
    monkeypatch.setattr("pathlib.Path.is_file", lambda self: False)
    assert find_project_root(start) == str(start.resolve())


def test_collect_environment_fills_the_specs_fields(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("MY_API_KEY", "sk-secret-123")
    monkeypatch.setenv("CI", "1")
    info = collect_environment(extra_allowlist=["MY_API_KEY"])
    assert info.os_type == platform.system()
    assert info.os_version == platform.release()
    assert info.python_version == platform.python_version()
    assert info.working_directory == str(tmp_path / "sub")
    assert info.project_root == str(tmp_path)
    assert info.timezone
    assert info.pid == os.getpid()
    assert info.environment_variables["MY_API_KEY"] == MASK
    assert info.environment_variables["CI"] == "1"
    assert "sk-secret-123" not in info.model_dump_json()
