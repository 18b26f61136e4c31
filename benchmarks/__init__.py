"""Benchmarks of sop_telemetry's overhead: agent runs side by side with no telemetry and with OpenInference,
per-call wrapper costs, flush, memory, import time and reading many sessions (issue 6).

Usage::

    python -m benchmarks            # the full run, a few minutes; figures in benchmarks/results/latest.json
    python -m benchmarks --quick    # every section in seconds (CI smoke; the figures mean nothing)
"""
