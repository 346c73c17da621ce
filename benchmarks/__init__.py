"""The benchmark harness: ``python -m benchmarks`` (``make bench``, ``make bench-smoke``).

Everything is measured side by side in one run on one machine, and reported as ratios as well
as absolute numbers: on a shared 2-core machine absolute times move, ratios measured in
alternating rounds hold. See docs/performance.md.
"""
