"""README.md's code blocks run as a reader would run them, so that they cannot rot.

Every ```python, ```bash and ```console block of the README runs, in order, in one shared state (the environment, a
temporary cache and storage directory), unless the line just above its fence is the HTML comment
`<!-- not run: why -->`:

- python: the block is saved as a script and run by a new interpreter; a ```text block right after it is its output.
- bash: the block runs in bash and must succeed.
- console: each `$ ` line runs in bash (stderr into stdout) and must succeed; the lines under it are its output.
  `export NAME=VALUE` lines set the shared environment.

Paths under /tmp in a block are moved into the test's temporary folder. Outputs are compared after normalization
(session and task ids, dates, times, durations and percentages in parentheses become placeholders; runs of spaces one
space; blank lines dropped); a line `...` in an expected output stands for any number of lines, and the lines between
two of them must match consecutive lines of the real output. The two fresh-machine commands, which install things,
are checked apart: the main job runs from after its `pip install`, and the test command must be what `.ci/run` runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from sop_telemetry.config import TelemetryConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 120


@dataclass
class Block:
    line: int                      # README line of the opening fence
    lang: str
    body: List[str]
    skipped: Optional[str] = None  # the reason given in `<!-- not run: ... -->`
    output: Optional[List[str]] = None  # a python block's expected output (the ```text block after it)


def readme_blocks(text: str) -> List[Block]:
    blocks: List[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = lines[start - 1].strip() if start else ""
        skipped = re.match(r"<!-- not run: (.*) -->", above)
        blocks.append(Block(start + 1, fence.group(1), lines[start + 1:end], skipped.group(1) if skipped else None))
        i = end + 1
    for previous, block in zip(blocks, blocks[1:], strict=False):
        between = lines[previous.line + len(previous.body) + 1:block.line - 1]
        if previous.lang == "python" and block.lang == "text" and not any(s.strip() for s in between):
            previous.output = block.body
    return blocks


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


class Reader:
    """Runs blocks in one shared environment, as a reader with a shell and an editor would."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOP_TELEMETRY", "OTEL_"))}
        env["XDG_CACHE_HOME"] = str(tmp / "cache")  # the default storage directory, inside the test's folder
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["COLUMNS"] = "200"
        self.env: Dict[str, str] = env
        self.scripts = 0

    def contain(self, text: str) -> str:
        return re.sub(r"/tmp/(?=[\w.-])", f"{self.tmp}/", text)

    def shell(self, command: str, where: str) -> str:
        done = subprocess.run(["bash", "-c", self.contain(command)], cwd=ROOT, env=self.env, timeout=TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}:\n{done.stdout}"
        return done.stdout

    def python(self, code: str, where: str) -> str:
        self.scripts += 1
        script = self.tmp / f"readme_block_{self.scripts}.py"
        script.write_text(self.contain(code), encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=self.env, timeout=TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert done.returncode == 0, f"{where}: exited {done.returncode}:\n{done.stdout}"
        return done.stdout

    def run(self, block: Block) -> None:
        where = f"README.md:{block.line} ({block.lang})"
        if block.lang == "python":
            out = self.python("\n".join(block.body) + "\n", where)
            if block.output is not None:
                expect_output(block.output, out, where, self.tmp)
        elif block.lang == "bash":
            self.shell("set -e\n" + "\n".join(block.body), where)
        elif block.lang == "console":
            for command, expected in console_steps(block.body):
                if command.startswith("export "):
                    name, _, value = shlex.split(command, comments=True)[1].partition("=")
                    self.env[name] = self.contain(value)
                    continue
                expect_output(expected, self.shell(command, where), f"{where} `{command}`", self.tmp)


def console_steps(body: List[str]) -> List[tuple]:
    steps: List[tuple] = []
    for line in body:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"console output before any command: {line!r}"
            steps[-1][1].append(line)
    return steps


_NORMAL = [
    (re.compile(r"\d{8}T\d{6}_\d{6}_[0-9a-f]{8}"), "<session>"),
    (re.compile(r"\b([A-Za-z]\w*)-[0-9a-f]{12}\b"), r"\1-<task>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?"), "<time>"),
    (re.compile(r"\b\d{13}\b"), "<epoch>"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|us|µs|s)\b"), "<duration>"),
    (re.compile(r"\(\d+%\)"), "(<share>)"),
    (re.compile(r"\s+"), " "),
]


