"""One read through the sidecar during a drill, as a ``Read`` record (status, version,
staleness, age, latency; never a value)."""

from __future__ import annotations

import time

import aiohttp

from sidecar.drill.verdict import Read


async def read_once(
    session: aiohttp.ClientSession,
    api: str,
    token: str,
    path: str,
    phase: str,
    started: float,
    previous: bool = False,
) -> Read:
    """GET ``path`` (``?version=previous`` when ``previous``) from the sidecar at ``api``; the
    read as a record, ``at`` counted from ``started`` (status 0: no answer in 30 s)."""
    begun = time.monotonic()
    query = "?version=previous" if previous else ""
    try:
        async with session.get(
            f"{api}/secrets/{path}{query}",
            headers={"X-Sidecar-Token": token},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as reply:
            body = await reply.json(content_type=None)
            status = reply.status
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return Read(
            begun - started,
            phase,
            path,
            0,
            time.monotonic() - begun,
            reason="no_answer",
            previous=previous,
        )
    seconds = time.monotonic() - begun
    if status == 200 and isinstance(body, dict):
        version = body.get("version")
        age = body.get("age_seconds")
        return Read(
            begun - started,
            phase,
            path,
            200,
            seconds,
            version=version if isinstance(version, int) else None,
            stale=body.get("stale") is True,
            age=float(age) if isinstance(age, int | float) else None,
            previous=previous,
        )
    reason = body.get("reason") if isinstance(body, dict) else None
    return Read(
        begun - started,
        phase,
        path,
        status,
        seconds,
        reason=None if reason is None else str(reason),
        previous=previous,
    )
