"""HTTP: the guard, the APIs, connection limits."""
