"""Benchmark aggregation: final scores of many runs -> Table 5/6 style tables and rliable plots.

Run `python -m tools.aggregate --help`; see README.md in this folder.
"""
