"""Benchmarks: scripts run by hand (``python tests/bench/api_load.py``), not by pytest."""
