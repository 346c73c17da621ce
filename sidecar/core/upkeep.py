"""The cache's background work: refresh-ahead of what is read, retries with backoff, expiry at
max_cache_age, confirmation of values restored from a snapshot, and the retirement of previous
versions. Driven by ``run_due`` with whatever clock the cache has."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from sidecar.core.backoff import full_jitter
from sidecar.core.entries import CacheKey, Entry, EntryTable
from sidecar.core.facts import BudgetDegraded, Listener
from sidecar.core.loglimit import LogLimiter
from sidecar.core.outage import expiry_reason
from sidecar.core.policy import Policy, SecretClass
from sidecar.core.priority import Urgency, urgent_as
from sidecar.core.rotation import Rotations
from sidecar.core.schedule import Due, Schedule
from sidecar.store.interface import Deferred

log = logging.getLogger("sidecar.cache")

StartFetch = Callable[[CacheKey], tuple["asyncio.Task[Entry]", bool]]


class Upkeep:
    """The cache's background work (see the module docstring): the cache tells it what is held,
    restored, purged or awaited, and ``run_due`` does what came due."""

    def __init__(
        self,
        entries: EntryTable,
        rotations: Rotations,
        policy: Policy,
        start_fetch: StartFetch,
        listener: Listener,
        *,
        clock: Callable[[], float],
        rng: Callable[[], float],
        refresh_ahead: tuple[float, float],
        backoff: tuple[float, float],
        spread_load: bool = True,
    ) -> None:
        """``start_fetch(key)``: the (coalesced) fetch of ``key`` and whether it was already
        under way. ``refresh_ahead``: the fraction of the refresh interval at which a read
        value is refreshed, drawn in this range; ``backoff``: (base, cap) of the full-jitter
        delay before a failed refresh is tried again."""
        self.schedule = Schedule()
        self._entries = entries
        self._rotations = rotations
        self._policy = policy
        self._start_fetch = start_fetch
        self._listener = listener
        self._behind_log = LogLimiter(burst=1, period=60.0, clock=clock)
        self._clock = clock
        self._rng = rng
        self._ahead = refresh_ahead
        self._backoff = backoff
        self._spread = spread_load
        self._preloaded: set[CacheKey] = set()  # preloaded: kept fresh whether read or not
        self._attempts: dict[CacheKey, int] = {}  # consecutive failed background fetches
        self._retry_at: dict[CacheKey, float] = {}  # when a failed one is tried again
        self._background: set[asyncio.Task[Entry]] = set()

    # -- what the cache tells it --------------------------------------------------------

    def held(self, key: CacheKey, entry: Entry, *, first: bool = False) -> None:
        """A value from the store is held: refresh it ahead of its interval. (One item per
        value: an expiry is scheduled only once the value stops being refreshed.)

        ``first``: the key was not held from the store before (new, or restored from a
        snapshot); a refresh that succeeds after failures counts too. A fleet does those
        together (a mass restart, the store back after an outage), and refresh-ahead's narrow
        window would keep it bunched for many intervals. So the first refresh comes at a
        uniform point of one refresh cycle (a cycle drawn as usual), after a short lead of
        half the margin refresh-ahead leaves before the interval ends: the time left until the
        next refresh in a fleet already in steady state, so the fleet's checks are as even as
        that from the lead on (drawn uniformly over a window instead, the first refreshes
        leave a ripple that lasts for intervals), and a value just confirmed is not checked
        again at once."""
        low, high = self._ahead
        fraction = low + (high - low) * self._rng()
        # (Not a leased credential: its refresh renews or replaces it, and an early one would
        # issue credentials before their time; its timing is its lease's.)
        if self._spread and entry.secret.lease_id is None and (first or key in self._attempts):
            fraction = (1 - high) / 2 + fraction * self._rng()
        due = entry.confirmed_at + entry.secret_class.refresh_interval * fraction
        self.schedule.push(due, Due.REFRESH, key, entry.serial)

    def restored(self, key: CacheKey, entry: Entry, confirm_within: float) -> None:
        """A value from the snapshot is held: confirm it with the store at a random moment
        within ``confirm_within`` seconds, and expire it at max_cache_age meanwhile."""
        self.expire_later(key, entry)
        self.schedule.push(
            self._clock() + confirm_within * self._rng(), Due.CONFIRM, key, entry.serial
        )

    def retire_at(self, key: CacheKey, due: float) -> None:
        """Retire the previous version of ``key``'s path at monotonic ``due`` (its overlap ends)."""
        self.schedule.push(due, Due.RETIRE, key)

    def fetch_soon(self, key: CacheKey) -> None:
        """Fetch ``key`` at the runner's next look, if it is still wanted (a blocking query on a key
        not held)."""
        self.schedule.push(self._clock(), Due.FETCH, key)

    def purged(self, keys: list[CacheKey]) -> None:
        """Values were purged: the preloaded ones are fetched again soon."""
        now = self._clock()
        for key in keys:
            if key in self._preloaded:
                self.schedule.push(now + self._rng(), Due.FETCH, key)

    def window_changed(self, secret_class: SecretClass, shorter: bool) -> None:
        """A class's max_cache_age changed: expiries already scheduled are checked again."""
        for key, entry in self._entries.items():
            if entry.secret_class.name == secret_class.name and entry.expiry_scheduled:
                due = entry.confirmed_at + entry.secret_class.max_cache_age  # its own (leases)
                self.schedule.push(due, Due.EXPIRE, key, entry.serial)
        if shorter:
            self.schedule.wakeup.set()

    def preload(self, paths: Iterable[str], jitter: float) -> None:
        """Fetch these (latest versions) soon, each at a random moment within ``jitter``
        seconds so a fleet restarting together does not stampede, and keep them fresh."""
        now = self._clock()
        for path in paths:
            key = (path, None)
            self._preloaded.add(key)
            if key not in self._entries:  # a restored value already has its confirmation due
                self.schedule.push(now + jitter * self._rng(), Due.FETCH, key)

    def preloaded(self) -> list[str]:
        """The preloaded paths, sorted (kept fresh whether read or not; /readyz waits for them)."""
        return sorted(path for path, _ in self._preloaded)

    def expire_later(self, key: CacheKey, entry: Entry) -> None:
        """Schedule ``entry``'s expiry at max_cache_age, once: a value no longer refreshed still
        ends then."""
        if not entry.expiry_scheduled:
            entry.expiry_scheduled = True
            due = entry.confirmed_at + entry.secret_class.max_cache_age
            self.schedule.push(due, Due.EXPIRE, key, entry.serial)

    # -- doing it ----------------------------------------------------------------------------

    def _unconfirmed(self, key: CacheKey) -> bool:
        # A value restored from the snapshot is served (stale) without any read fetching it:
        # its confirmation is retried until it succeeds, read lately or not, or it would stay
        # unconfirmed until max_cache_age after the store is back.
        entry = self._entries.get(key)
        return entry is not None and entry.provisional

    def retrying(self, key: CacheKey, now: float) -> bool:
        """Did the store fail ``key``'s last background fetch, with its retry still to come?"""
        due = self._retry_at.get(key)
        return self._spread and due is not None and due > now

    def wanted(self, key: CacheKey, now: float) -> bool:
        """Worth a store request: preloaded, awaited, or read within the refresh interval."""
        if key in self._preloaded or self._rotations.awaited(key):
            return True
        entry = self._entries.get(key)
        return entry is not None and now - entry.last_read <= entry.secret_class.refresh_interval

    def run_due(self) -> float | None:
        """Act on everything due by now; return seconds until the next item (None: nothing)."""
        now = self._clock()
        for what, key, serial in self.schedule.due(now):
            if what is Due.FETCH:
                self._retry_at.pop(key, None)
                if self.wanted(key, now) or self._unconfirmed(key):
                    self._refresh_in_background(key)
                continue
            if what is Due.RETIRE:
                again = self._rotations.retire(
                    key[0], self._policy.classify(key[0]), self._entries.get
                )
                if again is not None:
                    self.retire_at(key, again)
                continue
            entry = self._entries.get(key)
            if entry is None or entry.serial != serial:
                continue  # replaced or dropped since this was scheduled
            if what is Due.CONFIRM:
                if entry.provisional:
                    self._refresh_in_background(key)
                continue
            if what is Due.EXPIRE:
                due = entry.confirmed_at + entry.secret_class.max_cache_age
                if due > now:  # the class's window was extended meanwhile
                    self.schedule.push(due, Due.EXPIRE, key, serial)
                    continue
                self._entries.expire(key, entry, expiry_reason(entry))
            elif self.wanted(key, now):
                self._refresh_in_background(key)
            else:
                self.expire_later(key, entry)
        return self.schedule.next_in(now)

    def _refresh_in_background(self, key: CacheKey) -> None:
        with urgent_as(Urgency.BACKGROUND):  # the fetch task, and its store requests, carry it
            task, coalesced = self._start_fetch(key)
        if coalesced:
            return
        self._background.add(task)
        task.add_done_callback(lambda done: self._refresh_done(key, done))

    def _refresh_done(self, key: CacheKey, task: asyncio.Task[Entry]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._attempts.pop(key, None)
            self._retry_at.pop(key, None)
            return
        if isinstance(exc, Deferred):
            self._deferred(key, exc)
            return
        # The entry (if any) stays; reads decide by class whether it may still be served,
        # and it expires at max_cache_age unless a retry succeeds first. Try again after a
        # full-jitter backoff while someone still wants the value.
        held = self._entries.get(key)
        if held is not None:
            self.expire_later(key, held)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        base, cap = self._backoff
        age = self._clock() - held.confirmed_at if held is not None else 0.0
        if self._spread and held is not None and held.secret_class.may_serve_stale(age):
            # Reads are answered with the value held meanwhile, so a long outage may stretch
            # the retries over a whole refresh interval (never past the value's end): when the
            # store comes back, a fleet's catch-up is then spread like its steady state, not
            # bunched into the backoff cap.
            left = held.secret_class.max_cache_age - age
            cap = max(cap, min(held.secret_class.refresh_interval, left))
        delay = max(0.05, full_jitter(attempt, base, cap, self._rng))
        self._retry_at[key] = self._clock() + delay
        self.schedule.push(self._retry_at[key], Due.FETCH, key)
        log.warning(
            "background refresh failed; will retry",
            extra={
                "path": key[0],
                "error": type(exc).__name__,
                "reason": str(exc),
                "retry_in_seconds": round(delay, 2),
            },
        )

    def _deferred(self, key: CacheKey, exc: Deferred) -> None:
        """The budget had no token to spare: the refresh is stretched, not failed. It is tried
        again once a token should be spare (jittered, so deferred keys do not return together);
        reads meanwhile get the value held within its class's limits, or ask in the foreground."""
        held = self._entries.get(key)
        if held is not None:
            self.expire_later(key, held)
        spare = exc.retry_after or 0.0
        self.schedule.push(self._clock() + max(0.05, spare) * (1 + self._rng()), Due.FETCH, key)
        secret_class = held.secret_class if held is not None else self._policy.classify(key[0])
        if secret_class is not None:
            self.behind(key[0], secret_class, "deferred")

    def behind(self, path: str, secret_class: SecretClass, action: str) -> None:
        """The budget could not keep up, and ``action`` was taken for ``path``: ``deferred`` (a
        background refresh put off) or ``served_stale`` (a read answered with the value held,
        within max_cache_age, instead of waiting for a token). Counted; logged once a minute."""
        self._listener.notify(BudgetDegraded(secret_class, action))
        dropped = self._behind_log.allow(action)
        if dropped is not None:
            log.warning(
                "refresh-ahead is behind: backend.rate_limit has no token to spare, so "
                "background refreshes are deferred and serve_stale classes answer with the "
                "value held (within max_cache_age) while it is refreshed. Raise "
                "backend.rate_limit.requests_per_second or the classes' refresh_interval "
                "(sidecar check-config shows the load)",
                extra={
                    "path": path,
                    "class": secret_class.name,
                    "action": action,
                    **({"suppressed": dropped} if dropped else {}),
                },
            )

    async def run(self, idle: float = 60.0) -> None:
        """Forever: wake when something is due, refresh what was read recently, expire the old."""
        wakeup = self.schedule.wakeup
        while True:
            wakeup.clear()
            delay = self.run_due()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
            # stops this loop if the wakeup fires at the same moment, and shutdown would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle if delay is None else delay):
                    await wakeup.wait()

    async def settle(self) -> None:
        """Wait for background refreshes under way (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
