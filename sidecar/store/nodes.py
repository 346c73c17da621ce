"""The store's nodes (an HA cluster, regions), and the one loop every store request goes
through: the preferred healthy node first, the next one on an outage answer, each node behind
its own circuit breaker (probed in the background, never by a request), all of them within
this sidecar's own request budget."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.backend_settings import BackendSettings
from sidecar.core.backoff import CircuitBreaker, TokenBucket
from sidecar.core.facts import Listener, NodeState
from sidecar.core.priority import Urgency, urgency
from sidecar.store.interface import Deferred, ErrorKind, StoreUnavailable
from sidecar.store.replies import REDIRECTS, Reply, unavailable_for

log = logging.getLogger("sidecar.store")


@dataclass(eq=False)
class Node:
    """One configured store address with its own circuit breaker, and its last outage: the cause
    reported when no node may be tried."""

    url: str
    breaker: CircuitBreaker
    last_error: StoreUnavailable | None = None


Attempt = Callable[[Node], Awaitable[Reply]]  # one request, sent to one node


class Nodes:
    """The store's configured nodes and the routing over them: failover, a circuit breaker per
    node, background probing and the sidecar's own request budget."""

    def __init__(
        self,
        settings: BackendSettings,
        listener: Listener,
        *,
        clock: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        backoff = settings.backoff
        self._nodes = [
            Node(
                url,
                CircuitBreaker(
                    failure_threshold=settings.circuit_breaker.failure_threshold,
                    base=backoff.base,
                    cap=backoff.cap,
                    clock=clock,
                    rng=rng,
                ),
            )
            for url in settings.urls
        ]
        self._preferred = self._nodes[0]
        self._budget = TokenBucket(
            settings.rate_limit.requests_per_second, settings.rate_limit.burst, clock
        )
        self._max_wait = settings.timeout
        self._reserved = settings.rate_limit.burst * settings.rate_limit.reserved_for_reads
        self._listener = listener
        self._trouble = asyncio.Event()  # set when a breaker opens: wakes the prober
        for node in self._nodes:
            listener.notify(NodeState(node.url, True, node.breaker.state))

    @property
    def addresses(self) -> list[str]:
        """The configured node URLs in their configured order: where store requests may go."""
        return [node.url for node in self._nodes]

    async def send(self, attempt: Attempt, *, urgent: bool = False) -> Reply:
        """One request over the nodes. Normal requests skip nodes whose circuit is open (when
        every one is, they fail at once: no timeout paid per request during an outage) and
        spend the budget. ``urgent`` ones (the revocation list) try every node, breakers and
        budget aside, and move no breaker: one lucky answer must not close a circuit."""
        nodes = self._ordered()
        if not urgent:
            nodes = [node for node in nodes if node.breaker.closed]
            if not nodes:
                raise self.circuit_open()
            await self._spend()
        outcome: Reply | StoreUnavailable | None = None
        for node in nodes:
            if not urgent and not node.breaker.closed:
                continue  # opened by a concurrent request meanwhile
            try:
                reply = await attempt(node)
            except StoreUnavailable as exc:
                if not urgent and exc.kind is not ErrorKind.BAD_RESPONSE:
                    # (A reply of the wrong shape or size came from a node that answers: it
                    # is no sign that the node is down, and must not open its circuit.)
                    self.failed(node, exc)
                outcome = exc
                continue
            if reply.status == 429 and not urgent:
                # The store asked us to slow down: no request to this node before it says.
                node.last_error = unavailable_for(reply)
                retry_after = node.last_error.retry_after
                node.breaker.hold(retry_after if retry_after is not None else 1.0)
                self._seen(node, up=True)
                self._trouble.set()
                return reply
            if reply.status in REDIRECTS:
                reply = await self._redirected(node, reply, attempt, urgent=urgent)
            if reply.status >= 500 or reply.status == 429 or reply.status in REDIRECTS:
                # Sealed, a standby without a leader, overloaded, sending us elsewhere: another
                # node may do better. (A redirect not followed is an answer: no failure.)
                if not urgent and reply.status >= 500:
                    self.failed(node, unavailable_for(reply))
                outcome = reply
                continue
            if not urgent:
                node.breaker.success()
                self._seen(node, up=True)
                self._preferred = node
            return reply
        if isinstance(outcome, Reply):
            return outcome
        raise outcome if outcome is not None else self.circuit_open()

    def first_ready(self) -> Node:
        """The node a request that must not be retried elsewhere goes to (passthrough)."""
        ready = [node for node in self._ordered() if node.breaker.closed]
        if not ready:
            raise self.circuit_open()
        return ready[0]

    async def _spend(self) -> None:
        """Take a token of the budget, as the request's urgency allows: reads queue (ahead of
        everything else, which never queues); background work takes only spare tokens above
        the share reserved for reads, else it is deferred; a read that may be answered with
        the value held takes a token only if one is there now."""
        level = urgency()
        if level is not Urgency.FOREGROUND:
            keep = self._reserved if level is Urgency.BACKGROUND else 0.0
            if self._budget.reserve(0.0, keep=keep) is None:
                raise Deferred(
                    "deferred",
                    detail="backend.rate_limit has no token to spare now",
                    retry_after=self._budget.spare_in(keep),
                )
            return
        wait = self._budget.reserve(max_wait=self._max_wait)
        if wait is None:
            raise StoreUnavailable(
                "throttled",
                kind=ErrorKind.THROTTLED,
                detail="the sidecar's own store request budget (backend.rate_limit) is spent",
                retry_after=1.0,
            )
        if wait:
            await asyncio.sleep(wait)

    async def _redirected(
        self, node: Node, reply: Reply, attempt: Attempt, *, urgent: bool
    ) -> Reply:
        """A node redirected us (a standby pointing at the active node). Followed once, and only
        to another configured address: the same request is sent there (our path, not the
        Location's), so the token never goes anywhere we were not told to send it."""
        target = self._node_at(reply.headers.get("Location"), relative_to=node.url)
        if target is None or target is node:
            log.warning(
                "store redirect not followed: the target is not a configured address",
                extra={"address": node.url, "status": reply.status},
            )
            return reply
        try:
            return await attempt(target)
        except StoreUnavailable as exc:
            if not urgent:
                self.failed(target, exc)
            return reply

    def _node_at(self, location: str | None, *, relative_to: str) -> Node | None:
        if not location:
            return None
        url = urllib.parse.urlsplit(urllib.parse.urljoin(relative_to + "/", location))
        for candidate in self._nodes:
            configured = urllib.parse.urlsplit(candidate.url)
            if (url.scheme, url.hostname, url.port) == (
                configured.scheme,
                configured.hostname,
                configured.port,
            ):
                return candidate
        return None

    def _ordered(self) -> list[Node]:
        i = self._nodes.index(self._preferred)
        return self._nodes[i:] + self._nodes[:i]

    def failed(self, node: Node, exc: StoreUnavailable) -> None:
        """Count an outage against ``node``: its breaker may open (waking the prober), its state
        is reported, and the cause is kept for the answer when no node may be tried."""
        node.last_error = exc
        node.breaker.failure()
        self._seen(node, up=False)
        if not node.breaker.closed:
            self._trouble.set()
        log.warning(
            "store node failed",
            extra={
                "address": node.url,
                "reason": exc.reason,
                "detail": exc.detail,
                "circuit": node.breaker.state.name.lower(),
            },
        )

    def _seen(self, node: Node, *, up: bool) -> None:
        self._listener.notify(NodeState(node.url, up, node.breaker.state))

    def circuit_open(self) -> StoreUnavailable:
        """No node's breaker is closed: answer now (no timeout paid per request), with the last
        outage of the first node, in order of preference, that recorded one as the cause."""
        wait = min(node.breaker.retry_after() for node in self._nodes)
        cause = next((n.last_error for n in self._ordered() if n.last_error), None)
        return StoreUnavailable(
            cause.reason if cause else "circuit_open",
            kind=cause.kind if cause else ErrorKind.CONNECTION,
            detail=f"circuit open: the store failed repeatedly; next attempt in {wait:.1f}s",
            retry_after=max(wait, 1.0),
        )

    async def probe_forever(self, health: Attempt) -> None:
        """Probe nodes whose breaker is open, each at its backed-off probe time, with
        ``health`` (the store's health endpoint)."""
        while True:
            due = [node for node in self._nodes if node.breaker.probe_due()]
            if due:
                await asyncio.gather(*(self._probe(node, health) for node in due))
            waits = [n.breaker.retry_after() for n in self._nodes if not n.breaker.closed]
            if not waits:
                self._trouble.clear()
                await self._trouble.wait()
                continue
            await asyncio.sleep(min(max(min(waits), 0.02), 1.0))

    async def _probe(self, node: Node, health: Attempt) -> None:
        try:
            reply = await health(node)
        except StoreUnavailable as exc:
            self.failed(node, exc)
            return
        if reply.status == 200:
            node.breaker.success()
            self._seen(node, up=True)
            log.info("store node answers again", extra={"address": node.url})
        else:  # sealed (503), not initialised (501), no leader...
            self.failed(node, unavailable_for(reply))
