"""`make bench`: throughput, memory and latency of the toolkit against the alternatives.

Not a test suite: it measures and writes results under ``bench/results/``; nothing asserts wall time.
"""
