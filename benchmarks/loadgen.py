"""Load generators: wrk when it is installed, else a built-in one (asyncio protocols + uvloop).

Both are closed-loop: each of ``connections`` keep-alive connections has one request in
flight and sends the next as soon as the answer is complete, for ``duration`` seconds. Both
report requests, req/s and latency percentiles (p50, p99, p99.9) in the same JSON shape.

The built-in generator runs as its own process (``python -m benchmarks.loadgen``), like wrk,
so the harness process stays idle while a round runs.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

T = TypeVar("T")

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,"
    .. "\\"errors\\":%d,\\"non_2xx\\":%d,\\"timeouts\\":%d,"
    .. "\\"p50_us\\":%.1f,\\"p99_us\\":%.1f,\\"p999_us\\":%.1f,\\"max_us\\":%.1f,"
    .. "\\"mean_us\\":%.1f}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    generator: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int = 0  # connection, read, write errors and timeouts
    non_2xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str | None:
    path = wrk_path()
    if path is None:
        return None
    result = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (result.stdout or result.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def choose(preference: str) -> str:
    """'wrk' or 'builtin' from 'auto', 'wrk' or 'builtin'."""
    if preference == "builtin":
        return "builtin"
    if wrk_path() is not None:
        return "wrk"
    if preference == "wrk":
        raise SystemExit("benchmarks: --generator wrk, but wrk is not installed")
    return "builtin"


def run_load(
    generator: str,
    url: str,
    headers: Mapping[str, str],
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    workdir: Path,
) -> LoadResult:
    if generator == "wrk":
        return _run_wrk(url, headers, connections, duration, threads, workdir)
    return _run_builtin(url, headers, connections, duration)


def _run_wrk(
    url: str,
    headers: Mapping[str, str],
    connections: int,
    duration: float,
    threads: int,
    workdir: Path,
) -> LoadResult:
    script = workdir / "report.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    seconds = max(1, round(duration))  # wrk takes whole seconds
    args = [
        wrk_path() or "wrk",
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    args.append(url)
    result = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    elapsed = data["duration_us"] / 1e6
    return LoadResult(
        generator="wrk",
        requests=data["requests"],
        seconds=round(elapsed, 3),
        rps=data["requests"] / elapsed if elapsed else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["errors"] + data["timeouts"],
        non_2xx=data["non_2xx"],
    )


def _run_builtin(
    url: str, headers: Mapping[str, str], connections: int, duration: float
) -> LoadResult:
    args = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
    ]
    for key, value in headers.items():
        args += ["--header", f"{key}: {value}"]
    return LoadResult(**run_child(args, timeout=duration + 60, what="built-in load generator"))


def run_child(
    args: Sequence[str], *, timeout: float, what: str, error: type[Exception] = RuntimeError
) -> Any:
    """Run ``args`` (a ``python -m benchmarks.…`` client) from the repository root and return
    the JSON it prints; ``error`` with the end of its stderr if it fails.

    The clients run as their own process, like wrk, so the harness stays idle meanwhile."""
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        raise error(f"{what} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


# -- the built-in generator ---------------------------------------------------------------


class ClosedLoop(abc.ABC):
    """What the keep-alive connections of one closed-loop run share: which request each sends
    next, what to count of each complete answer, the deadline and the connection errors.

    The built-in generator (one request, again and again) and the budget scenario's readers (a
    random secret each time) differ only in those two methods, so their connections and their
    latency (request written to answer complete) are the same code: ``_Client``, ``drive``.
    """

    def __init__(self, deadline: float, *, retry_pause: float, grace: float | None) -> None:
        self.deadline = deadline  # time.monotonic(): no request is sent after it
        self.retry_pause = retry_pause  # seconds before connecting again after a refusal
        # an answer still owed this long after the deadline counts as an error (None: wait)
        self.grace = grace
        self.errors = 0
        self.last = 0.0  # time.monotonic() of the last complete answer

    @abc.abstractmethod
    def next_request(self) -> bytes:
        """The whole request to send next on a connection."""

    @abc.abstractmethod
    def answered(self, status: int, head: bytes, body: bytes, latency_ns: int) -> None:
        """Count one complete answer; ``self.last`` is already the time it completed."""


class _Run(ClosedLoop):
    def __init__(self, request: bytes, deadline: float) -> None:
        super().__init__(deadline, retry_pause=0.01, grace=10.0)
        self.request = request
        self.latencies: list[int] = []
        self.statuses: dict[int, int] = {}

    def next_request(self) -> bytes:
        return self.request

    def answered(self, status: int, head: bytes, body: bytes, latency_ns: int) -> None:
        self.latencies.append(latency_ns)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of a closed-loop run: send the run's next request,
    read the whole response, hand it to the run, send again until the deadline."""

    def __init__(self, run: ClosedLoop, done: asyncio.Future[None]) -> None:
        self.run = run
        self.done = done
        self.buf = bytearray()
        self.sent = 0
        self.transport: asyncio.Transport | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        request = self.run.next_request()  # chosen before the clock starts: not latency
        self.sent = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            total = _response_length(head, buf, end)
            if total is None or len(buf) < total:
                return
            latency = time.perf_counter_ns() - self.sent
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            run = self.run
            run.last = time.monotonic()
            run.answered(int(head[9:12]), head, body, latency)
            if b"\r\nConnection: close" in head or b"\r\nconnection: close" in head:
                self.close_after = True
            if self.close_after or run.last >= run.deadline:
                assert self.transport is not None
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.run.errors += 1
        if not self.done.done():
            self.done.set_result(None)


