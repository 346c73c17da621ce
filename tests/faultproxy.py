"""An in-process TCP proxy between the sidecar and the store that misbehaves on demand.

Runs its own event loop in a thread, so sync and async tests (and sidecar subprocesses) can use
it alike. Modes apply to new connections and to data still flowing on open ones:

- ``pass``: forward both ways (after ``delay`` seconds per chunk from the store, if set)
- ``blackhole``: accept, swallow the request, never answer (a timeout)
- ``reset``: accept and reset the connection at once (a broken path)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from typing import Literal

from tests.loopserver import ThreadedServer

Mode = Literal["pass", "blackhole", "reset"]


class FaultProxy(ThreadedServer):
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        super().__init__()
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.connections = 0
        self.request_lines: list[str] = []  # every HTTP request line sent towards the store
        self._writers: set[asyncio.StreamWriter] = set()

    def _closing(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def set(self, mode: Mode, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    def cut_all(self) -> None:
        """Reset every open connection (keep-alive pools included)."""

        async def _cut() -> None:
            for writer in list(self._writers):
                _reset(writer)

        asyncio.run_coroutine_threadsafe(_cut(), self._loop).result(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.mode == "reset":
                _reset(writer)
                return
            if self.mode == "blackhole":
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, downstream=False),
                    self._pipe(up_reader, writer, downstream=True),
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.mode == "reset":
                    _reset(writer)
                    return
                if self.mode == "blackhole":
                    continue  # the store's answer, or the request, goes nowhere
                if downstream and self.delay:
                    await asyncio.sleep(self.delay)
                if not downstream:
                    self.request_lines.extend(
                        m.group(0).decode() for m in _REQUEST_LINE.finditer(chunk)
                    )
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()


_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE|LIST|PATCH|HEAD) /\S* HTTP/1\.[01]")


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
