"""Bad input: telemetry reads what it can, refuses the rest with a clear message, and never reaches outside its
directory or into the agent's result.

- Session files: malformed, truncated, wrong types, a newer schema, huge, not UTF-8, links, FIFOs, odd ids (and
  random bytes and random JSON through `hypothesis`): the loader raises SessionLoadError/KeyError or skips.
- Config: random dicts into build_config give a TelemetryConfig that can be used, or ConfigError.
- The `sop-telemetry` command on the same bad files and ids: one line on stderr, never a traceback.
- Tools and models returning odd objects: the run is the uninstrumented run, and what can be recorded is.
- Secrets in the environment or on a model never reach a session file or the log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from agent_runs import assert_same_outcome, capture, uninstrumented
from fakes import ScriptedModel, call, tool_calls_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smolagents import Tool, ToolCallingAgent, tool
from smolagents.models import ChatMessage, OpenAIModel
from smolagents.utils import AgentGenerationError

from sop_telemetry.config import ConfigError, TelemetryConfig, build_config
from sop_telemetry.error_handler import get_error_handler
from sop_telemetry.models import SCHEMA_VERSION, TelemetrySession
from sop_telemetry.storage import SessionLoadError, TelemetryDataStore, parse_session

SID = "20260101T000000_000000_0000abcd"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_session(**changes: Any) -> Dict[str, Any]:
    data = {
        "schema_version": SCHEMA_VERSION,
        "session_id": SID,
        "start_time": "2026-01-01T00:00:00Z",
        "end_time": "2026-01-01T00:01:00Z",
        "environment": {"os_type": "Linux", "environment_variables": {"LANG": "C"}},
        "tasks": [{
            "task_id": "t1", "description": "a task", "start_time": "2026-01-01T00:00:00Z",
            "end_time": "2026-01-01T00:00:30Z", "duration": 30.0, "status": "completed",
            "agents": [{"agent_id": "a1", "agent_type": "CodeAgent", "agent_name": "CodeAgent",
                        "start_time": "2026-01-01T00:00:00Z", "status": "completed", "steps": 1}],
            "llm_calls": [{"call_id": "c1", "model": "m", "start_time": "2026-01-01T00:00:00Z",
                           "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}],
            "tools": [{"call_id": "c2", "tool_name": "add", "start_time": "2026-01-01T00:00:01Z"}],
            "steps": [{"step_number": 1, "start_time": "2026-01-01T00:00:00Z", "llm_calls": 1}],
            "dropped_records": {},
        }],
    }
    data.update(changes)
    return data


def _loads_or_refuses(data: bytes | str) -> Optional[TelemetrySession]:
    """What every reader may do with any input: a session, or SessionLoadError. Anything else is a bug."""
    try:
        session = parse_session(data, source="fuzz")
    except SessionLoadError as exc:
        assert str(exc).startswith("fuzz: not a valid session file")
        return None
    # A loaded session can be used: its totals computed and written back out.
    assert session.total_duration >= 0 and isinstance(session.total_tokens.total_tokens, int)
    session.to_json()
    return session


# -- session files ---------------------------------------------------------------------------------------------------
BAD_FILES = {
    "malformed json": b'{"session_id": "x", "tasks": [',
    "truncated": json.dumps(_valid_session()).encode()[:-40],
    "empty": b"",
    "a json array": b"[1, 2, 3]",
    "a json string": b'"session"',
    "wrong types": json.dumps(_valid_session(tasks="many")).encode(),
    "a wrong nested type": json.dumps(_valid_session(
        tasks=[{**_valid_session()["tasks"][0], "llm_calls": [{"model": ["x"], "start_time": 5}]}])).encode(),
    "a naive date": json.dumps(_valid_session(start_time="2026-01-01T00:00:00")).encode(),
    "a future schema": json.dumps(_valid_session(schema_version=SCHEMA_VERSION + 1)).encode(),
    "a huge schema number": json.dumps(_valid_session(schema_version=10 ** 40)).encode(),
    "not utf-8": b'{"session_id": "\xff\xfe", "start_time": "2026-01-01T00:00:00Z"}',
    "utf-16": json.dumps(_valid_session()).encode("utf-16"),
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "nan tokens": json.dumps(_valid_session()).replace('"prompt_tokens": 10', '"prompt_tokens": NaN').encode(),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_session_file_is_refused_with_a_clear_message(tmp_path, caplog, name):
    caplog.set_level(logging.WARNING, logger="sop_telemetry")
    store = TelemetryDataStore(tmp_path)
    (tmp_path / f"{SID}.json").write_bytes(BAD_FILES[name])
    good = "20260102T000000_000000_0000abcd"
    store.write(good, json.dumps(_valid_session(session_id=good)))

    with pytest.raises(SessionLoadError, match=rf"^{SID}: not a valid session file \(.+\)$"):
        store.load(SID)
    # Listing and loading everything skip it (one warning naming the file) and still read the good one.
    assert [s.session_id for s in store.iter_sessions()] == [good]
    assert [r.getMessage()[:60] for r in caplog.records] == [f"sop_telemetry: skipping {SID}: not a valid session file"[:60]]
    if name == "a future schema":
        assert "newer than this sop_telemetry understands" in caplog.records[0].getMessage()


def test_huge_strings_load_and_stay_whole(tmp_path):
    huge = "x" * 20_000_000
    store = TelemetryDataStore(tmp_path)
    store.write(SID, json.dumps(_valid_session(tasks=[{**_valid_session()["tasks"][0], "description": huge}])))
    assert store.load(SID).tasks[0].description == huge


def test_unknown_fields_from_a_newer_minor_writer_are_ignored():
    data = _valid_session(new_top_level={"a": 1})
    data["tasks"][0]["new_task_field"] = [1, 2]
    assert _loads_or_refuses(json.dumps(data)).tasks[0].task_id == "t1"


@given(st.binary(max_size=3000))
@FUZZ
def test_random_bytes_never_crash_the_loader(data):
    _loads_or_refuses(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["2026-01-01T00:00:00Z", "completed", "running", "failed", SID, "", "NaN"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["session_id", "start_time", "tasks", "llm_calls", "tools", "agents", "steps", "model",
                         "task_id", "status", "prompt_tokens", "schema_version", "token_usage", "x"]),
        children, max_size=6),
    max_leaves=40,
)


@given(_JSON)
@FUZZ
def test_random_json_structures_never_crash_the_loader(value):
    _loads_or_refuses(json.dumps(value))


def _paths(value: Any, prefix: tuple = ()) -> List[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, prefix + (index,))
    return found


@given(st.data())
@FUZZ
def test_a_valid_session_with_any_one_value_replaced_never_crashes_the_loader(data):
    session = _valid_session()
    path = data.draw(st.sampled_from(_paths(session)[1:]))
    target = session
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(_JSON)
    _loads_or_refuses(json.dumps(session))


@given(st.binary(max_size=500) | _JSON.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=100, deadline=None)
def test_the_store_reads_random_files_without_crashing(data):
    with tempfile.TemporaryDirectory() as folder:
        store = TelemetryDataStore(Path(folder))
        (Path(folder) / f"{SID}.json").write_bytes(data)
        try:
            store.load(SID)
        except SessionLoadError:
            pass
        assert len(list(store.iter_sessions())) <= 1


BAD_IDS = ["..", "../x", "/etc/passwd", "a/b", "x\x00y", f"{SID}\x00", f"../{SID}", f"{SID}/..", "", "latest",
           f"{SID}.json", " " + SID, SID.upper(), 12, None, b"bytes"]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_ids_that_are_not_session_ids_never_touch_the_disk(manager, storage_dir, monkeypatch, bad_id):
    store = TelemetryDataStore(storage_dir)
    opened: List[Any] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    assert store.path_for(bad_id) is None
    assert store.read_bytes(bad_id) is None
    with pytest.raises(KeyError):
        store.load(bad_id)
    if bad_id is not None:  # None asks for the current session
        assert manager.get_session_data(bad_id) is None
    assert opened == []


def test_links_fifos_and_folders_named_like_sessions_are_never_followed(tmp_path, manager):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_text(json.dumps(_valid_session()))
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = TelemetryDataStore(store_dir)
    ids = {"link": "20200101T000000_000000_00000001", "dirlink": "20200101T000000_000000_00000002",
           "fifo": "20200101T000000_000000_00000003", "folder": "20200101T000000_000000_00000004"}
    (store_dir / f"{ids['link']}.json").symlink_to(secret)
    (store_dir / f"{ids['dirlink']}.json").symlink_to(outside, target_is_directory=True)
    os.mkfifo(store_dir / f"{ids['fifo']}.json")
    (store_dir / f"{ids['folder']}.json").mkdir()
    old = 0  # everything "expired": a cleanup that followed any of them would remove what is outside
    for entry in store_dir.iterdir():
        os.utime(entry, (old, old), follow_symlinks=False)

    done = threading.Event()
    result: Dict[str, Any] = {}

    def read_everything() -> None:
        result["ids"] = store.session_ids()
        result["sessions"] = list(store.iter_sessions())
        result["loads"] = []
        for sid in ids.values():
            try:
                store.load(sid)
                result["loads"].append("loaded")
            except (KeyError, SessionLoadError) as exc:
                result["loads"].append(type(exc).__name__)
        result["removed"] = store.cleanup(max_age_days=1)
        done.set()

    reader = threading.Thread(target=read_everything, daemon=True)
    reader.start()
    assert done.wait(10), "reading the storage directory hung (a FIFO opened for reading blocks until a writer comes)"
    assert result["ids"] == [] and result["sessions"] == []
    assert result["loads"] == ["KeyError"] * 4
    assert result["removed"] == []
    assert secret.exists() and outside.is_dir() and len(list(store_dir.iterdir())) == 4
    # The manager's reader goes the same way.
    manager.initialize({"storage_dir": str(store_dir)})
    assert [manager.get_session_data(sid) for sid in ids.values()] == [None] * 4


# -- config --------------------------------------------------------------------------------------------------------
_CONFIG_VALUES = (
    st.none() | st.booleans() | st.integers(min_value=-10, max_value=10) | st.integers()
    | st.floats() | st.text(max_size=12)
    | st.sampled_from(["~", "~/x", "~nosuchuser_sop/x", "/tmp/x", "a\x00b", " ", "http://h:1", 1e300, -0.0])
    | st.lists(st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.dictionaries(
        st.sampled_from(["input_per_million", "output_per_million", "x"]), st.floats() | st.integers()), max_size=2)
)


@given(st.dictionaries(st.sampled_from([*TelemetryConfig.model_fields, "bogus"]) | st.text(max_size=5),
                       _CONFIG_VALUES, max_size=6))
@settings(max_examples=500, deadline=None)
def test_any_config_dict_gives_a_usable_config_or_a_config_error(config):
    try:
        cfg = build_config(config)
    except ConfigError as exc:
        assert str(exc).startswith("invalid sop_telemetry config: ")
        return
    assert isinstance(cfg, TelemetryConfig)
    # Accepted values must work where they are used: the writer waits flush_interval seconds at a time.
    assert 0 < cfg.flush_interval <= threading.TIMEOUT_MAX
    cfg.resolved_storage_dir()


@pytest.mark.parametrize("config", [
    {"storage_dir": "~nosuchuser_sop/telemetry"},  # Path.expanduser raises RuntimeError for an unknown user
    {"storage_dir": "/tmp/a\x00b"},
    {"flush_interval": float("inf")},  # Event.wait(inf) raises OverflowError in the writer thread
    {"flush_interval": 1e300},
    {"flush_interval": float("nan")},
])
def test_configs_that_would_fail_later_are_refused_now(config):
    with pytest.raises(ConfigError):
        build_config(config)


def test_a_bad_sop_telemetry_dir_falls_back_to_the_default_and_still_records(monkeypatch, tmp_path):
    from sop_telemetry.manager import TelemetryManager

    monkeypatch.setenv("SOP_TELEMETRY_DIR", "~nosuchuser_sop/telemetry")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    get_error_handler().reset_error_state()
    manager = TelemetryManager._reset_instance()
    try:
        _run_and_capture(ScriptedModel([call("final_answer", answer="ok")]), [])
        path = manager.flush_data()
        assert path is not None and path.parent == tmp_path / "cache" / "ept" / "sop_agents"
        assert os.environ["SOP_TELEMETRY_DIR"] == "~nosuchuser_sop/telemetry"  # the program's environment is its own
    finally:
        manager.shutdown(flush=False)
        TelemetryManager._reset_instance()


# -- the command line ----------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY")}
    return subprocess.run([sys.executable, "-m", "sop_telemetry.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)


@pytest.fixture
def bad_store(tmp_path: Path) -> Path:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    for index, name in enumerate(sorted(BAD_FILES)):
        (store_dir / f"20260101T000000_000000_{index:08x}.json").write_bytes(BAD_FILES[name])
    good = "20270101T000000_000000_0000abcd"
    TelemetryDataStore(store_dir).write(good, json.dumps(_valid_session(session_id=good)))
    (tmp_path / "outside.json").write_text(json.dumps(_valid_session()))
    (store_dir / "20280101T000000_000000_0000beef.json").symlink_to(tmp_path / "outside.json")
    return store_dir


@pytest.mark.parametrize("args", [
    ["list"], ["report"], ["stats"], ["show", "latest"], ["show", "../outside"], ["show", "../../etc/passwd"],
    ["show", "/etc/passwd"], ["show", "20260101T000000_000000_00000000"], ["show", "2026"], ["show", "20280101"],
    ["export", "20260101T000000_000000_00000001", "--format", "json"], ["export", "..", "--format", "csv"],
    ["cleanup", "--max-age-days", "0", "--dry-run"], ["cleanup", "--max-age-days", "0"],
])
def test_the_cli_on_bad_files_and_ids_says_one_line_and_never_leaves_the_directory(bad_store, args):
    before = {p.name: p.read_bytes() if p.is_file() else None for p in bad_store.parent.rglob("*") if p.is_file()}
    done = _cli(*args, "--dir", str(bad_store), cwd=bad_store.parent)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    if done.returncode == 1:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sop-telemetry: error: "), done.stderr
    assert "outside" not in done.stdout or args[0] != "show" or done.returncode == 1
    after = {p.name: p.read_bytes() for p in bad_store.parent.rglob("*") if p.is_file()}
    # Only our own expired session files may go; the link's target, and everything outside, stay.
    assert (bad_store.parent / "outside.json").read_bytes() == before["outside.json"]
    for name in set(before) - set(after):
        assert name.startswith("2026") and args[0] == "cleanup" and "--dry-run" not in args


# -- odd objects from tools and models -----------------------------------------------------------------------------
class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


class _Raises:
    """An attribute read that raises something other than AttributeError."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        raise self.error

    def __set__(self, obj: Any, value: Any) -> None:  # a data descriptor: wins over the instance's own value
        pass


