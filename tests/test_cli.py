"""The `sop-telemetry` command, every command in a subprocess (`python -m sop_telemetry`), on sessions recorded from
real (scripted-model) smolagents runs: output, exit codes, errors, empty/missing directories, corrupt files, links,
and `run --` on a script that never imports sop_telemetry."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional

import pytest
from recorded_sessions import check_mermaid_gantt, failing_run, managed_run, new_manager, record, tool_calling_run

from sop_telemetry.models import TelemetrySession
from sop_telemetry.storage import TelemetryDataStore


def cli(*args: str, env: Optional[dict] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "sop_telemetry", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=120)


@pytest.fixture
def main(capsys):
    """`sop-telemetry` in this process, for the variants of a command already run once in a subprocess: the same
    result shape as `cli()`, a fraction of the time. The manager's read-only flag and the switch are restored."""
    from sop_telemetry.cli import main as cli_main
    from sop_telemetry.collector import switch
    from sop_telemetry.manager import TelemetryManager

    def run(*args: str) -> subprocess.CompletedProcess:
        manager = TelemetryManager.get_instance()
        saved = manager.read_only, switch.enabled
        capsys.readouterr()
        try:
            code = cli_main(list(args))
        finally:
            manager.read_only, switch.enabled = saved
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


def user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 1, nothing on stdout, exactly one line on stderr, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("sop-telemetry: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def sessions(manager, storage_dir):
    """Two session files: A (tool_calling_run + managed_run, 660 tokens) and B (failing_run, 110 tokens)."""
    first = record(manager, tool_calling_run, managed_run)
    second = record(new_manager(storage_dir), failing_run)
    return first, second


def test_list(sessions, storage_dir, main):
    first, second = sessions
    result = cli("--dir", str(storage_dir), "list")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"Sessions in {storage_dir}"
    assert lines[1].split() == ["session", "start", "duration", "tasks", "failed", "tokens", "cost"]
    assert [line.split()[0] for line in lines[2:]] == [first.session_id, second.session_id]
    assert lines[2].split()[-3:-1] == ["0", "660"] and lines[3].split()[-3:] == ["1", "110", "-"]
    assert lines[2].split()[-1].startswith(">=$")

    data = json.loads(main("list", "--dir", str(storage_dir), "--json").stdout)
    assert [(r["session_id"], r["tasks"], r["failed_tasks"], r["total_tokens"]) for r in data] == [
        (first.session_id, 2, 0, 660), (second.session_id, 1, 1, 110)]
    assert data[0]["cost_estimate"] == pytest.approx(first.total_tokens.cost_estimate)
    assert data[0]["start_time"] == first.start_time.isoformat()

    limited = json.loads(main("--json", "--dir", str(storage_dir), "list", "--limit", "1").stdout)
    assert [r["session_id"] for r in limited] == [second.session_id]
    failed = json.loads(main("--json", "--dir", str(storage_dir), "list", "--status", "failed").stdout)
    assert [r["session_id"] for r in failed] == [second.session_id]


def test_show(sessions, storage_dir, main):
    first, second = sessions
    result = cli("--dir", str(storage_dir), "show", "latest")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"Session {second.session_id}\n")
    for expected in ("Tokens per model", "Slowest steps", "local/qwen2:7b;#q4", "└── agent ToolCallingAgent",
                     "error RuntimeError: model is down"):
        assert expected in result.stdout

    prefix = first.session_id[:-4]
    data = json.loads(main("--dir", str(storage_dir), "--json", "show", prefix).stdout)
    assert data["session_id"] == first.session_id
    assert data["tokens"]["total"]["total_tokens"] == 660
    assert data["tokens"]["by_agent"]["adder"]["total_tokens"] == 110
    assert data["performance"]["tools"]["explode"]["errors"] == 1
    assert [t["total_tokens"] for t in data["tasks"]] == [330, 330]


