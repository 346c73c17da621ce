"""What the test's own TCP servers share (the fault proxy, the lying store): a server on a
loopback port with an event loop of its own in a thread, so the sidecar's worker threads can
talk to it while a test awaits; and HTTP's chunked encoding, read back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self


class ThreadedServer:
    """Serves ``_handle(reader, writer)`` on 127.0.0.1 from its own loop and thread."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _closing(self) -> None:
        """Called on the server's loop as it stops (abort open connections here)."""

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            self._closing()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def dechunk(data: bytes) -> bytes:
    """A chunked HTTP body as its bytes."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out