@tool
def give_none() -> None:
    """Returns nothing."""
    return None


@tool
def give_huge() -> str:
    """Returns a very long text."""
    return "y" * 5_000_000


@tool
def give_unprintable() -> Any:
    """Returns an object that cannot be printed."""
    return _Unprintable()


class BadlyNamed(Tool):
    name = "badly_named"
    description = "A tool whose name stops being a string while it runs."
    inputs: Dict[str, Any] = {}
    output_type = "string"

    def __init__(self, rename_to: Any) -> None:
        super().__init__()
        self.rename_to = rename_to

    def forward(self) -> str:
        # smolagents checks the name when the tool is made and reads it for the prompt; this one changes after.
        type(self).name = self.rename_to
        return "fine"


def _run_and_capture(model: Any, tools: List[Any], after_build: Any = None) -> Any:
    agent = ToolCallingAgent(tools=tools, model=model, verbosity_level=0, max_steps=3)
    if after_build is not None:
        after_build(agent)
    return agent.run("odd objects")


# Fresh classes for every run: some cases change a class attribute, and the baseline must not see the change.
def _odd_model(script: List[Any], **kwargs: Any) -> ScriptedModel:
    return type("OddModel", (ScriptedModel,), {})(script, **kwargs)


def _badly_named(rename_to: Any) -> Tool:
    return type("BadlyNamed", (BadlyNamed,), {"name": "badly_named"})(rename_to)