def test_unknown_bad_and_ambiguous_ids_are_one_line_errors(sessions, storage_dir, main, monkeypatch):
    first, _ = sessions
    # An id may also be a file's path: from a folder where these relative paths lead to no file, they are only ids.
    monkeypatch.chdir(storage_dir.parent)
    directory = str(storage_dir)
    user_error(cli("--dir", directory, "show", "20990101T000000_000000_00000000"), "no session")
    user_error(main("--dir", directory, "show", "../../etc/passwd"), "no session")
    user_error(main("--dir", directory, "export", f"../{storage_dir.name}/{first.session_id}"), "no session")
    user_error(main("--dir", directory, "show", "/" + first.session_id), "no session")
    # argv cannot carry a NUL through exec: in-process only.
    user_error(main("--dir", directory, "show", first.session_id + "\x00"), "no session")
    user_error(main("--dir", directory, "show", first.session_id[:4]), "matches 2 sessions")


def test_bad_usage_exits_1_with_one_line(storage_dir, main):
    directory = str(storage_dir)
    user_error(cli("--bogus"), "unrecognized arguments: --bogus")
    user_error(cli(), "a command is needed")
    user_error(cli("--dir", directory, "report", "--since", "last tuesday"), "not a time")
    user_error(main("frobnicate"), "invalid choice")
    user_error(main("--dir", directory, "export", "latest", "--format", "pdf"), "invalid choice")
    user_error(main("--dir", directory, "cleanup", "--max-age-days", "-1"), "days >= 0")
    user_error(main("--dir", directory, "export", "latest", "-f", "otlp", "--timeout", "0"), "seconds > 0")
    user_error(main("--dir", directory, "list", "--limit", "0"), "at least 1")
    user_error(main("--dir", directory, "list", "--until", "soon"), "not a time")
    user_error(main("--dir", directory, "report", "--status", "exploded"), "unknown status 'exploded'")
    user_error(main("show"), "required")
    assert cli("--help").returncode == 0


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_missing_or_empty_directory_is_friendly(tmp_path, make, main):
    directory = tmp_path / "telemetry"
    if make:
        directory.mkdir()
    d = str(directory)
    # Each command once in a subprocess for the missing directory; the empty one in-process.
    run = main if make else cli
    for command in (["list"], ["report"], ["stats"], ["cleanup", "--max-age-days", "1"]):
        result = run("--dir", d, *command)
        assert result.returncode == 0 and result.stderr == "", (command, result.stderr)
        assert result.stdout.strip()
    assert json.loads(main("--dir", d, "--json", "list").stdout) == []
    assert json.loads(main("--dir", d, "--json", "report").stdout)["sessions"] == 0
    assert json.loads(main("--dir", d, "--json", "stats").stdout)["total_files"] == 0
    user_error(run("--dir", d, "show", "latest"), "no sessions in")
    user_error(main("--dir", d, "export", "latest"), "no sessions in")
    assert directory.exists() == make  # reading never creates the directory


def test_storage_dir_from_the_environment(sessions, storage_dir):
    result = cli("--json", "stats", env={"SOP_TELEMETRY_DIR": str(storage_dir)})
    assert json.loads(result.stdout)["storage_path"] == str(storage_dir)


def test_corrupt_file_is_reported_and_skipped(sessions, storage_dir, main):
    first, second = sessions
    corrupt = "20200101T000000_000000_0badf11e"
    (storage_dir / f"{corrupt}.json").write_text('{"session_id": "trunc')
    for run, command in ((cli, ["list"]), (main, ["report"])):
        result = run("--dir", str(storage_dir), *command)
        assert result.returncode == 0
        warnings = result.stderr.splitlines()
        assert len(warnings) == 1 and warnings[0].startswith(f"sop-telemetry: warning: skipped {corrupt}")
        if command == ["list"]:
            listed = result.stdout
            assert first.session_id in listed and second.session_id in listed and corrupt not in listed
    user_error(main("--dir", str(storage_dir), "show", corrupt), "cannot read session", corrupt)


