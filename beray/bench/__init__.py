"""Benchmarks: ``python -m beray.bench NAME [--json]``. Every speed claim of beray is a ratio printed here."""