def _message(usage: Any) -> ChatMessage:
    reply = tool_calls_message([call("final_answer", answer="done")], None)
    reply.token_usage = usage
    return reply


class _UsageRaising:
    input_tokens = _Raises(RuntimeError("usage unavailable"))
    output_tokens = 5


class _IntRaising:
    def __int__(self) -> int:
        raise RuntimeError("no int")


ODD_RUNS = {
    "tool returns None": lambda: _run_and_capture(
        _odd_model([call("give_none"), call("final_answer", answer="x")]), [give_none]),
    "tool returns 5 MB": lambda: _run_and_capture(
        _odd_model([call("give_huge"), call("final_answer", answer="x")]), [give_huge]),
    "tool returns an unprintable object": lambda: _run_and_capture(
        _odd_model([call("give_unprintable"), call("final_answer", answer="x")]), [give_unprintable]),
    "tool name is not a string": lambda: _run_and_capture(
        _odd_model([call("badly_named"), call("final_answer", answer="x")]), [_badly_named(_Unprintable())]),
    "tool name raises": lambda: _run_and_capture(
        _odd_model([call("badly_named"), call("final_answer", answer="x")]),
        [_badly_named(_Raises(RuntimeError("no name")))]),
    "usage is a string": lambda: _run_and_capture(_odd_model([_message("lots")]), []),
    "usage has None and str fields": lambda: _run_and_capture(
        _odd_model([_message(SimpleNamespace(input_tokens=None, output_tokens="7", total_tokens=None))]), []),
    "usage fields raise": lambda: _run_and_capture(_odd_model([_message(_UsageRaising())]), []),
    "usage ints raise": lambda: _run_and_capture(
        _odd_model([_message(SimpleNamespace(input_tokens=_IntRaising(), output_tokens=3,
                                             total_tokens=10 ** 30))]), []),
    "model id is unprintable": lambda: _run_and_capture(
        _odd_model([call("final_answer", answer="x")], model_id=None), [],
        after_build=lambda agent: setattr(agent.model, "model_id", _Unprintable())),
    "model id raises": lambda: _run_and_capture(
        _odd_model([call("final_answer", answer="x")]), [],
        after_build=lambda agent: setattr(type(agent.model), "model_id", _Raises(ValueError("no id")))),
}


