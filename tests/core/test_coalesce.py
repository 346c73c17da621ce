"""Coalescer: one fetch per key in flight, shared by every caller, immune to callers leaving."""

from __future__ import annotations

import asyncio
import gc

import pytest

from sidecar.core.coalesce import Coalescer


class Fetch:
    """A fetch function that counts its runs and blocks until released."""

    def __init__(self, value: object = "value", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


async def spin(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_fetch() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch("secret")
    callers = [asyncio.create_task(coalescer.run("k", fetch)) for _ in range(10)]
    await fetch.started.wait()
    assert coalescer.inflight("k")
    assert len(coalescer) == 1
    fetch.release.set()
    results = await asyncio.gather(*callers)
    assert fetch.calls == 1
    assert [value for value, _ in results] == ["secret"] * 10
    flags = [coalesced for _, coalesced in results]
    assert flags.count(False) == 1
    assert flags.count(True) == 9
    assert flags[0] is False  # the first caller leads


async def test_registry_is_empty_after_completion() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch()
    fetch.release.set()
    assert await coalescer.run("k", fetch) == ("value", False)
    assert len(coalescer) == 0
    assert not coalescer.inflight("k")


async def test_sequential_calls_fetch_again() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch()
    fetch.release.set()
    assert await coalescer.run("k", fetch) == ("value", False)
    assert await coalescer.run("k", fetch) == ("value", False)
    assert fetch.calls == 2


async def test_distinct_keys_fetch_separately() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch_a, fetch_b = Fetch("a"), Fetch("b")
    task_a = asyncio.create_task(coalescer.run("a", fetch_a))
    task_b = asyncio.create_task(coalescer.run("b", fetch_b))
    await fetch_a.started.wait()
    await fetch_b.started.wait()
    assert len(coalescer) == 2
    fetch_a.release.set()
    fetch_b.release.set()
    assert await task_a == ("a", False)
    assert await task_b == ("b", False)
    assert (fetch_a.calls, fetch_b.calls) == (1, 1)


async def test_error_reaches_every_waiter_and_key_is_forgotten() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    boom = RuntimeError("store down")
    failing = Fetch(error=boom)
    callers = [asyncio.create_task(coalescer.run("k", failing)) for _ in range(5)]
    await failing.started.wait()
    failing.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(result is boom for result in results)
    assert failing.calls == 1
    assert len(coalescer) == 0

    # the error belonged to that round only: the next call fetches afresh
    working = Fetch("recovered")
    working.release.set()
    assert await coalescer.run("k", working) == ("recovered", False)
    assert working.calls == 1


async def test_cancelled_follower_does_not_cancel_the_fetch() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch("secret")
    leader = asyncio.create_task(coalescer.run("k", fetch))
    await fetch.started.wait()
    follower = asyncio.create_task(coalescer.run("k", fetch))
    other = asyncio.create_task(coalescer.run("k", fetch))
    await spin()
    follower.cancel()
    await spin()
    assert follower.cancelled()
    assert not fetch.cancelled
    assert coalescer.inflight("k")
    fetch.release.set()
    assert await leader == ("secret", False)
    assert await other == ("secret", True)
    assert fetch.calls == 1
    assert not fetch.cancelled


async def test_cancelled_leader_does_not_cancel_the_fetch() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch("secret")
    leader = asyncio.create_task(coalescer.run("k", fetch))
    await fetch.started.wait()
    followers = [asyncio.create_task(coalescer.run("k", fetch)) for _ in range(3)]
    await spin()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert not fetch.cancelled
    assert coalescer.inflight("k")
    fetch.release.set()
    assert await asyncio.gather(*followers) == [("secret", True)] * 3
    assert fetch.calls == 1
    assert len(coalescer) == 0


async def test_abandoned_failed_fetch_is_forgotten_without_lost_error_report() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        coalescer: Coalescer[str, object] = Coalescer()
        fetch = Fetch(error=RuntimeError("nobody is listening"))
        only = asyncio.create_task(coalescer.run("k", fetch))
        await fetch.started.wait()
        only.cancel()
        await spin()
        assert coalescer.inflight("k")
        fetch.release.set()
        await spin()
        assert len(coalescer) == 0
        del only
        gc.collect()
        # the error nobody awaited was retrieved: no "Task exception was never retrieved"
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_start_reports_whether_already_running() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch = Fetch()
    task, coalesced = coalescer.start("k", fetch)
    again, coalesced_again = coalescer.start("k", fetch)
    assert again is task
    assert (coalesced, coalesced_again) == (False, True)
    fetch.release.set()
    assert await task == "value"
    await spin()
    assert fetch.calls == 1
    assert len(coalescer) == 0


async def test_drain_cancels_inflight_fetches() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    fetch_a, fetch_b = Fetch(), Fetch()
    waiter = asyncio.create_task(coalescer.run("a", fetch_a))
    task_b, _ = coalescer.start("b", fetch_b)
    await fetch_a.started.wait()
    await fetch_b.started.wait()
    async with asyncio.timeout(2):  # a drain that does not cancel would wait forever
        await coalescer.drain()
    assert fetch_a.cancelled
    assert fetch_b.cancelled
    assert task_b.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(coalescer) == 0


async def test_drain_with_nothing_in_flight() -> None:
    coalescer: Coalescer[str, object] = Coalescer()
    await coalescer.drain()
    assert len(coalescer) == 0
