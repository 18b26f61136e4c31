#!/usr/bin/env bash
# pydantic-ai's own offline test suite (a core subset), run twice: without sop_telemetry and with it active for the
# whole run. Prints both pass/fail counts and the tests that fail only with telemetry; exits 1 if there is any.
#
# Usage: scripts/run_pydantic_ai_tests.sh [extra pytest args...]
#   PYTHON                  interpreter whose pydantic-ai version is tested (default: python3 on PATH)
#   PYDANTIC_AI_VERSION     test this version instead of the installed one
#   PYDANTIC_AI_GIT_DIR     a pydantic-ai git clone or bare mirror (default /work/.mirror/pydantic+pydantic-ai/repo).
#                           The tests of tag v<version> are used; without that tag, those of PYDANTIC_AI_TESTS_REF
#                           (default: the mirror's HEAD), which then test a newer pydantic-ai than their own: tests
#                           of what changed in between fail, or fail to collect, in both runs alike.
#   PYDANTIC_AI_TESTS_DIR   work folder: sources, a dedicated virtualenv, logs
#                           (default ${TMPDIR:-/tmp}/sop-telemetry-pydantic-ai-tests)
#   PYDANTIC_AI_TEST_FILES  the test files to run (default: the core subset below)
#
# The PyPI sdist of pydantic-ai-slim ships no tests, so a git checkout is the only source. Nothing is installed into
# the project's environment: the suite runs in its own virtualenv (made once, reused), with sop_telemetry taken from
# this working tree through PYTHONPATH.
set -euo pipefail
. "$(dirname "$0")/suite_venv.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VERSION=${PYDANTIC_AI_VERSION:-$("$PYTHON" -c 'import pydantic_ai; print(pydantic_ai.__version__)')}
MIRROR=${PYDANTIC_AI_GIT_DIR:-/work/.mirror/pydantic+pydantic-ai/repo}
WORK=${PYDANTIC_AI_TESTS_DIR:-${TMPDIR:-/tmp}/sop-telemetry-pydantic-ai-tests}
SRC=$WORK/src-$VERSION
VENV=$WORK/venv-$VERSION
mkdir -p "$WORK"
echo "pydantic-ai $VERSION; work folder $WORK"

# -- 1. the tests (of exactly this version when the mirror has its tag) ---------------------------------------------
if [ ! -f "$SRC/tests/conftest.py" ]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    if git --git-dir="$MIRROR" rev-parse -q --verify "refs/tags/v$VERSION" >/dev/null 2>&1; then
        REF=v$VERSION
    else
        REF=${PYDANTIC_AI_TESTS_REF:-HEAD}
        echo "WARNING: no tag v$VERSION in $MIRROR: using the tests of $REF ($(git --git-dir="$MIRROR" log -1 \
            --format='%h, %ad' --date=short "$REF"))"
    fi
    echo "$REF $(git --git-dir="$MIRROR" rev-parse "$REF")" > "$SRC/.tests-ref"
    # Cassettes (recorded HTTP, large) are left out: the offline subset below does not replay any, and a mirror may
    # not hold their blobs.
    git --git-dir="$MIRROR" ls-tree -r --name-only "$REF" tests 2>/dev/null | grep -v '/cassettes/' > "$WORK/files.txt"
    git --git-dir="$MIRROR" archive "$REF" pyproject.toml $(cat "$WORK/files.txt") | tar -x -C "$SRC"
fi
echo "tests from $(cat "$SRC/.tests-ref")"

# -- 2. a virtualenv with what the offline tests import ---------------------------------------------------------------
# pydantic-ai's dev group pulls every provider SDK, temporal, dbos, prefect, fastmcp...; the core subset needs the
# slim package with its logfire and cli extras, the OpenTelemetry SDK and the test helpers its conftest imports. Its
# blocking-call detector (blockbuster) also imports pydantic_evals and clai, which are released with pydantic-ai but
# pin its exact version: they are installed without dependencies, at the version of the tests.
TESTS_VERSION=$(git --git-dir="$MIRROR" describe --tags --abbrev=0 "$(cut -d' ' -f2 "$SRC/.tests-ref")" | sed 's/^v//')
DEPS=("pydantic-ai-slim[logfire,cli]==$VERSION" logfire opentelemetry-sdk pytest pytest-mock inline-snapshot dirty-equals
      vcrpy pytest-recording anyio httpx httpx2 devtools "blockbuster>=1.5.26,<1.6" pytest-pretty brotli
      pytest-timeout pyyaml genai-prices)
NO_DEPS=("pydantic-evals==$TESTS_VERSION" "clai==$TESTS_VERSION")
make_suite_venv "$VENV" "${DEPS[@]}"

# -- 3. which tests --------------------------------------------------------------------------------------------------
# The agent loop (runs, output validation and retries, usage limits, iter), tools, streaming, the function and
# fallback models, and pydantic-ai's own OpenTelemetry instrumentation (test_logfire, models/test_instrumented): every
# path the integration wraps. PYDANTIC_AI_TEST_FILES="$EXTENDED_FILES" adds toolsets, cancellation, concurrency,
# history processors, direct requests, capabilities (about three times as long). Provider tests (cassettes), durable
# execution (temporal, dbos, prefect), MCP servers, UIs and docs examples are left out.
DEFAULT_FILES="tests/test_agent.py tests/test_tools.py tests/test_streaming.py tests/test_logfire.py
 tests/models/test_model_function.py tests/models/test_fallback.py tests/models/test_instrumented.py"
EXTENDED_FILES="$DEFAULT_FILES tests/test_toolsets.py tests/test_streaming_errors.py tests/test_usage_limits.py
 tests/test_run_context_usage_limits.py tests/test_run_cancellation.py tests/test_concurrency.py
 tests/test_history_processor.py tests/test_direct.py tests/test_deps.py tests/test_nested_sync_agent.py
 tests/test_otel_context_isolation.py tests/test_capabilities.py tests/test_validation_context.py
 tests/test_exceptions.py tests/models/test_model_test.py tests/models/test_stream_close.py"
FILES=()
for name in ${PYDANTIC_AI_TEST_FILES:-$DEFAULT_FILES}; do
    [ -f "$SRC/$name" ] && FILES+=("$name")
done

run() {
    local label=$1
    shift
    echo "running pydantic-ai's tests $label sop_telemetry..."
    local start=$SECONDS
    (cd "$SRC" && PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pytest "${FILES[@]}" -p no:cacheprovider \
        -o addopts= --timeout 300 -q --continue-on-collection-errors --junitxml="$WORK/$label.xml" "$@" \
        > "$WORK/$label.log" 2>&1) || true
    echo "  $(grep -E '^=*.* (passed|failed|error)' "$WORK/$label.log" | tail -n 1)  [$((SECONDS - start))s, log: $WORK/$label.log]"
}

run without "$@"
rm -rf "$WORK/sessions"
SOP_TELEMETRY_DIR=$WORK/sessions SOP_TELEMETRY_SUITE_REPORT=$WORK/telemetry-report.json \
    PYTHONPATH="$REPO:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}" run with -p sop_telemetry_pytest_plugin "$@"

# -- 4. compare ------------------------------------------------------------------------------------------------------
"$PYTHON" "$REPO/scripts/compare_suite_runs.py" "$WORK" pydantic_ai
