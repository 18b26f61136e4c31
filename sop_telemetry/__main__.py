"""`python -m sop_telemetry ...` is the `sop-telemetry` command."""

from .cli import main

raise SystemExit(main())