def test_links_are_not_followed(sessions, storage_dir, tmp_path, main):
    outside = tmp_path / "outside.json"
    outside.write_bytes((storage_dir / f"{sessions[0].session_id}.json").read_bytes())
    link = "20990101T000000_000000_11111111"
    os.symlink(outside, storage_dir / f"{link}.json")
    assert link not in main("--dir", str(storage_dir), "list").stdout
    user_error(main("--dir", str(storage_dir), "show", link), "no session")
    user_error(main("--dir", str(storage_dir), "export", "latest", "-f", "csv", "--table", "x", "-o", "y"), "--table")


def test_export_every_format(sessions, storage_dir, tmp_path, main):
    first, _ = sessions
    d = str(storage_dir)
    sid = first.session_id

    result = cli("--dir", d, "export", sid, "--format", "json")
    assert TelemetrySession.from_json(result.stdout) == first
    target = tmp_path / "session.json"
    result = main("--dir", d, "export", sid, "-o", str(target))
    assert result.stdout == f"Wrote {target}\n"
    assert TelemetrySession.from_json(target.read_text()) == first

    out = tmp_path / "csv"
    result = cli("--dir", d, "--json", "export", sid, "--format", "csv", "-o", str(out))
    assert sorted(Path(p).name for p in json.loads(result.stdout)["written"]) == [
        "agents.csv", "llm_calls.csv", "steps.csv", "tasks.csv", "tools.csv"]
    with (out / "llm_calls.csv").open(newline="") as handle:
        assert sum(int(r["total_tokens"]) for r in csv.DictReader(handle)) == 660
    rows = list(csv.DictReader(io.StringIO(main("--dir", d, "export", sid, "-f", "csv", "--table", "tools").stdout)))
    assert [r["tool_name"] for r in rows] == ["add", "explode", "final_answer", "add", "final_answer", "final_answer"]
    tasks = list(csv.DictReader(io.StringIO(main("--dir", d, "export", sid, "-f", "csv").stdout)))
    assert [r["task_id"] for r in tasks] == [t.task_id for t in first.tasks]

    gantt = cli("--dir", d, "export", sid, "--format", "mermaid", "--task", "CodeAgent")
    bars = check_mermaid_gantt(gantt.stdout)
    assert {b["section"] for b in bars} == {"CodeAgent", "adder"}
    check_mermaid_gantt(main("--dir", d, "export", sid, "--format", "mermaid").stdout)

    tree = cli("--dir", d, "export", sid, "--format", "text").stdout
    assert tree.startswith(f"task {first.tasks[0].task_id}") and "agent adder" in tree

    user_error(cli("--dir", d, "export", sid, "--format", "text", "--task", "nope"), "not a task")
    user_error(main("--dir", d, "export", sid, "--format", "json", "--task", "x"), "--task")
    user_error(main("--dir", d, "export", sid, "--format", "json", "-o", str(tmp_path / "no" / "such" / "dir" / "f")),
               "cannot write")


def test_report(sessions, storage_dir, main):
    d = str(storage_dir)
    result = cli("--dir", d, "report")
    assert result.returncode == 0
    for expected in ("Summary", "Per day", "Per model", "Tools", "Agents", "explode", "100%"):
        assert expected in result.stdout
    data = json.loads(cli("--dir", d, "--json", "report", "--since", "1h").stdout)
    assert (data["sessions"], data["tasks"], data["failed_tasks"], data["total"]["total_tokens"]) == (2, 3, 1, 770)
    assert data["agents"]["ToolCallingAgent"]["success_rate"] == 0.5
    assert data["tools"]["explode"]["error_rate"] == 1.0
    only = json.loads(main("--dir", d, "--json", "report", "--model", "gpt-4o").stdout)
    assert (only["sessions"], only["tasks"], only["total"]["total_tokens"]) == (1, 1, 330)
    none = main("--dir", d, "report", "--until", "2000-01-01")
    assert none.returncode == 0 and none.stdout.startswith("No sessions match")


