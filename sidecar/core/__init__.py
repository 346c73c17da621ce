"""Pure logic: imports neither aiohttp nor hvac (a test checks)."""
