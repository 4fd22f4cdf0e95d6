"""Ablation figures of the paper's appendix E from a sweep's evaluation CSVs.

Run `python -m tools.ablations --help`; the run naming and the figure presets are in
figures.py, the curves, table and plot in curves.py.
"""
