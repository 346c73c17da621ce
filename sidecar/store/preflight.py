"""``sidecar check-config --check-store``: log in as the sidecar would and ask the store, rule by
rule, whether its policy lets the sidecar read what the rule covers. A literal rule is read once
(no value is kept or shown); a rule with wildcards is asked of ``sys/capabilities-self`` for a
path under its literal prefix, since no read can cover every path it matches."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.backend_settings import BackendSettings
from sidecar.store.interface import SecretForbidden, SecretNotFound, StoreError
from sidecar.store.kv import KVStore

PROBE = "sidecar-check-config-probe"  # a name under a glob's prefix, for the capability check


@dataclass(frozen=True)
class RuleCheck:
    """What the store said about one rule."""

    match: str
    ok: bool
    said: str


async def check_rules(backend: BackendSettings, matches: list[str]) -> list[RuleCheck]:
    """Each rule's ``match``, asked of the store with the sidecar's own identity."""
    store = KVStore(backend)
    try:
        return [await _check(store, match) for match in matches]
    finally:
        await store.close()


async def _check(store: KVStore, match: str) -> RuleCheck:
    literal = match.split("*", 1)[0].split("?", 1)[0]
    try:
        if literal == match:
            await store.read(match, None)
            return RuleCheck(match, True, "read allowed (value read once, not kept)")
        if not literal.strip("/"):
            return RuleCheck(match, False, "matches every path: nothing to ask the store about")
        # One path the rule matches: each wildcard stands for a probe name, so a policy
        # written like the rule (secret/data/app/db-*, secret/data/+/db) is asked fairly.
        probe = re.sub(r"\*\*|\*", PROBE, match).replace("?", "x")
        mount = await store.mount(probe)
        rest = probe[len(mount.path) :]
        api_path = mount.path + ("data/" if mount.kv_version == 2 else "") + rest
        path = literal
        reply = await store.call(
            "POST", "sys/capabilities-self", json={"paths": [api_path]}, urgent=True
        )
        said = reply.body.get(api_path, reply.body.get("capabilities"))
        capabilities = {c for c in said if isinstance(c, str)} if isinstance(said, list) else set()
        if capabilities & {"read", "root"}:
            return RuleCheck(match, True, f"read allowed under {path} (asked for {api_path})")
        return RuleCheck(
            match, False, f"the policy does not grant read under {path} (asked for {api_path})"
        )
    except SecretNotFound:
        return RuleCheck(match, True, "read allowed; no secret there yet (404)")
    except SecretForbidden:
        return RuleCheck(match, False, "the store policy refuses it (403)")
    except StoreError as exc:
        return RuleCheck(match, False, f"could not ask: {exc}")
