# Sourced by scripts/run_<framework>_tests.sh: make_suite_venv VENV PACKAGE... makes (once) or updates the framework
# suite's own virtualenv with those packages and sop_telemetry's runtime dependencies, read from pyproject.toml (the
# package itself comes from PYTHONPATH). Packages in the array NO_DEPS, if set, are then installed without their
# dependencies. Needs PYTHON and REPO.
make_suite_venv() {
    local venv=$1
    shift
    local stamp=$venv/.sop-telemetry-deps own
    read -r -a own <<< "$("$PYTHON" -c '
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"])' "$REPO/pyproject.toml")"
    local want="$* ${own[*]} ${NO_DEPS[*]:-}"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q "$@" "${own[@]}"
        if [ -n "${NO_DEPS[*]:-}" ]; then
            "$venv/bin/python" -m pip install -q --no-deps "${NO_DEPS[@]}"
        fi
        echo "$want" > "$stamp"
    fi
}
