"""The fleet simulator (issue 16): N sidecars' own cache, schedule, jitter, backoff, breakers
and request budget, run under a virtual clock against a store model calibrated from a real
OpenBao in the same run. ``python -m benchmarks.fleet`` (``make fleet``); docs/fleet.md."""
