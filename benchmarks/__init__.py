"""The benchmark suite: `make bench` (or `python -m benchmarks`) runs it and writes docs/performance.md.

Every figure is a ratio to a baseline measured in the same run on the same machine (the machine is
shared and noisy, so absolute figures from another run are not comparable). Benchmarks never
assert timings; `tests/benchmarks/test_bench_smoke.py` runs a short version to keep them working.
"""
