"""The sidecar's own store request budget puts reads first: background requests spend only
tokens spare above the share reserved for reads and never queue; reads that can be answered
with the value held take a token only if one is there; other reads queue. (Fake node, fake
clock: the budget is pure arithmetic; the real store is tests/integration/test_budget.py.)"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.backend_settings import BackendSettings
from sidecar.core.facts import Quiet
from sidecar.core.priority import Urgency, urgent_as
from sidecar.store.interface import Deferred, StoreUnavailable
from sidecar.store.nodes import Node, Nodes
from sidecar.store.replies import Reply


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _nodes(clock: Clock, rate: float = 10, burst: int = 8, reserved: float = 0.25) -> Nodes:
    settings = BackendSettings.model_validate(
        {
            "auth": {"method": "token", "token_file": "/nonexistent/token"},
            "rate_limit": {
                "requests_per_second": rate,
                "burst": burst,
                "reserved_for_reads": reserved,
            },
        }
    )
    return Nodes(settings, Quiet(), clock=clock, rng=lambda: 0.5)


async def _ok(_node: Node) -> Reply:
    return Reply(200, {}, {})


async def _send(nodes: Nodes, level: Urgency) -> str:
    with urgent_as(level):
        try:
            await nodes.send(_ok)
        except Deferred:
            return "deferred"
    return "sent"


async def test_background_leaves_the_reserved_share_to_reads_and_never_queues() -> None:
    clock = Clock()
    nodes = _nodes(clock)  # burst 8, 25 % (2 tokens) kept for reads
    sent = [await _send(nodes, Urgency.BACKGROUND) for _ in range(8)]
    assert sent == ["sent"] * 6 + ["deferred"] * 2
    # the reserved tokens are there for reads, at once
    assert [await _send(nodes, Urgency.STALE_OK) for _ in range(3)] == ["sent", "sent", "deferred"]


async def test_a_deferred_request_says_when_a_token_will_be_spare() -> None:
    clock = Clock()
    nodes = _nodes(clock, rate=10, burst=4, reserved=0.5)  # 2 kept
    for _ in range(2):
        assert await _send(nodes, Urgency.BACKGROUND) == "sent"
    with urgent_as(Urgency.BACKGROUND), pytest.raises(Deferred) as deferred:
        await nodes.send(_ok)
    assert deferred.value.retry_after == pytest.approx(0.1)  # one token, at 10/s
    clock.now += 0.1
    assert await _send(nodes, Urgency.BACKGROUND) == "sent"


async def test_reads_queue_and_background_waits_until_their_debt_is_paid() -> None:
    clock = Clock()
    nodes = _nodes(clock, rate=10, burst=2, reserved=0.0)
    assert [await _send(nodes, Urgency.FOREGROUND) for _ in range(2)] == ["sent", "sent"]
    # a third read queues for the next token (100 ms); it is not refused
    queued = asyncio.ensure_future(_send(nodes, Urgency.FOREGROUND))
    await asyncio.sleep(0)
    assert not queued.done()
    # meanwhile background work is put off: the next token is the read's
    clock.now += 0.1
    assert await _send(nodes, Urgency.BACKGROUND) == "deferred"
    assert await queued == "sent"
    clock.now += 0.1
    assert await _send(nodes, Urgency.BACKGROUND) == "sent"


async def test_a_read_that_would_wait_past_the_timeout_is_throttled_not_deferred() -> None:
    clock = Clock()
    nodes = _nodes(clock, rate=0.1, burst=1, reserved=0.0)  # next token in 10 s > timeout 2 s
    assert await _send(nodes, Urgency.FOREGROUND) == "sent"
    with pytest.raises(StoreUnavailable) as refused:
        await nodes.send(_ok)
    assert refused.value.reason == "throttled"
    assert not isinstance(refused.value, Deferred)
