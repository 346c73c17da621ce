"""The floor of the HTTP stack the sidecar chose: a bare aiohttp + uvloop handler that returns
fixed bytes (the sidecar's own hit body), with no middleware, no token check, no metrics.

    python -m benchmarks.bare --port 8300 --body body.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def make_app(body: bytes) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/secrets/{path:.*}", handler)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    app = make_app(args.body.read_bytes())
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    # access_log=None: the sidecar runs without an access log by default, too
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
