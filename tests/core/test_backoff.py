"""Pure backoff maths, token bucket and circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from sidecar.core.backoff import CircuitBreaker, CircuitState, TokenBucket, full_jitter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("attempt", "expected"), [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (500, 30.0)]
)
def test_full_jitter_grows_exponentially_up_to_the_cap(attempt: int, expected: float):
    assert full_jitter(attempt, 0.5, 30.0, lambda: 1.0) == expected
    assert full_jitter(attempt, 0.5, 30.0, lambda: 0.0) == 0.0
    assert full_jitter(attempt, 0.5, 30.0, lambda: 0.5) == expected / 2


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.reserve(max_wait=0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(max_wait=0) is None  # nothing saved, will not wait
    assert bucket.reserve(max_wait=1) == pytest.approx(0.1)  # next token in 100 ms
    assert bucket.reserve(max_wait=1) == pytest.approx(0.2)  # reserved after the previous one
    clock.now += 0.25  # both reservations paid, half of the next token saved
    assert bucket.reserve(max_wait=0) is None
    clock.now += 10  # refills to the burst, not beyond
    assert [bucket.reserve(max_wait=0) for _ in range(4)] == [0.0, 0.0, 0.0, None]


def _breaker(clock: Clock, rng: float = 1.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, base=0.5, cap=8.0, clock=clock, rng=lambda: rng)


def test_breaker_opens_after_consecutive_failures_only():
    clock = Clock()
    breaker = _breaker(clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # the streak is broken
    breaker.failure()
    breaker.failure()
    assert breaker.closed
    breaker.failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.closed
    assert breaker.retry_after() == pytest.approx(0.5)


def test_breaker_probes_at_backed_off_intervals_and_closes_on_success():
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    assert not breaker.probe_due()
    clock.now += 0.5
    assert breaker.probe_due()
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.probe_due()  # one probe at a time
    breaker.failure()  # the probe failed: open again, longer
    assert breaker.retry_after() == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.probe_due()
    breaker.failure()
    assert breaker.retry_after() == pytest.approx(2.0)
    for _ in range(10):
        clock.now += breaker.retry_after()
        assert breaker.probe_due()
        breaker.failure()
    assert breaker.retry_after() == pytest.approx(8.0)  # capped
    clock.now += 8.0
    assert breaker.probe_due()
    breaker.success()
    assert breaker.closed
    assert breaker.retry_after() == 0.0
    for _ in range(3):
        breaker.failure()
    assert breaker.retry_after() == pytest.approx(0.5)  # backoff starts over after recovery


def test_breaker_never_probes_sooner_than_base_even_with_zero_jitter():
    clock = Clock()
    breaker = _breaker(clock, rng=0.0)
    for _ in range(3):
        breaker.failure()
    assert breaker.retry_after() == pytest.approx(0.5)


def test_hold_honours_retry_after_and_does_not_shorten_an_open_window():
    clock = Clock()
    breaker = _breaker(clock)
    breaker.hold(10)
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after() == pytest.approx(10)
    breaker.hold(2)
    assert breaker.retry_after() == pytest.approx(10)
    clock.now += 9.9
    assert not breaker.probe_due()
    clock.now += 0.1
    assert breaker.probe_due()


def test_token_bucket_keep_leaves_tokens_for_others_and_never_queues():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=4, clock=clock)
    # keeping 2 of 4: two requests go, the third would dip into the kept share
    assert [bucket.reserve(max_wait=5, keep=2) for _ in range(3)] == [0.0, 0.0, None]
    assert bucket.spare_in(keep=2) == pytest.approx(0.1)
    assert bucket.spare_in() == 0.0  # a request keeping nothing goes now
    assert bucket.reserve(max_wait=0) == 0.0
    assert bucket.reserve(max_wait=0) == 0.0
    assert bucket.reserve(max_wait=1) == pytest.approx(0.1)  # queued: owes a token
    assert bucket.spare_in(keep=2) == pytest.approx(0.4)  # the debt first, then the kept two
    clock.now += 0.4
    assert bucket.reserve(max_wait=0, keep=2) == 0.0
