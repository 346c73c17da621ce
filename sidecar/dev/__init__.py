"""Development only: a real OpenBao dev server and the demo (the dev extra)."""