def normalize(line: str, tmp: Optional[Path] = None) -> str:
    if tmp is not None:
        line = line.replace(str(tmp), "/tmp")
    for pattern, replacement in _NORMAL:
        line = pattern.sub(replacement, line)
    return line.strip()


def expect_output(expected: List[str], actual: str, where: str, tmp: Path) -> None:
    """Every run of expected lines between `...` lines appears, in order, as consecutive lines of `actual`."""
    got = [normalize(line, tmp) for line in actual.splitlines() if line.strip()]
    chunks: List[List[str]] = [[]]
    for line in expected:
        if line.strip() == "...":
            chunks.append([])
        elif line.strip():
            chunks[-1].append(normalize(line))
    position = 0
    for chunk in filter(None, chunks):
        found = next((i for i in range(position, len(got) - len(chunk) + 1) if got[i:i + len(chunk)] == chunk), None)
        assert found is not None, (f"{where}: the README shows\n  " + "\n  ".join(chunk)
                                   + "\nwhich the real output does not have (normalized):\n  " + "\n  ".join(got))
        position = found + len(chunk)


@pytest.fixture
def reader(tmp_path):
    return Reader(tmp_path)


def test_every_readme_block_runs_and_prints_what_it_shows(reader):
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.lang in ("python", "bash", "console") and b.skipped is None]
    assert len(runnable) >= 8, "the README's runnable blocks were not found"
    for block in runnable:
        reader.run(block)


def test_blocks_left_unrun_say_why():
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        assert block.lang, f"README.md:{block.line}: a fence without a language"
        if block.skipped is not None:
            assert block.skipped.strip(), f"README.md:{block.line}: `not run` needs a reason"


def _fresh_machine_commands() -> List[str]:
    text = section(README.read_text(encoding="utf-8"), "Fresh machine: the two commands")
    commands = [b.body[0] for b in readme_blocks(text) if b.lang == "bash"]
    assert len(commands) == 2, commands
    return commands


def _setup_and_rest(command: str) -> tuple:
    parts = command.split(" && ")
    assert parts[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"], parts
    assert parts[2].startswith("pip install "), parts
    return parts[2], parts[3:]


def test_fresh_machine_main_job_runs_offline_and_shows_the_session(reader):
    install, rest = _setup_and_rest(_fresh_machine_commands()[0])
    extras = re.search(r'"\.\[([\w,]+)\]"', install).group(1).split(",")
    declared = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for extra in extras:
        assert re.search(rf"^{extra} = \[", declared, re.M), f"pyproject.toml has no extra {extra!r}"
    out = reader.shell(" && ".join(rest), "README.md fresh machine, main job")
    assert "59.97" in out and "total tokens    5,090" in out and "estimated cost  $0.007404" in out, out


def test_fresh_machine_test_command_is_what_ci_runs():
    install, rest = _setup_and_rest(_fresh_machine_commands()[1])
    readme_command = " && ".join([install, *rest])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in ci.splitlines() if "scripts/check" in line and "pip install" in line]
    assert len(ci_commands) == 1, f".ci/run has no single `pip install ... && bash scripts/check` line: {ci_commands}"
    ci_command = ci_commands[0]

    def unquiet(command: str) -> str:  # CI installs quietly; the reader sees pip's progress
        return command.replace("pip install -q ", "pip install ")

    assert unquiet(readme_command) == unquiet(ci_command)


def test_configuration_reference_names_every_key_and_variable():
    table = section(README.read_text(encoding="utf-8"), "Configuration reference")
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    named = set(re.findall(r"`([A-Za-z_]+)`", " ".join(first_cells)))
    missing = set(TelemetryConfig.model_fields) - named
    assert not missing, f"config keys missing from README's Configuration reference: {sorted(missing)}"
    variables = set()
    for path in (ROOT / "sop_telemetry").rglob("*.py"):
        variables |= set(re.findall(r"""["'](SOP_TELEMETRY_[A-Z_]+)["']""", path.read_text(encoding="utf-8")))
    missing = variables - named
    assert not missing, f"environment variables missing from README's Configuration reference: {sorted(missing)}"


def test_the_quickstart_example_runs(reader):
    out = reader.shell("python examples/quickstart.py", "examples/quickstart.py")
    assert "tokens: 2550 prompt + 180 completion = 2730" in out, out
