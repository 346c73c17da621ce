"""One sidecar's steady-state store load from its configuration, pure: literal secrets once
per refresh cycle (refresh-ahead at 82.5 % of the interval on average), the revocation list's
polls, and glob rules per secret, against backend.rate_limit."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.core.load import describe, estimate, in_use
from sidecar.core.policy import OnOutage, Policy, Rule
from tests.core.test_cache import make_class

FAST = dataclasses.replace(make_class("fast", OnOutage.SERVE_STALE), refresh_interval=2.0)


def test_two_hundred_secrets_at_two_seconds_need_more_than_the_default_budget():
    # the measurement: 200 secrets, refresh 2 s, budget 50/s -> reads queued
    policy = Policy([Rule(f"secret/app/s{i}", FAST) for i in range(200)])
    load = estimate(policy, revocation_poll_interval=None, budget=50.0)
    assert load.literal_count == 200
    assert load.known == pytest.approx(200 / (2.0 * 0.825))  # ~121 requests/s
    assert load.over_budget
    text = "\n".join(describe(load))
    assert "warning: the named secrets need 121.21 store requests/s" in text
    assert not estimate(policy, None, budget=2000.0).over_budget


def test_globs_are_counted_per_secret_and_the_list_polls_are_added():
    standard = make_class("standard", OnOutage.SERVE_STALE)  # refresh 60 s
    policy = Policy([Rule("secret/app/db", standard), Rule("secret/app/**", FAST)])
    load = estimate(policy, revocation_poll_interval=5.0, budget=50.0)
    assert load.literal_count == 1 and load.revocation_poll == 0.2
    assert load.per_glob_secret == {"fast": pytest.approx(1 / 1.65)}
    assert load.room("fast") == int((50 - load.known) / (1 / 1.65))
    shadowed = Policy([Rule("secret/**", FAST), Rule("secret/app/db", standard)])
    assert estimate(shadowed, None, 50.0).literal_count == 0  # the glob classifies it first


def test_the_load_in_use_is_one_check_per_refresh_cycle_plus_the_list_polls():
    assert in_use([60.0, 60.0, 300.0], None) == pytest.approx(2 / (0.825 * 60) + 1 / (0.825 * 300))
    assert in_use([], 30.0) == pytest.approx(1 / 30)
    assert in_use([], None) == 0.0
