#!/usr/bin/env bash
# smolagents' own offline test suite, run twice: without sop_telemetry and with it active for the whole run.
# Prints both pass/fail counts and the tests that fail only with telemetry; exits 1 if there is any.
#
# Usage: scripts/run_smolagents_tests.sh [extra pytest args...]
#   PYTHON               interpreter whose smolagents version is tested (default: python3 on PATH)
#   SMOLAGENTS_VERSION   test this version instead of the installed one
#   SMOLAGENTS_GIT_DIR   a smolagents git clone or bare mirror holding the tag v<version>
#                        (default /work/.mirror/huggingface+smolagents/repo); without one, the PyPI sdist is used
#   SMOLAGENTS_TESTS_DIR work folder: sources, a dedicated virtualenv, logs (default ${TMPDIR:-/tmp}/sop-telemetry-smolagents-tests)
#
# Nothing is installed into the project's environment: the suite runs in its own virtualenv (made once, reused),
# with sop_telemetry taken from this working tree through PYTHONPATH.
set -euo pipefail
. "$(dirname "$0")/suite_venv.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VERSION=${SMOLAGENTS_VERSION:-$("$PYTHON" -c 'import smolagents; print(smolagents.__version__)')}
MIRROR=${SMOLAGENTS_GIT_DIR:-/work/.mirror/huggingface+smolagents/repo}
WORK=${SMOLAGENTS_TESTS_DIR:-${TMPDIR:-/tmp}/sop-telemetry-smolagents-tests}
SRC=$WORK/src-$VERSION
VENV=$WORK/venv-$VERSION
mkdir -p "$WORK"
echo "smolagents $VERSION; work folder $WORK"

# -- 1. the tests of exactly this version -----------------------------------------------------------------------
if [ ! -f "$SRC/tests/conftest.py" ] && [ ! -f "$SRC/.from-sdist" ]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    if git -C "$MIRROR" rev-parse -q --verify "refs/tags/v$VERSION" >/dev/null 2>&1; then
        echo "tests from $MIRROR, tag v$VERSION"
        git -C "$MIRROR" archive "v$VERSION" tests pyproject.toml | tar -x -C "$SRC"
    else
        # The sdist ships tests/test_*.py but not tests/conftest.py, fixtures/, utils/ or data/: the files that use
        # them fail to collect (in both runs alike). A clone (SMOLAGENTS_GIT_DIR) gives the whole suite.
        echo "no git tag v$VERSION in $MIRROR: using the sdist from PyPI (no conftest.py/fixtures/utils: partial)"
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: "smolagents==$VERSION" -d "$WORK/sdist"
        tar -xzf "$WORK/sdist/smolagents-$VERSION.tar.gz" -C "$WORK/sdist"
        cp -r "$WORK/sdist/smolagents-$VERSION/tests" "$WORK/sdist/smolagents-$VERSION/pyproject.toml" "$SRC/"
        touch "$SRC/.from-sdist"
    fi
fi

# -- 2. a virtualenv with what the offline tests import ----------------------------------------------------------
# smolagents' `test` extra pulls smolagents[all] (torch, transformers, vllm, mlx, gradio, docker, e2b...). The
# offline tests below need only: the toolkit/openai/litellm/mcp extras (imported at module level or by mocked
# tests), numpy, pandas, IPython, pytest and its datadir/timeout plugins. mcp<2: mcpadapt 0.1.x imports
# mcp.client.streamable_http.streamablehttp_client, which mcp 2 removed. pandas<3: the tests expect pandas 2's
# error messages.
DEPS=("smolagents[toolkit,openai,litellm,mcp]==$VERSION" "mcp<2" numpy "pandas<3" ipython "pytest>=8.1"
      pytest-datadir pytest-timeout)
make_suite_venv "$VENV" "${DEPS[@]}"

# -- 3. which tests ------------------------------------------------------------------------------------------------
FILES=()
for name in test_agents test_models test_tools test_memory test_monitoring test_local_python_executor \
            test_final_answer test_utils test_types test_serialization test_tool_validation \
            test_function_type_hints_utils test_default_tools test_cli test_mcp_client test_yield_support; do
    [ -f "$SRC/tests/$name.py" ] && FILES+=("tests/$name.py")
done
# Left out whole: test_all_docs, test_import, test_search (network), test_remote_executors (docker, e2b, modal),
# test_gradio_ui, test_vision_web_browser (gradio, helium/selenium), test_telemetry (arize-phoenix).
# Left out by name: tests that need model weights or a GPU (transformers, MLX, speech-to-text), the network
# (wikipedia, web pages, litellm's price map), gradio, or packages the code under test imports (scipy, sklearn).
DESELECT="not transformers and not Transformers and not MLX and not SpeechToText and not wikipedia
 and not visit_webpage and not call_different_providers_without_key and not gradio and not streaming_agent
 and not streaming_with_agent_error and not vision_web_browser and not scipy and not sklearn"
DESELECT=$(echo $DESELECT)

run() {
    local label=$1
    shift
    echo "running smolagents' tests $label sop_telemetry..."
    local start=$SECONDS
    # The virtualenv first on PATH: the MCP tests start their servers as `python -c ...`.
    (cd "$SRC" && PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest "${FILES[@]}" -k "$DESELECT" -p no:cacheprovider \
        -o addopts= --timeout 300 -q --continue-on-collection-errors --junitxml="$WORK/$label.xml" "$@" > "$WORK/$label.log" 2>&1) || true
    echo "  $(grep -E '^=*.* (passed|failed|error)' "$WORK/$label.log" | tail -n 1)  [$((SECONDS - start))s, log: $WORK/$label.log]"
}

run without "$@"
rm -rf "$WORK/sessions"
SOP_TELEMETRY_DIR=$WORK/sessions SOP_TELEMETRY_SUITE_REPORT=$WORK/telemetry-report.json \
    PYTHONPATH="$REPO:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}" run with -p sop_telemetry_pytest_plugin "$@"

# -- 4. compare ----------------------------------------------------------------------------------------------------
"$PYTHON" "$REPO/scripts/compare_suite_runs.py" "$WORK" smolagents
