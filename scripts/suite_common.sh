# Shared by scripts/run_*_tests.sh (sourced): helpers for running a framework's own test suite with sop_telemetry.

# sop_telemetry's own runtime dependencies, read from pyproject.toml (the package itself comes from PYTHONPATH):
# own_dependencies PYTHON REPO -> one line, space-separated.
own_dependencies() {
    "$1" -c '
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"])' "$2/pyproject.toml"
}
