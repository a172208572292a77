"""Benchmarks and their workload generators (run as ``python -m bench.NAME``)."""