@pytest.mark.parametrize("name", sorted(ODD_RUNS))
def test_odd_objects_leave_the_run_unchanged_and_are_recorded_as_far_as_possible(manager, monkeypatch, name):
    run = ODD_RUNS[name]
    baseline = uninstrumented(lambda: capture(lambda planted: run()))
    observed = capture(lambda planted: run())
    assert_same_outcome(baseline, observed)

    session = manager.get_session_data()
    (task,) = session.tasks
    assert get_error_handler().get_error_summary() == {}, "a record was lost to an odd object"
    assert task.status.value == ("failed" if baseline.error is not None else "completed")
    if not task.llm_calls:
        assert baseline.error is not None  # the run failed before its first model call
        return
    call_record = task.llm_calls[-1]
    if name.startswith("usage"):
        expected = {
            "usage is a string": (None, None, False),
            "usage has None and str fields": (None, 7, True),
            "usage fields raise": (None, 5, True),
            "usage ints raise": (None, 3, True),
        }[name]
        assert (call_record.prompt_tokens, call_record.completion_tokens, call_record.tokens_reported) == expected
        if name == "usage ints raise":
            assert call_record.total_tokens == 10 ** 30  # what the model said, even if odd
    if name.startswith("tool name"):
        assert [t.tool_name for t in task.tools][0] == "BadlyNamed"
    if name.startswith("model id"):
        assert call_record.model == "OddModel"
    manager.flush_data()  # and it all still writes


