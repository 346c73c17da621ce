"""Rotation notices for subscribers (the Server-Sent Events stream): new versions, retired
previous versions, revocations. Each subscriber has a bounded queue; a slow one loses the
oldest notices, never blocks the cache."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.core.facts import Fact, PreviousRetired, Revoked, Rotated

QUEUE_SIZE = 256
CLOSED: dict[str, Any] = {}  # sentinel: the hub is shutting down


class EventHub:
    """The rotation notices of the event stream: a Listener that turns rotation, retirement and
    revocation facts into events for every subscriber's bounded queue."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new subscriber's queue: events, then ``CLOSED`` at shutdown. Pair with
        ``unsubscribe`` when the stream ends."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop delivering to ``queue`` (its stream ended)."""
        self._queues.discard(queue)

    def __len__(self) -> int:
        return len(self._queues)

    def publish(self, event: dict[str, Any]) -> None:
        """Give ``event`` to every subscriber; a full queue loses its oldest (nobody waits)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # drop the oldest: a slow reader must not hold us up
            queue.put_nowait(event)

    def close(self) -> None:
        """Shutdown: give every subscriber ``CLOSED`` (room made if need be) so its stream ends."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)

    def notify(self, fact: Fact) -> None:
        """Publish the facts subscribers want (rotations, retirements, revocations); skip others."""
        match fact:
            case Rotated(path, secret_class, old_version, new):
                self.publish(
                    {
                        "event": "rotation",
                        "path": path,
                        "version": new.version,
                        "kid": new.kid,
                        "previous_kid": path if old_version is None else f"{path}#{old_version}",
                        "class": secret_class.name,
                    }
                )
            case PreviousRetired(path, secret_class, version):
                self.publish(
                    {
                        "event": "retired",
                        "path": path,
                        "version": version,
                        "kid": f"{path}#{version}",
                        "class": secret_class.name,
                    }
                )
            case Revoked(path, version, reason):
                self.publish(
                    {"event": "revoked", "path": path, "version": version, "reason": reason}
                )
