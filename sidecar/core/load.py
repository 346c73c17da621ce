"""What one sidecar's configuration costs the store in steady state, pure: each secret in use
is checked once per refresh cycle (refresh-ahead fires at 75-90 % of its class's
refresh_interval, 82.5 % on average), the revocation list is polled, and the sum is compared
with the sidecar's own request budget (``backend.rate_limit``). Secrets under glob rules are
counted per secret: how many an app reads is not in the configuration."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.policy import Policy, is_literal

MEAN_AHEAD = 0.825  # refresh-ahead's mean point in the refresh interval (75-90 %)


@dataclass(frozen=True)
class Estimate:
    """Store requests per second in steady state, and the budget they are measured against."""

    literal: float  # the secrets named by literal rules, all in use
    literal_count: int
    per_glob_secret: dict[str, float]  # class -> requests/s added by each secret read under it
    revocation_poll: float
    budget: float  # backend.rate_limit.requests_per_second

    @property
    def known(self) -> float:
        """Requests/s from what the configuration names: literal secrets and the list polls."""
        return self.literal + self.revocation_poll

    @property
    def over_budget(self) -> bool:
        """Do the named secrets alone need more than the budget allows? Then refresh-ahead
        falls behind: refreshes are deferred and reads of values past their interval are
        answered as their class allows (see ``sidecar.core.priority``)."""
        return self.known > self.budget

    def room(self, secret_class: str) -> int:
        """How many secrets of ``secret_class`` under glob rules the rest of the budget holds."""
        rate = self.per_glob_secret.get(secret_class, 0.0)
        left = max(0.0, self.budget - self.known)
        return int(left / rate) if rate > 0 else 0


def estimate(policy: Policy, revocation_poll_interval: float | None, budget: float) -> Estimate:
    """The steady-state store load of one sidecar running ``policy``."""
    literal = 0.0
    count = 0
    per_glob: dict[str, float] = {}
    for rule in policy.rules:
        rate = 1.0 / (rule.secret_class.refresh_interval * MEAN_AHEAD)
        if is_literal(rule.match):
            if policy.classify(rule.match) is rule.secret_class:  # the rule that applies
                literal += rate
                count += 1
        else:
            per_glob[rule.secret_class.name] = rate
    poll = 0.0 if revocation_poll_interval is None else 1.0 / revocation_poll_interval
    return Estimate(literal, count, per_glob, poll, budget)


def in_use(refresh_intervals: Iterable[float], revocation_poll_interval: float | None) -> float:
    """What the values kept fresh now cost the store, requests/s in steady state: one check
    per refresh cycle each (``refresh_intervals``: theirs, one per value), and the list polls."""
    rate = sum(1.0 / (interval * MEAN_AHEAD) for interval in refresh_intervals)
    return rate + (0.0 if revocation_poll_interval is None else 1.0 / revocation_poll_interval)


def describe(load: Estimate) -> list[str]:
    """The estimate for people: what it is, and a warning when the budget is too small."""
    lines = [
        f"expected store load of this sidecar in steady state: {load.known:.2f} requests/s "
        f"({load.literal_count} literal secret(s): {load.literal:.2f}/s; revocation list: "
        f"{load.revocation_poll:.2f}/s) of a budget of {load.budget:g}/s (backend.rate_limit)"
    ]
    for name, rate in sorted(load.per_glob_secret.items()):
        lines.append(
            f"  each secret read under a glob rule of class {name!r} adds {rate:.3f}/s; the "
            f"budget holds about {load.room(name)} more"
        )
    if load.over_budget:
        lines.append(
            f"warning: the named secrets need {load.known:.2f} store requests/s, more than "
            f"backend.rate_limit allows ({load.budget:g}/s): refresh-ahead falls behind (reads "
            "come first: serve_stale classes answer with values past refresh_interval, "
            "fail_closed reads wait for the budget); raise "
            "backend.rate_limit.requests_per_second or the classes' refresh_interval"
        )
    return lines