# Undecodable bytes: Python decodes file names and environment values with surrogateescape, so a path that is not
# UTF-8 arrives as a str with lone surrogates, which UTF-8 cannot hold. One of them in a session made every write of
# its file fail (pydantic refuses to serialize it), finished tasks included.
NOT_UTF8 = os.fsdecode(b"/data/caf\xe9.csv")


@tool
def read_file(path: str) -> str:
    """Fails, quoting a file name that is not UTF-8, as `f"cannot read {path}"` does.

    Args:
        path: the file
    """
    raise ValueError(f"cannot read {NOT_UTF8}")


def test_undecodable_bytes_in_an_error_or_a_model_id_never_stop_the_file_from_being_written(manager, storage_dir):
    model = ScriptedModel([call("read_file", path="x"), call("final_answer", answer="done")],
                          model_id="model-" + NOT_UTF8)
    agent = ToolCallingAgent(tools=[read_file], model=model, verbosity_level=0)
    assert agent.run("read it") == "done"
    path = manager.flush_data()
    assert path is not None and get_error_handler().get_error_summary() == {}
    text = path.read_text(encoding="utf-8")  # strict UTF-8: the file is valid JSON text
    task = json.loads(text)["tasks"][0]
    escaped = NOT_UTF8.encode("utf-8", "backslashreplace").decode()
    assert escaped.endswith("caf\\udce9.csv")
    assert escaped in task["tools"][0]["error_message"]
    assert task["llm_calls"][0]["model"] == "model-" + escaped
    assert TelemetrySession.from_json(text).tasks[0].status.value == "completed"


