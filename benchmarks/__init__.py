"""Benchmarks of pixverse_async against its local simulator: `python -m benchmarks [--quick]` (see README.md)."""