def test_stats(sessions, storage_dir, main):
    data = json.loads(cli("--dir", str(storage_dir), "--json", "stats").stdout)
    files = TelemetryDataStore(storage_dir).session_files()
    assert data["total_files"] == 2 and data["exists"] is True
    assert data["total_bytes"] == sum(size for _, _, size, _ in files)
    assert (data["oldest_session"], data["newest_session"]) == (sessions[0].session_id, sessions[1].session_id)
    import smolagents

    (smol,) = [row for row in data["integrations"] if row["name"] == "smolagents"]
    assert (smol["version"], smol["supported"], smol["selected"]) == (smolagents.__version__, ">=1.23,<1.27", True)
    text = main("--dir", str(storage_dir), "stats").stdout
    assert "session files   2" in text
    assert "smolagents" in text and "Integrations" in text


def test_cleanup_removes_only_old_session_files(sessions, storage_dir):
    first, second = sessions
    old = time.time() - 30 * 86400
    os.utime(storage_dir / f"{first.session_id}.json", (old, old))
    other = storage_dir / "notes.txt"
    other.write_text("keep me")
    os.utime(other, (old, old))

    dry = cli("--dir", str(storage_dir), "cleanup", "--max-age-days", "7", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.splitlines() == [
        f"Would remove 1 session file(s) older than 7 days from {storage_dir}.", f"  {first.session_id}"]
    assert (storage_dir / f"{first.session_id}.json").exists()

    done = json.loads(cli("--dir", str(storage_dir), "--json", "cleanup", "--max-age-days", "7").stdout)
    assert done == {"removed": [first.session_id], "dry_run": False, "max_age_days": 7.0}
    assert sorted(p.name for p in storage_dir.iterdir()) == sorted([f"{second.session_id}.json", "notes.txt"])


def test_reading_commands_never_write_a_session(sessions, storage_dir, tmp_path):
    before = sorted(p.name for p in storage_dir.iterdir())
    for command in (["show", "latest"], ["report"]):
        assert cli("--dir", str(storage_dir), *command, env={"SOP_TELEMETRY_DIR": str(storage_dir)}).returncode == 0
    assert sorted(p.name for p in storage_dir.iterdir()) == before


def on_a_terminal(columns: int, *args: str) -> "tuple[int, str]":
    """(exit status, output) of `sop-telemetry ARGS` writing to a pseudo-terminal `columns` wide."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SOP_TELEMETRY")}
    environment.update(COLUMNS=str(columns), TERM="xterm")
    try:
        status = subprocess.run([sys.executable, "-m", "sop_telemetry", *args], stdout=slave, stderr=subprocess.PIPE,
                                env=environment, timeout=60).returncode
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def test_rich_tables_on_a_terminal(sessions, storage_dir):
    status, shown = on_a_terminal(200, "--dir", str(storage_dir), "list")
    assert status == 0
    assert "┃" in shown or "│" in shown  # a rich table, not the plain text layout
    assert sessions[0].session_id in shown


_AGENT_SCRIPT = textwrap.dedent('''
    import sys
    from smolagents import ToolCallingAgent, tool
    from smolagents.models import (ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole,
                                   Model)
    from smolagents.monitoring import TokenUsage

    class TinyModel(Model):
        """Asks for double(21), then answers; reports (70, 7) tokens per reply."""

        def __init__(self):
            super().__init__(model_id="tiny-model")
            self.replies = 0

        def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kw):
            self.replies += 1
            name, args = ("double", {"x": 21}) if self.replies == 1 else ("final_answer", {"answer": "42"})
            call = ChatMessageToolCall(id=f"c{self.replies}", type="function",
                                       function=ChatMessageToolCallFunction(name=name, arguments=args))
            return ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[call],
                               token_usage=TokenUsage(input_tokens=70, output_tokens=7))

    @tool
    def double(x: int) -> int:
        """Doubles a number.

        Args:
            x: The number.
        """
        return 2 * x

    print("answer", ToolCallingAgent(tools=[double], model=TinyModel(), verbosity_level=0).run("double 21"))
    print("args", sys.argv[1:])
    import os
    print("user sitecustomize", os.environ.get("USER_SITECUSTOMIZE_RAN"))
    sys.exit(3)
''')


def test_run_records_a_script_that_never_imports_sop_telemetry(tmp_path):
    script = tmp_path / "my_agent.py"
    script.write_text(_AGENT_SCRIPT)
    assert "sop_telemetry" not in script.read_text()
    # A sitecustomize the user already has keeps working under `run`.
    user_site = tmp_path / "user_site"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = 'yes'\n")
    directory = tmp_path / "telemetry"

    result = cli("--dir", str(directory), "run", "--", sys.executable, str(script), "--flag", "x y",
                 env={"PYTHONPATH": str(user_site)}, cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # the program's own exit status
    assert result.stdout.splitlines() == ["answer 42", "args ['--flag', 'x y']", "user sitecustomize yes"]
    files = sorted(directory.glob("*.json"))
    assert len(files) == 1
    assert result.stderr.splitlines()[-1] == f"sop-telemetry: session written to {files[0]}"

    session = TelemetrySession.from_json(files[0].read_text())
    assert len(session.tasks) == 1
    task = session.tasks[0]
    assert task.status.value == "completed" and task.description == "double 21"
    assert [(c.model, c.prompt_tokens, c.completion_tokens) for c in task.llm_calls] == [("tiny-model", 70, 7)] * 2
    assert session.total_tokens.total_tokens == 154
    assert [t.tool_name for t in task.tools] == ["double", "final_answer"]


def test_run_errors(tmp_path):
    directory = str(tmp_path / "telemetry")
    user_error(cli("--dir", directory, "run"), "run needs a command")
    missing = cli("--dir", directory, "run", "--", "no-such-program-here")
    assert missing.returncode == 127 and missing.stderr.count("\n") == 1 and "command not found" in missing.stderr
    quiet = cli("--dir", directory, "--json", "run", "--", sys.executable, "-c", "print('hi')")
    assert quiet.returncode == 0
    assert quiet.stdout.splitlines()[0] == "hi"
    assert json.loads("\n".join(quiet.stdout.splitlines()[1:])) == {
        "exit_code": 0, "sessions": [], "no_session_reason": "the program ran no agent, so nothing was recorded"}


_DISK_FULL = """
import errno, os
import sop_telemetry.storage as storage

def write(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))

