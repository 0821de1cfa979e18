"""Benchmarks: scripts that measure, each printing a markdown table (see BENCHMARKS.md).

Run one with `python -m benchmarks.<name> [--quick]`, or all with
`python -m benchmarks.run_all` (`make bench`).
"""
