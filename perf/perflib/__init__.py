"""Helpers of the perf/ scripts (perf/run, perf/redis-compare, perf/selftest).

Owns: the profile matrix, the local cluster and redis-server launchers, machine facts,
and the rendering of results (markdown tables, the SVG percentile plot). Python standard
library only: these scripts must run on any machine with python3, no pip packages.
Must not: measure anything itself (ringraft bench and redis-benchmark do), nor assert
speed.
"""
