"""Benchmarks behind `lakehouse bench ...`; results are appended to docs/BENCHMARKS.md.

Each bench starts its own broker on a free port with a throw-away storage root, so a run never
touches the user's broker or tables and two runs never disturb each other.
"""
