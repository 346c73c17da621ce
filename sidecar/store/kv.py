"""The store as the sidecar uses it (the ``Store`` protocol): KV v1 and v2 reads, cheap version
checks, the mount table, passthrough, and the sidecar's own identity, over the store's nodes
(``nodes.py``) and the one hvac client (``client.py``)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.backend_settings import BackendSettings
from sidecar.core.coalesce import Coalescer
from sidecar.core.facts import Listener, Quiet
from sidecar.core.supervise import listener_of_failures, supervised
from sidecar.store import replies
from sidecar.store.client import HvacClient
from sidecar.store.identity import Authenticator
from sidecar.store.interface import (
    METADATA,
    Forwarded,
    Mount,
    PassThrough,
    Secret,
    SecretForbidden,
    SecretNotFound,
    Unaskable,
    VersionInfo,
)
from sidecar.store.mounts import MountTable
from sidecar.store.nodes import Node, Nodes
from sidecar.store.replies import Reply

log = logging.getLogger("sidecar.store")


class KVStore:
    """Reads KV v1 and v2 secrets; discovers each mount's KV version as the CLI does."""

    def __init__(
        self,
        settings: BackendSettings,
        *,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """``listener`` hears the facts: logins and renewals, node states, and background
        tasks (the prober, token upkeep) that failed and were restarted."""
        listener = listener or Quiet()
        self._on_error = listener_of_failures(listener)
        self._client = HvacClient(settings)
        self._nodes = Nodes(settings, listener, clock=clock, rng=rng)
        self._mounts = MountTable(clock)
        self._mount_lookups: Coalescer[str, Mount] = Coalescer()
        self._auth = Authenticator(self, settings, listener, rng, clock)
        self._prober: asyncio.Task[None] | None = None

    @property
    def auth_failure(self) -> str | None:
        """Whether the sidecar cannot authenticate to the store right now, as a reason code
        (``auth_failed``, or the outage's when the store could not be asked); None when it can
        or has not tried yet. /readyz shows it on a listener without a token, so the details
        (which may name files) stay in the log and in the 503s callers get."""
        return self._auth.failure_reason

    @property
    def token_digest(self) -> str | None:
        """A digest of the store token in use (never the token): which token issued a lease."""
        return self._auth.token_digest

    def on_new_token(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the sidecar holds a different store token (a login, a
        replaced token file): leases end with the token that made them."""
        self._auth.on_new_token.append(hook)

    @property
    def authenticated(self) -> bool:
        """Whether the sidecar holds a store token yet, for the readiness report."""
        return self._auth.token is not None

    @property
    def addresses(self) -> list[str]:
        """The configured store node URLs, first preferred: where store requests may go."""
        return self._nodes.addresses

    async def start(self) -> None:
        """Start the node prober and the background login without waiting for either: start-up
        never waits on the store, and an outage at start is served as an outage."""
        health = self._health
        self._prober = asyncio.create_task(
            supervised("store_prober", lambda: self._nodes.probe_forever(health), self._on_error),
            name="store-prober",
        )
        await self._auth.start()

    async def close(self) -> None:
        """Stop the prober and token upkeep and cancel mount lookups in flight, then release the
        request pool: nothing keeps running against the store after shutdown."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        await self._auth.stop()
        await self._mount_lookups.drain()
        self._client.close()

    # -- reads -------------------------------------------------------------------------

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        """One secret for the cache, read the way its mount's KV version needs (``METADATA``
        reads the KV v2 metadata document); a request the mount cannot answer is Unaskable."""
        mount = await self._mount_for(path, urgent=urgent)
        rest = _rest(mount, path)
        if not mount.kv:
            # Another engine: served if its read is leased (database credentials and the
            # like); each such read makes a new credential, so there are no versions to ask.
            if version is not None:
                raise Unaskable(f"{mount.path!r} is a {mount.engine!r} engine: no versions")
            reply = await self.call("GET", path, urgent=urgent)
            return replies.leased_secret(path, reply.body)
        if version == METADATA:
            if mount.kv_version != 2:
                raise Unaskable(f"metadata exists only on KV v2 mounts; {mount.path!r} is KV 1")
            reply = await self.call("GET", f"{mount.path}metadata/{rest}")
            return replies.kv2_metadata(path, reply.body)
        if mount.kv_version == 2:
            params = {"version": str(version)} if version is not None else None
            reply = await self.call("GET", f"{mount.path}data/{rest}", params=params, urgent=urgent)
            return replies.kv2_secret(path, version, reply.body)
        if version is not None:
            raise Unaskable(f"versions exist only on KV v2 mounts; {mount.path!r} is KV version 1")
        reply = await self.call("GET", path, urgent=urgent)
        return replies.kv1_secret(path, reply.body)

    async def renew(self, lease_id: str, increment: int) -> int:
        """Renew a lease (``sys/leases/renew``) by ``increment`` seconds; the seconds granted."""
        reply = await self.call(
            "PUT", "sys/leases/renew", json={"lease_id": lease_id, "increment": increment}
        )
        return replies.renewed(lease_id, reply.body)

    async def revoke_lease(self, lease_id: str) -> None:
        """Revoke a lease (``sys/leases/revoke``): its credential stops working now."""
        await self.call("PUT", "sys/leases/revoke", json={"lease_id": lease_id})

    async def version_info(self, path: str) -> VersionInfo | None:
        """The current KV v2 version from the metadata endpoint: a cheap rotation check that
        moves no secret value. None when it cannot tell (KV v1, or no metadata permission)."""
        mount = await self._mount_for(path)
        if mount.kv_version != 2 or mount.path in self._mounts.no_metadata:
            return None
        try:
            reply = await self.call("GET", f"{mount.path}metadata/{_rest(mount, path)}")
        except SecretForbidden:
            self._mounts.no_metadata.add(mount.path)
            log.info(
                "no read permission on KV metadata; refreshes read the data instead",
                extra={"mount": mount.path},
            )
            return None
        return replies.version_info(reply.body)

    # -- the mount table ---------------------------------------------------------------

    def known_mount(self, api_path: str) -> Mount | None:
        """The mount holding ``api_path`` if already known and trusted: no store request."""
        return self._mounts.known(api_path)

    async def mount(self, api_path: str) -> Mount:
        """The mount that holds ``api_path`` (a path as in the store's API, after /v1/)."""
        return await self._mount_for(api_path)

    def export_mounts(self) -> list[dict[str, Any]]:
        """The mounts discovered so far, as plain data for the snapshot (no secret in them)."""
        return self._mounts.export()

    def import_mounts(self, mounts: list[dict[str, Any]]) -> int:
        """Trust mounts remembered by the snapshot like fresh discoveries, so a warm start need
        not ask the store again; returns how many were taken."""
        return self._mounts.import_(mounts)

    async def _mount_for(self, path: str, *, urgent: bool = False) -> Mount:
        known = self._mounts.known(path)
        if known is not None:
            return known
        mount, _ = await self._mount_lookups.run(path, lambda: self._discover(path, urgent))
        return mount

    async def _discover(self, path: str, urgent: bool) -> Mount:
        try:
            reply = await self.call("GET", f"sys/internal/ui/mounts/{path}", urgent=urgent)
        except SecretForbidden as exc:
            raise SecretForbidden(
                f"the store refused to say which mount holds {path!r}: no mount exists "
                "there, or the sidecar's policy grants nothing under it"
            ) from exc
        found = replies.mount(reply.body)
        if found is None or not path.startswith(found.path):
            raise SecretNotFound(f"no secrets engine is mounted at {path!r}")
        return self._mounts.learned(found)

    # -- requests ------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        api_path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        authenticated: bool = True,
        token: str | None = None,
        urgent: bool = False,
    ) -> Reply:
        """One store request with the sidecar's token; a 403 from a dead token logs in again
        once and retries. Any non-2xx answer raises a StoreError kind. ``urgent`` requests
        (the revocation list) try every node regardless of breakers and the request budget."""
        if authenticated and token is None:
            token = await self._auth.ensure()
        reply = await self._send(method, api_path, params, json, token, urgent)
        if reply.status == 403 and authenticated and token is not None:
            retry_token = await self._auth.recover(token)
            if retry_token is not None:
                reply = await self._send(method, api_path, params, json, retry_token, urgent)
        if 200 <= reply.status < 300:
            return reply
        raise replies.refusal(reply)

    async def _send(
        self,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
        urgent: bool,
    ) -> Reply:
        async def attempt(node: Node) -> Reply:
            return await self._client.send(node.url, method, api_path, params, json, token)

        return await self._nodes.send(attempt, urgent=urgent)

    async def _health(self, node: Node) -> Reply:
        return await self._client.send(
            node.url, "GET", "sys/health", {"standbyok": "true", "perfstandbyok": "true"}
        )

    async def forward(self, request: PassThrough) -> Forwarded:
        """Pass one request through to the store as it came, with the caller's own token
        (in ``headers``), never the sidecar's: the sidecar must not become everyone's way in.
        One node, no retry elsewhere: a write must not be sent twice."""
        node = self._nodes.first_ready()
        return await self._client.forward(node.url, request)


def _rest(mount: Mount, path: str) -> str:
    rest = path[len(mount.path) :]
    if not rest:
        raise Unaskable(f"{path!r} names the mount {mount.path!r}, not a secret in it")
    return rest
