"""Framework integrations, one module each, built on the recorder API (`sop_telemetry.recorder`), the registry's
contract (`sop_telemetry.registry.Integration`) and the shared patching helpers (`patching`).

Usage::

    from sop_telemetry.integrations import smolagents as integration
    integration.uninstall()     # restore smolagents exactly as it was
    integration.install()       # and patch it again

`import sop_telemetry` installs each integration when its framework is imported (see sop_telemetry.registry);
docs/integrations.md says how to write one.
"""