def _response_length(head: bytes, buf: bytearray, end: int) -> int | None:
    """Bytes of the whole response at the start of ``buf``, or None until it is complete."""
    body = end + 4
    for marker in (b"\r\nContent-Length: ", b"\r\ncontent-length: "):
        i = head.find(marker)
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            return body + int(head[i + len(marker) : j if j >= 0 else len(head)])
    if b"chunked" in head.lower():
        k = buf.find(b"0\r\n\r\n", body)
        while k >= 0 and not (k == body or buf[k - 2 : k] == b"\r\n"):
            k = buf.find(b"0\r\n\r\n", k + 1)
        return None if k < 0 else k + 5
    return body  # 204, 304, or no body


async def drive(run: ClosedLoop, host: str, port: int, connections: int) -> None:
    """Keep ``connections`` connections to ``host:port`` busy, one request in flight on each,
    until the run's deadline: a connection closed or refused before then is made again."""
    await asyncio.gather(*(_connection(run, host, port) for _ in range(connections)))


async def _connection(run: ClosedLoop, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < run.deadline:
        done: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(_Client, run, done), host, port)
        except OSError:
            run.errors += 1
            await asyncio.sleep(run.retry_pause)
            continue
        grace = run.grace
        limit = None if grace is None else max(0.0, run.deadline - time.monotonic()) + grace
        try:
            async with asyncio.timeout(limit):
                await done
        except TimeoutError:
            run.errors += 1


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _generate(
    url: str, headers: Mapping[str, str], connections: int, duration: float
) -> LoadResult:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: sidecar-bench"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    started = time.monotonic()
    run = _Run(request, started + duration)
    await drive(run, host, port, connections)
    elapsed = max(run.last, started + 1e-9) - started
    latencies = sorted(run.latencies)

    def pct(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6

    return LoadResult(
        generator="builtin",
        requests=len(latencies),
        seconds=round(elapsed, 3),
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        p999_ms=pct(0.999),
        max_ms=latencies[-1] / 1e6 if latencies else 0.0,
        errors=run.errors,
        non_2xx=sum(n for status, n in run.statuses.items() if not 200 <= status < 300),
        statuses={str(k): v for k, v in sorted(run.statuses.items())},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    result = run_fast(_generate(args.url, headers, args.connections, args.duration))
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