def test_a_working_directory_and_variables_that_are_not_utf8_are_written(manager, monkeypatch, tmp_path):
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LANG", NOT_UTF8)
    manager.initialize({"environment_allowlist": ["LANG"]})
    manager.get_collector().record_tool_usage("t", 0.1)
    path = manager.flush_data()
    assert path is not None and get_error_handler().get_error_summary() == {}
    environment = json.loads(path.read_text(encoding="utf-8"))["environment"]
    assert environment["working_directory"].endswith("caf\\udce9")
    assert environment["environment_variables"]["LANG"].endswith("caf\\udce9.csv")


class _Reply:
    """A model reply (or stream delta) whose every attribute raises, as a broken proxy object might."""

    token_usage = _Raises(RuntimeError("token_usage unavailable"))
    content = _Raises(RuntimeError("content unavailable"))


class _RepliesOddly(ScriptedModel):
    def generate(self, messages: Any, **kwargs: Any) -> Any:
        return self.reply

    def generate_stream(self, messages: Any, **kwargs: Any) -> Any:
        yield self.reply
        yield self.reply


@pytest.mark.parametrize("capture_content", [False, True])
def test_a_reply_whose_attributes_raise_is_returned_untouched(manager, capture_content):
    manager.initialize({"capture_content": capture_content})
    model = _RepliesOddly([])
    model.reply = _Reply()
    assert model.generate([]) is model.reply  # reading its usage used to raise out of the wrapper
    assert list(model.generate_stream([])) == [model.reply, model.reply]
    calls = manager.get_session_data().tasks[0].llm_calls
    assert [(c.streamed, c.tokens_reported) for c in calls] == [(False, False), (True, False)]
    assert get_error_handler().get_error_summary() == {}


