"""What the drill does to the store itself, with an operator token (``--operator-token-file``):
write a new version of a secret (the same data again, so a staging app keeps working while
its readers must still move to the new version) and revoke the sidecar's store token. These
requests go straight to the store, not through the fault proxy, and are counted apart from
the sidecar's."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp


class OperatorError(Exception):
    """The store refused or could not be asked; the message says which and what to check."""


class Operator:
    """Store requests made with the operator token, to ``store`` (the real address)."""

    def __init__(self, store: str, token: str) -> None:
        self.store = store.rstrip("/")
        self._token = token
        self.paths: Counter[str] = Counter()  # every request this made, by store path

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        self.paths[path] += 1
        try:
            async with (
                aiohttp.ClientSession(trust_env=False) as session,
                session.request(
                    method,
                    f"{self.store}/v1/{path}",
                    json=body,
                    headers={"X-Vault-Token": self._token},
                    timeout=aiohttp.ClientTimeout(total=10),
                    allow_redirects=False,
                ) as reply,
            ):
                if reply.status == 204:
                    return None
                text = await reply.text()
                if reply.status != 200:
                    raise OperatorError(
                        f"{method} {path}: the store answered {reply.status}; does the operator "
                        "token allow it?"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OperatorError(f"{method} {path}: the store could not be asked: {exc}") from exc
        try:
            return json.loads(text)
        except ValueError as exc:
            raise OperatorError(f"{method} {path}: the store's answer is not JSON") from exc

    async def _mount(self, path: str) -> tuple[str, str] | None:
        """The mount holding ``path`` and its KV version ("1", "2"); None: not a KV mount."""
        mount = await self._call("GET", f"sys/internal/ui/mounts/{path}")
        data = mount.get("data") if isinstance(mount, dict) else None
        if not isinstance(data, dict):
            return None
        prefix = str(data.get("path", ""))
        version = str((data.get("options") or {}).get("version") or "1")
        if not prefix or not path.startswith(prefix) or data.get("type") not in ("kv", None):
            return None
        return prefix, version

    async def read(self, path: str) -> dict[str, Any] | None:
        """The data of KV secret ``path`` (latest version); None: not a KV secret."""
        mount = await self._mount(path)
        if mount is None:
            return None
        prefix, kv = mount
        inner = path.removeprefix(prefix)
        reply = await self._call("GET", f"{prefix}data/{inner}" if kv == "2" else path)
        data = (reply or {}).get("data") or {}
        values = data.get("data") if kv == "2" else data
        return values if isinstance(values, dict) else None

    async def rewrite(self, path: str) -> int | None:
        """Write the data of KV v2 secret ``path`` again as a new version; that version (None:
        not a KV v2 secret, nothing written)."""
        mount = await self._mount(path)
        if mount is None or mount[1] != "2":
            return None
        prefix = mount[0]
        inner = path.removeprefix(prefix)
        current = await self._call("GET", f"{prefix}data/{inner}")
        read = (current or {}).get("data") or {}
        values, version = read.get("data"), (read.get("metadata") or {}).get("version")
        if not isinstance(values, dict) or not isinstance(version, int):
            raise OperatorError(f"{path}: the store's KV v2 answer has no data to write again")
        # check-and-set: a real write between this read and this write wins, and is not undone
        body = {"options": {"cas": version}, "data": values}
        written = await self._call("POST", f"{prefix}data/{inner}", body)
        version = ((written or {}).get("data") or {}).get("version")
        if not isinstance(version, int):
            raise OperatorError(f"{path}: the store's write answer has no version")
        return version

    async def revoke(self, token: str) -> None:
        """Revoke ``token`` (and its children) in the store."""
        await self._call("POST", "auth/token/revoke", {"token": token})