storage.TelemetryDataStore.write = write
"""


def test_run_says_why_no_session_was_written(tmp_path):
    script = tmp_path / "my_agent.py"
    script.write_text(_AGENT_SCRIPT)
    directory = str(tmp_path / "telemetry")

    def why(*program: str, env: Optional[dict] = None) -> str:
        result = cli("--dir", directory, "run", "--", *program, env=env, cwd=tmp_path)
        assert not list(Path(directory).glob("*.json"))
        return result.stderr.splitlines()[-1]

    assert why(sys.executable, "-c", "print('no agent here')") == (
        "sop-telemetry: no session was written: the program ran no agent, so nothing was recorded")
    assert why(sys.executable, str(script), env={"SOP_TELEMETRY_DISABLED": "1"}) == (
        "sop-telemetry: no session was written: telemetry is disabled by SOP_TELEMETRY_DISABLED")
    assert why("true").startswith("sop-telemetry: no session was written: no Python process of the run loaded "
                                  "sop_telemetry")
    # A full disk, made by a sitecustomize of the user's (which `run` chains to).
    user_site = tmp_path / "user_site"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text(_DISK_FULL)
    line = why(sys.executable, str(script),
               env={"PYTHONPATH": os.pathsep.join(filter(None, [str(user_site), os.environ.get("PYTHONPATH")]))})
    assert line.startswith("sop-telemetry: no session was written: storing it failed (OSError: [Errno 28] No space "
                           "left on device: ")
    assert directory in line and line.endswith("set SOP_TELEMETRY_DIR or --dir to a writable folder")


def test_a_storage_directory_that_is_a_file_is_said_to_be_one(tmp_path, main):
    not_a_folder = tmp_path / "telemetry"
    not_a_folder.write_text("somebody's file")
    env = {"SOP_TELEMETRY_DIR": str(not_a_folder), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for command in (["list"], ["stats"], ["--json", "stats"], ["report"], ["show", "latest"]):
        user_error(cli(*command, env=env), f"{not_a_folder} (SOP_TELEMETRY_DIR) is a file, not a folder",
                   str(tmp_path / "cache" / "ept" / "sop_agents"))
    user_error(main("--dir", str(not_a_folder), "list"), "(--dir) is a file, not a folder")


def _newest_corrupt(storage_dir: Path) -> str:
    corrupt = "20990101T000000_000000_0badf11e"  # newer than any real session
    (storage_dir / f"{corrupt}.json").write_text('{"session_id": "trunc')
    return corrupt


def test_latest_is_the_newest_readable_session(sessions, storage_dir, main):
    _, second = sessions
    corrupt = _newest_corrupt(storage_dir)
    d = str(storage_dir)
    shown = cli("--dir", d, "show", "latest")
    assert shown.returncode == 0 and shown.stdout.startswith(f"Session {second.session_id}\n")
    assert shown.stderr.startswith(f"sop-telemetry: warning: skipped {corrupt}: not a valid session file")
    exported = main("--dir", d, "export", "latest")
    assert exported.returncode == 0 and TelemetrySession.from_json(exported.stdout) == second
    stats = json.loads(main("--dir", d, "--json", "stats").stdout)
    assert (stats["sessions"], stats["unreadable_files"], stats["total_files"]) == (2, [corrupt], 3)
    assert stats["newest_session"] == second.session_id
    assert "session files   3 (1 unreadable)" in main("--dir", d, "stats").stdout


def test_a_session_file_path_or_name_works_wherever_an_id_does(sessions, storage_dir, tmp_path, main):
    first, _ = sessions
    path = storage_dir / f"{first.session_id}.json"
    elsewhere = tmp_path / "elsewhere"  # the storage directory is not where the file is
    elsewhere.mkdir()
    for given, directory in ((str(path), elsewhere), (path.name, storage_dir)):
        shown = main("--dir", str(directory), "show", given)
        assert shown.returncode == 0 and shown.stdout.startswith(f"Session {first.session_id}\n"), shown.stderr
        exported = main("--dir", str(directory), "export", given, "-f", "json")
        assert TelemetrySession.from_json(exported.stdout) == first
    # What `run` prints, in a subprocess.
    assert cli("show", str(path)).stdout.startswith(f"Session {first.session_id}\n")
    user_error(main("--dir", str(storage_dir), "show", str(tmp_path / "not-a-session.json")), "no session")


def test_session_ids_stay_whole_on_an_80_column_terminal(sessions, storage_dir):
    pytest.importorskip("rich")
    status, shown = on_a_terminal(80, "--dir", str(storage_dir), "list")
    assert status == 0
    lines = re.sub(r"\x1b\[[0-9;]*m", "", shown).splitlines()
    assert max(len(line) for line in lines) <= 80
    for session in sessions:
        assert any(line.lstrip().startswith(session.session_id) for line in lines), shown


def test_since_says_where_it_applies_and_version(storage_dir, main):
    user_error(main("--dir", str(storage_dir), "export", "--since", "7d", "-f", "csv"),
               "--since/--until select sessions for --format otlp only", "--format csv exports one session")
    help_text = " ".join(cli("export", "--help").stdout.split())
    for expected in ("--format otlp only", "s (seconds)", "m (minutes)", "h (hours)", "d (days)", "w (weeks)"):
        assert expected in help_text
    version = cli("--version")
    assert (version.returncode, version.stdout) == (0, "sop-telemetry 0.1.0\n")


def test_show_gives_the_time_split_and_what_the_duration_covers(sessions, storage_dir, main):
    text = main("--dir", str(storage_dir), "show", sessions[0].session_id).stdout
    for expected in ("session duration", "(from telemetry's start in the process to the end of its last task)",
                     "in tasks", "model calls", "tools", "agent's own work"):
        assert expected in text
    assert "overhead" not in text