# -- secrets -------------------------------------------------------------------------------------------------------
ENV_SECRET = "sk-test-SECRET-VALUE"
MODEL_SECRET = "sk-ANOTHER-SECRET"


class OfflineOpenAIModel(OpenAIModel):
    """smolagents' OpenAIModel as users configure it (api_key given), with no client and no network."""

    def create_client(self) -> Any:
        return SimpleNamespace(api_key=self.client_kwargs.get("api_key"))

    def generate(self, messages: Any, stop_sequences: Any = None, response_format: Any = None,
                 tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
        if getattr(self, "fail", False):
            # What an HTTP client says about a failed request whose URL carries the key (Google-style ?key=).
            raise ConnectionError(f"401 Unauthorized for url: https://api.example/v1/chat?key={MODEL_SECRET}")
        script = getattr(self, "script", None)
        return script.pop(0) if script else _message(None)


def test_secrets_never_reach_a_session_file_or_the_log(manager, storage_dir, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="sop_telemetry")
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    monkeypatch.setenv("MY_SERVICE_TOKEN", ENV_SECRET + "-2")
    manager.initialize({"environment_allowlist": ["OPENAI_API_KEY", "MY_SERVICE_TOKEN", "HOME"]})

    @tool
    def leaky() -> str:
        """Fails, quoting the environment's key."""
        raise PermissionError(f"token {ENV_SECRET} was refused")

    model = OfflineOpenAIModel(model_id="gpt-offline", api_key=MODEL_SECRET)
    model.script = [tool_calls_message([call("leaky")], None)]
    assert ToolCallingAgent(tools=[leaky], model=model, verbosity_level=0).run("use the key") == "done"
    model.fail = True
    with pytest.raises(AgentGenerationError, match="401 Unauthorized"):
        ToolCallingAgent(tools=[], model=model, verbosity_level=0).run("the key fails")
    path = manager.flush_data()
    manager._at_exit()

    written = b"".join(p.read_bytes() for p in storage_dir.iterdir())
    session = json.loads(path.read_bytes())
    assert session["environment"]["environment_variables"]["OPENAI_API_KEY"] == "***"
    assert "HOME" in session["environment"]["environment_variables"]
    first, failed = session["tasks"]
    assert first["tools"][0]["error_message"] == "token *** was refused"  # masked, the rest kept
    assert failed["status"] == "failed" and "401 Unauthorized" in failed["error_message"]
    assert "key=***" in failed["error_message"]
    for secret in (ENV_SECRET, MODEL_SECRET):
        assert secret.encode() not in written
        assert secret not in caplog.text


def test_a_model_key_is_masked_in_a_failed_call_outside_any_run(manager, storage_dir):
    # No run began, so no run's end remembered the key: the failed call itself has it remembered before its record.
    model = OfflineOpenAIModel(model_id="gpt-offline", api_key=MODEL_SECRET)
    model.fail = True
    with pytest.raises(ConnectionError):
        model.generate([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    path = manager.flush_data()
    (call,) = [c for t in json.loads(path.read_bytes())["tasks"] for c in t["llm_calls"]]
    assert call["error_message"] == "401 Unauthorized for url: https://api.example/v1/chat?key=***"
    assert MODEL_SECRET.encode() not in path.read_bytes()


def test_a_model_key_is_masked_even_when_its_run_record_fails_to_build(manager, storage_dir, monkeypatch):
    # The key is remembered by an event of its own, queued before the failed call's: a failure to build the run's
    # agent record (counted and logged) must not leave the call's error message, which quotes the key, unmasked.
    from sop_telemetry import recorder

    def broken(*args: Any) -> None:
        raise RuntimeError("injected: no agent record")

    monkeypatch.setattr(recorder, "open_run", broken)
    model = OfflineOpenAIModel(model_id="gpt-offline", api_key=MODEL_SECRET)
    model.fail = True
    with pytest.raises(AgentGenerationError, match="401 Unauthorized"):
        ToolCallingAgent(tools=[], model=model, verbosity_level=0).run("the key fails")
    path = manager.flush_data()
    calls = [c for t in json.loads(path.read_bytes())["tasks"] for c in t["llm_calls"]]
    assert [c["error_message"] for c in calls] == ["401 Unauthorized for url: https://api.example/v1/chat?key=***"]
    assert MODEL_SECRET.encode() not in path.read_bytes()
    assert get_error_handler().get_error_summary()["recorder.run"]["count"] == 1


def test_masking_never_makes_a_file_unreadable_and_handles_json_escapes(manager, storage_dir, monkeypatch):
    # A variable named like a credential whose value is also a status, and a key that JSON has to escape.
    monkeypatch.setenv("DEPLOY_TOKEN_STATE", "completed")
    escaped_secret = 'sk-"quoted"\\back-slashed\u00e9'
    monkeypatch.setenv("ODD_API_KEY", escaped_secret)

    @tool
    def quote_both() -> str:
        """Fails, quoting both values."""
        raise ValueError(f"state completed, key {escaped_secret}")

    model = ScriptedModel([call("quote_both"), call("final_answer", answer="ok")])
    assert ToolCallingAgent(tools=[quote_both], model=model, verbosity_level=0).run("quote") == "ok"
    path = manager.flush_data()
    raw = path.read_bytes()
    for form in (escaped_secret, json.dumps(escaped_secret)[1:-1], json.dumps(escaped_secret, ensure_ascii=False)[1:-1]):
        assert form.encode() not in raw
    session = TelemetryDataStore(storage_dir).load(path.stem)  # still a valid session file
    (task,) = session.tasks
    assert task.status.value == "completed"
    assert task.tools[0].error_message == "state ***, key ***"


def test_a_key_cut_through_by_any_clip_is_masked_whole(manager, storage_dir, monkeypatch, caplog):
    # The key near the 500-character clip of a task's description, a tool's error and, with content capture on, a
    # tool's arguments and output: masked before the clip, never half-kept.
    caplog.set_level(logging.DEBUG, logger="sop_telemetry")
    key = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("PROVIDER_API_KEY", key)
    manager.initialize({"capture_content": True})
    near_the_clip = "x" * 485 + key + " and more"

    @tool
    def echo(text: str) -> str:
        """Echoes its text.

        Args:
            text: Anything.
        """
        return text

    @tool
    def leaky() -> str:
        """Fails, quoting the key."""
        raise PermissionError(near_the_clip)

    model = ScriptedModel([call("echo", text=near_the_clip), call("leaky"), call("final_answer", answer="ok")])
    assert ToolCallingAgent(tools=[echo, leaky], model=model, verbosity_level=0).run(near_the_clip) == "ok"
    collector = manager.get_collector()
    collector.start_task("manual", "y" * 480 + key)
    collector.end_task("manual", "failed", error_message="z" * 490 + key)
    text = manager.flush_data().read_text()
    tasks = {t["task_id"]: t for t in json.loads(text)["tasks"]}
    manual = tasks.pop("manual")
    (first,) = tasks.values()
    assert first["description"] == "x" * 485 + "*** and more"
    echoed, failed, _answer = first["tools"]
    assert failed["error_message"] == "x" * 485 + "*** and more"
    assert "***" in echoed["arguments_preview"] and echoed["output_preview"] == "x" * 485 + "*** and more"
    assert (manual["description"], manual["error_message"]) == ("y" * 480 + "***", "z" * 490 + "***")
    assert key[:4] not in text and key[:4] not in caplog.text
