"""Game-day tools: the fault-injecting proxy (``sidecar faultproxy``)."""
