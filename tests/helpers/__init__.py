"""Shared test helpers, imported as `helpers.<module>` (tests/ is on pytest's pythonpath); fixtures stay in conftest.py."""
