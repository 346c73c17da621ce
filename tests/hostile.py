"""A store that lies: an HTTP proxy in front of a real OpenBao that answers chosen paths its own
way. Everything it does not tamper with is the real store's answer.

Per path prefix (after ``/v1/``), a rule says what to do:

- ``rewrite(fn)``: forward, then replace the JSON body with ``fn(body)``;
- ``respond(status, body, headers)``: answer this, never asking the store;
- ``redirect(location)``: 307 to ``location``;
- ``huge(size)``: 200 with ``size`` bytes of body, as fast as the reader takes them;
- ``drip(interval, phase)``: one byte every ``interval`` seconds, from the status line
  (``phase="headers"``) or after complete headers (``phase="body"``).

Runs its own event loop in a thread, like ``faultproxy``, so the sidecar's worker threads can
talk to it while a test awaits. Records what it was asked (``seen``), how many bytes each huge
or dripping reply got out (``sent``) and how many of those the reader cut off (``cut``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.loopserver import ThreadedServer, dechunk


@dataclass
class Rule:
    kind: str
    fn: Callable[[Any], Any] | None = None
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    interval: float = 1.0
    phase: str = "headers"


def rewrite(fn: Callable[[Any], Any]) -> Rule:
    return Rule("rewrite", fn=fn)


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Rule:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Rule("respond", status=status, body=raw, headers=headers or {})


def redirect(location: str, status: int = 307) -> Rule:
    return Rule("respond", status=status, headers={"Location": location})


def huge(size: int) -> Rule:
    return Rule("huge", size=size)


def drip(interval: float, phase: str = "headers") -> Rule:
    return Rule("drip", interval=interval, phase=phase)


class HostileStore(ThreadedServer):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream = ("127.0.0.1", upstream_port)
        self.rules: dict[str, Rule] = {}
        self.seen: list[str] = []
        self.sent: list[int] = []
        self.cut = 0

    def on(self, prefix: str, rule: Rule) -> None:
        self.rules[prefix] = rule

    def clear(self) -> None:
        self.rules.clear()

    def _rule(self, path: str) -> Rule | None:
        matches = [p for p in self.rules if path.startswith(p)]
        return self.rules[max(matches, key=len)] if matches else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path = target.split("?", 1)[0].removeprefix("/v1/")
            self.seen.append(path)
            rule = self._rule(path)
            if rule is None or rule.kind == "rewrite":
                status, reply_headers, reply = await self._forward(method, target, headers, body)
                if rule is not None and rule.fn is not None and reply:
                    reply = json.dumps(rule.fn(json.loads(reply))).encode()
                await self._send(writer, status, reply, reply_headers)
            elif rule.kind == "respond":
                await self._send(writer, rule.status, rule.body, rule.headers)
            elif rule.kind == "huge":
                await self._huge(writer, rule.size)
            elif rule.kind == "drip":
                await self._drip(reader, writer, rule)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop(): end quietly (a cancelled connection task makes asyncio log an error)
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            lines = [f"{method} {target} HTTP/1.1", f"Host: {self.upstream[0]}"]
            for name, value in headers.items():
                if name not in ("host", "connection", "content-length"):
                    lines.append(f"{name}: {value}")
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            raw = await reader.read()
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        reply_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            reply_headers[name.strip().lower()] = value.strip()
        if reply_headers.get("transfer-encoding") == "chunked":
            payload = dechunk(payload)
        kept = {k: v for k, v in reply_headers.items() if k in ("content-type", "retry-after")}
        return int(status_line.split()[1]), kept, payload

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if "content-type" not in {k.lower() for k in headers}:
            lines.append("Content-Type: application/json")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _huge(self, writer: asyncio.StreamWriter, size: int) -> None:
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        chunk, sent = b'{"data": "' + b"x" * (1024 * 1024 - 10), 0
        try:
            while sent < size:
                piece = chunk[: size - sent]
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
        except ConnectionError:
            self.cut += 1
        finally:
            self.sent.append(sent)

    async def _drip(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rule: Rule
    ) -> None:
        body = b'{"data": {"data": {"password": "dripped"}, "metadata": {"version": 1}}}'
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n"
        ).encode()
        if rule.phase == "body":
            writer.write(head)
            await writer.drain()
            payload = body
        else:
            payload = head + body
        sent = 0
        try:
            for i in range(len(payload)):
                writer.write(payload[i : i + 1])
                await writer.drain()
                sent += 1
                await asyncio.sleep(rule.interval)
                if writer.transport.is_closing() or reader.at_eof():
                    raise ConnectionResetError
        except ConnectionError:
            self.cut += 1
        finally:
            self.sent.append(sent)
