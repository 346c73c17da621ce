"""The fault model, pure: what a fault may be, and which requests it hits."""

from __future__ import annotations

import random

import pytest

from sidecar.drill.faults import Fault, FaultError, Mode, applies, delay_for, parse_fault


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("latency", "send a JSON object"),
        ({"mode": "slow"}, "mode must be one of"),
        ({"mode": "latency"}, "latency needs a delay"),
        ({"mode": "latency", "delay": "-1s"}, "delay"),
        ({"mode": "latency", "delay": "2h"}, "delay must be from 0 to 600s"),
        ({"mode": "error", "status": 200}, "status must be 500, 502, 503 or 504"),
        ({"mode": "error", "fraction": 1.5}, "fraction must be a number from 0 to 1"),
        ({"mode": "error", "fraction": True}, "fraction must be a number from 0 to 1"),
        ({"mode": "error", "node": 2}, "node must be an index from 0 to 1"),
        ({"mode": "error", "prefix": "../sys/"}, "prefix must be a store path prefix"),
        ({"mode": "refuse", "prefix": "secret/"}, "refuse closes the listener"),
        ({"mode": "error", "target": "http://elsewhere"}, "unknown field(s) ['target']"),
    ],
)
def test_a_fault_that_cannot_be_set_says_why(document: object, reason: str):
    with pytest.raises(FaultError, match=None) as refused:
        parse_fault(document, nodes=2)
    assert reason in str(refused.value)


def test_a_fault_is_read_with_durations_and_defaults():
    fault = parse_fault({"mode": "latency", "delay": "1500ms", "jitter": 0.5, "node": 1}, 2)
    assert fault == Fault(Mode.LATENCY, delay=1.5, jitter=0.5, node=1)
    assert fault.describe()["mode"] == "latency"


def test_scope_fraction_and_flapping_decide_which_requests_are_hit():
    rng = random.Random(7)
    scoped = Fault(Mode.ERROR, prefix="secret/data/app/", node=0)
    assert applies(scoped, "secret/data/app/db", 0, 0.0, rng)
    assert not applies(scoped, "secret/data/other", 0, 0.0, rng)
    assert not applies(scoped, "secret/data/app/db", 1, 0.0, rng)
    assert not applies(Fault(), "secret/data/app/db", 0, 0.0, rng)  # pass hits nothing
    flapping = Fault(Mode.ERROR, period=10)
    assert [applies(flapping, "x", 0, t, rng) for t in (0, 9.9, 10, 19.9, 20)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    half = Fault(Mode.ERROR, fraction=0.5)
    hits = sum(applies(half, "x", 0, 0.0, rng) for _ in range(2000))
    assert 850 < hits < 1150
    assert not any(applies(Fault(Mode.ERROR, fraction=0), "x", 0, 0.0, rng) for _ in range(100))
    jittered = [delay_for(Fault(Mode.LATENCY, delay=1, jitter=0.5), rng) for _ in range(200)]
    assert min(jittered) >= 0.5 and max(jittered) <= 1.5 and len(set(jittered)) > 100
