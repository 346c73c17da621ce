"""``make drill``: the whole game day on this machine. Every scenario of ``sidecar drill``
against a local OpenBao dev server (the sidecar logs in with AppRole, so that its token can be
revoked and replaced; the drill holds the root token as its operator token and counts store
requests in the server's audit log), then a leader killed in a real 3-node raft cluster. The
report and its charts go to ``docs/drill/`` (or the folder given)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import load_settings
from sidecar.dev.openbao import DevOpenBao
from sidecar.dev.raft import RaftCluster
from sidecar.drill.drill import SCENARIOS, Drill, Phases, Scenario
from sidecar.drill.scenarios import render_table, write_report
from sidecar.drill.verdict import HEALTHY, Outcome, Read

CLASSES = {
    "standard": {
        "business_function": "Application database login",
        "owner": "team-app",
        "refresh_interval": "5s",
        "max_cache_age": "30s",
        "on_outage": "serve_stale",
        "rotation_method": "new KV v2 version; readers move within refresh_interval",
        "revocation_steps": "delete the version; purge the sidecars",
        "overlap": "20s",
    },
    "payments": {
        "business_function": "Payment request signing",
        "owner": "team-payments",
        "refresh_interval": "2s",
        "max_cache_age": "1m",
        "on_outage": "fail_closed",
        "rotation_method": "new key version with overlap; verifiers accept both kids",
        "revocation_steps": "destroy the version; page team-payments",
        "overlap": "10s",
    },
    "legacy": {
        "business_function": "Legacy API key on a KV v1 mount",
        "owner": "team-legacy",
        "refresh_interval": "10s",
        "max_cache_age": "10m",
        "on_outage": "serve_stale",
        "rotation_method": "overwrite in place (KV v1 has no versions)",
        "revocation_steps": "rotate at the vendor, then overwrite",
    },
}
SECRETS = [
    {"match": "secret/app/db", "class": "standard"},
    {"match": "secret/payments/signing-key", "class": "payments"},
    {"match": "kv1/legacy/api", "class": "legacy"},
]
POLICY = """
path "secret/data/*" { capabilities = ["read"] }
path "secret/metadata/*" { capabilities = ["read"] }
path "kv1/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/*" { capabilities = ["read"] }
"""


def _progress(line: str) -> None:
    print(f"drill: {line}", file=sys.stderr, flush=True)


def _document(folder: Path, addresses: list[str], auth: dict[str, Any]) -> dict[str, Any]:
    key = folder / "snapshot.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return {
        "backend": {
            "addresses": addresses,
            "timeout": "1s",
            "backoff": {"base": "200ms", "cap": "2s"},
            "auth": auth,
        },
        "snapshot": {"key_file": str(key), "interval": "2s"},
        "startup_jitter": "1s",  # used by the restart storm only
        "revocation_list": "secret/sidecar/revocations",
        "revocation_poll_interval": "2s",
        "classes": CLASSES,
        "secrets": SECRETS,
    }


def _approle(store: DevOpenBao, folder: Path) -> dict[str, Any]:
    store.request("POST", "sys/policies/acl/drill", {"policy": POLICY})
    store.request("POST", "sys/auth/approle", {"type": "approle"})
    store.request("POST", "auth/approle/role/sidecar", {"token_policies": ["drill"]})
    role_id = store.request("GET", "auth/approle/role/sidecar/role-id")["data"]["role_id"]
    secret_id = store.request("POST", "auth/approle/role/sidecar/secret-id")["data"]["secret_id"]
    secret_file = folder / "secret-id"
    secret_file.write_text(secret_id)
    secret_file.chmod(0o600)
    return {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_file)}


def _seed(put: Any, store: DevOpenBao | None = None) -> None:
    put("app/db", {"username": "app", "password": "gameday-password-leaked"})
    put("app/db", {"username": "app", "password": "gameday-password"})
    # version 1 leaked and was rotated out: no scenario may ever serve it again
    put("sidecar/revocations", {"revoked": [{"path": "secret/app/db", "version": 1}]})
    put("payments/signing-key", {"key": "gameday-signing-key"})
    if store is not None:
        store.enable_kv("kv1", 1)
        store.kv1_put("legacy/api", {"api_key": "gameday-legacy-key"})


def _run(
    document: dict[str, Any],
    folder: Path,
    scenarios: list[Scenario],
    phases: Phases,
    **access: Any,
) -> tuple[Drill, list[Outcome]]:
    config = folder / "service.yaml"
    config.write_text(yaml.safe_dump(document))
    drill = Drill(load_settings(config), document, phases, _progress, **access)
    return drill, asyncio.run(drill.run(scenarios))


def raft_leader_killed(folder: Path, phases: Phases) -> tuple[Drill, list[Outcome]]:
    """A 3-node raft cluster, the sidecar listing all three, the leader killed under the
    readers: standbys keep answering reads, so no read may fail."""
    _progress("starting a 3-node OpenBao raft cluster")
    folder.mkdir(parents=True, exist_ok=True)
    with RaftCluster(folder) as cluster:
        _seed(cluster.kv_put)

        async def kill_leader() -> None:
            leader = await asyncio.to_thread(cluster.leader_index)
            _progress(f"killing the raft leader, node {leader}")
            await asyncio.to_thread(cluster.kill, leader)

        token = folder / "root-token"
        token.write_text(cluster.root_token)
        token.chmod(0o600)
        document = _document(folder, cluster.addrs, {"method": "token", "token_file": str(token)})
        document["secrets"] = [s for s in SECRETS if not s["match"].startswith("kv1/")]
        leader = Scenario("raft_leader_killed", kind=HEALTHY, action=kill_leader)
        return _run(
            document,
            folder,
            [leader],
            phases,
            operator_token=cluster.root_token,  # to read the revocation list
            audit_logs=[n.audit_log for n in cluster.nodes],
        )


def gameday(out: Path, phases: Phases) -> int:
    """Run the game day; write ``out/report.md`` and its charts; 0 when every verdict holds."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    timelines: dict[str, tuple[list[Read], float, float]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-gameday-") as scratch:
        folder = Path(scratch)
        _progress("starting an OpenBao dev server")
        with DevOpenBao(folder / "bao") as store:
            _seed(store.kv_put, store)
            document = _document(folder, [store.addr], _approle(store, folder))
            drill, done = _run(
                document,
                folder,
                list(SCENARIOS),
                phases,
                operator_token=store.root_token,
                audit_logs=[store.audit_log],
            )
            outcomes += done
            timelines.update(drill.timelines)
            skipped.update(drill.skipped)

        drill, done = raft_leader_killed(folder / "raft", phases)
        outcomes += done
        timelines.update(drill.timelines)
    print(render_table(outcomes, skipped))
    report = out / "report.md"
    for note in write_report(report, outcomes, timelines, "make drill", skipped):
        _progress(note)
    _progress(f"report: {report}")
    return 0 if all(o.holds for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m sidecar.dev.gameday [OUT]``."""
    args = sys.argv[1:] if argv is None else argv
    return gameday(Path(args[0] if args else "docs/drill"), Phases())


if __name__ == "__main__":
    sys.exit(main())
