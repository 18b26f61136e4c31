#!/usr/bin/env bash
# langchain-core's own unit tests, run twice: without sop_telemetry and with it active for the whole run.
# Prints both pass/fail counts and the tests that fail only with telemetry; exits 1 if there is any.
#
# Usage: scripts/run_langchain_tests.sh [extra pytest args...]     e.g. tests/unit_tests/callbacks to run a subset
#   PYTHON                  interpreter whose langchain-core version is tested (default: python3 on PATH)
#   LANGCHAIN_CORE_VERSION  test this version instead of the installed one
#   LANGCHAIN_GIT_DIR       a langchain git clone or bare mirror holding the tag langchain-core==<version>
#                           (default /work/.mirror/langchain-ai+langchain/repo); without one, the PyPI sdist is used
#                           (it ships the whole tests/ folder of the release)
#   LANGCHAIN_TESTS_DIR     work folder: sources, a dedicated virtualenv, logs
#                           (default ${TMPDIR:-/tmp}/sop-telemetry-langchain-tests)
#   LANGCHAIN_TESTS_ONLY    "without" or "with": run only that half (the other half's last log and results stay)
#
# Nothing is installed into the project's environment: the suite runs in its own virtualenv (made once, reused),
# with sop_telemetry taken from this working tree through PYTHONPATH. Without arguments the whole of
# tests/unit_tests runs (about 2,650 tests; on a busy 2-core machine, run it in the background).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/suite_venv.sh"
PYTHON=${PYTHON:-python3}
VERSION=${LANGCHAIN_CORE_VERSION:-$("$PYTHON" -c 'from importlib.metadata import version; print(version("langchain-core"))')}
MIRROR=${LANGCHAIN_GIT_DIR:-/work/.mirror/langchain-ai+langchain/repo}
WORK=${LANGCHAIN_TESTS_DIR:-${TMPDIR:-/tmp}/sop-telemetry-langchain-tests}
SRC=$WORK/src-$VERSION
VENV=$WORK/venv-$VERSION
mkdir -p "$WORK"
echo "langchain-core $VERSION; work folder $WORK"

# -- 1. the tests of exactly this version -----------------------------------------------------------------------
if [ ! -f "$SRC/tests/unit_tests/conftest.py" ]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    if git -C "$MIRROR" rev-parse -q --verify "refs/tags/langchain-core==$VERSION" >/dev/null 2>&1; then
        echo "tests from $MIRROR, tag langchain-core==$VERSION"
        git -C "$MIRROR" archive "langchain-core==$VERSION" libs/core/tests libs/core/pyproject.toml \
            | tar -x -C "$SRC" --strip-components=2
    else
        echo "no git tag langchain-core==$VERSION in $MIRROR: using the sdist from PyPI (it has the whole tests/)"
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: "langchain-core==$VERSION" -d "$WORK/sdist"
        tar -xzf "$WORK/sdist/langchain_core-$VERSION.tar.gz" -C "$WORK/sdist"
        cp -r "$WORK/sdist/langchain_core-$VERSION/tests" "$WORK/sdist/langchain_core-$VERSION/pyproject.toml" "$SRC/"
    fi
fi

# -- 2. a virtualenv with the release's `test` dependency group ----------------------------------------------------
# langchain-core's [dependency-groups] test, less what only its CI uses (pytest-xdist, pytest-watcher,
# pytest-codspeed); pytest-benchmark stays for --benchmark-disable. langchain-tests pins its own langchain-core
# range: langchain-core==$VERSION is listed so that pip keeps exactly the version under test.
DEPS=("langchain-core==$VERSION" "pytest>=9.0.3,<10" "freezegun>=1.2.2,<2" "pytest-mock>=3.10,<4" "syrupy>=5,<6"
      "pytest-asyncio>=1.3,<2" "grandalf>=0.8,<1" "responses>=0.25,<1" "pytest-socket>=0.7,<0.9"
      "blockbuster>=1.5.18,<1.6" numpy "langchain-tests>=1.1.9,<2" pytest-benchmark jinja2)
make_suite_venv "$VENV" "${DEPS[@]}"

# -- 3. run --------------------------------------------------------------------------------------------------------
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests/unit_tests)

run() {
    local label=$1
    shift
    echo "running langchain-core's tests $label sop_telemetry..."
    local start=$SECONDS
    # As the release's Makefile runs them: no tracing to LangSmith, no network (Unix sockets allowed).
    (cd "$SRC" && env -u LANGCHAIN_TRACING_V2 -u LANGCHAIN_API_KEY -u LANGSMITH_API_KEY -u LANGSMITH_TRACING \
        -u LANGCHAIN_PROJECT "$@" "$VENV/bin/python" -m pytest -p no:cacheprovider --benchmark-disable \
        --disable-socket --allow-unix-socket -q --junitxml="$WORK/$label.xml" "${TESTS[@]}" \
        > "$WORK/$label.log" 2>&1) || true
    echo "  $(grep -E '^=*.* (passed|failed|error)' "$WORK/$label.log" | tail -n 1)  [$((SECONDS - start))s, log: $WORK/$label.log]"
}

ONLY=${LANGCHAIN_TESTS_ONLY:-}
[ "$ONLY" = with ] || run without PYTHONPATH="${PYTHONPATH:-}"
if [ "$ONLY" != without ]; then
    rm -rf "$WORK/sessions"
    run with SOP_TELEMETRY_DIR="$WORK/sessions" SOP_TELEMETRY_SUITE_REPORT="$WORK/telemetry-report.json" \
        PYTHONPATH="$REPO:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}" PYTEST_ADDOPTS="-p sop_telemetry_pytest_plugin"
fi
[ -f "$WORK/without.xml" ] && [ -f "$WORK/with.xml" ] || exit 0

# -- 4. compare ----------------------------------------------------------------------------------------------------
# The one expected difference: this test counts the handlers of a callback manager made by trace_as_chain_group, and
# a handler registered through langchain-core's configure hook is one of them (LangSmith's tracer, when tracing is
# on, fails it the same way).
"$PYTHON" "$REPO/scripts/compare_suite_runs.py" "$WORK" langchain \
    --expected "tests.unit_tests.runnables.test_config::test_merge_config_callbacks=it counts a callback manager's handlers, and ours is one"
