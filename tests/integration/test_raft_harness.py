"""The 3-node raft harness itself: start, replicate, crash the leader, fail over, restart, stop.

Slow (~10 s, real OpenBao processes): marked ``slow``, so ``make test-fast`` leaves it out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.dev.openbao import bao_binary
from sidecar.dev.raft import RaftCluster, RaftError

pytestmark = pytest.mark.slow

SECRET = {"username": "app", "password": "correct horse battery staple"}


def read_when_replicated(
    cluster: RaftCluster, node: int, path: str, version: int, timeout: float = 5.0
) -> dict[str, Any]:
    """A standby answers from its own replica, which may lag a write by ~100 ms."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = cluster.request("GET", f"secret/data/{path}", node=node)
            if reply["data"]["metadata"]["version"] >= version:
                return dict(reply["data"]["data"])
        except RaftError as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"node {node} never saw version {version} of {path}"
        time.sleep(0.02)


def bao_processes_under(root: Path) -> list[tuple[int, str]]:
    """Live processes running the bao binary with ``root`` in their command line."""
    binary, marker, found = bao_binary(), str(root), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and args[0] == binary and any(marker in a for a in args):
            found.append((int(entry.name), " ".join(args)))
    return found


def audited_reads(audit_log: Path, path: str) -> int:
    if not audit_log.exists():
        return 0
    records = [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]
    return sum(
        1
        for r in records
        if r.get("type") == "request"
        and r["request"].get("path") == path
        and r["request"].get("operation") == "read"
    )


def test_raft_cluster_fails_over_and_heals(tmp_path: Path) -> None:
    cluster = RaftCluster(tmp_path)
    try:
        cluster.start()
        assert len(cluster.addrs) == 3
        assert len(set(cluster.addrs)) == 3
        assert cluster.root_token
        leader = cluster.leader_index()
        states = [cluster.status(i) for i in range(3)]
        assert states.count("active") == 1
        assert states.count("standby") == 2

        # write via the leader, read from every node (standbys answer from their replica)
        assert cluster.kv_put("app/db", SECRET) == 1
        for node in range(3):
            assert read_when_replicated(cluster, node, "app/db", 1) == SECRET
            # the file audit device declared in each node's HCL works on every raft node, and
            # a standby audits the reads it serves itself
            assert audited_reads(cluster.nodes[node].audit_log, "secret/data/app/db") >= 1

        # crash the active node; a survivor takes over and the data is all there
        cluster.kill(leader)
        assert cluster.status(leader) == "down"
        new_leader = cluster.wait_for_leader(exclude=leader, timeout=30)
        assert new_leader != leader
        assert cluster.leader_index() == new_leader
        survivors = [i for i in range(3) if i != leader]
        for node in survivors:
            assert read_when_replicated(cluster, node, "app/db", 1) == SECRET
        rotated = {**SECRET, "password": "rotated after failover"}
        assert cluster.kv_put("app/db", rotated) == 2
        for node in survivors:
            assert read_when_replicated(cluster, node, "app/db", 2) == rotated

        # the crashed node comes back sealed; restart() unseals it and it catches up
        cluster.restart(leader)
        assert cluster.status(leader) == "standby"
        assert cluster.leader_index() == new_leader
        assert read_when_replicated(cluster, leader, "app/db", 2) == rotated
    finally:
        cluster.stop()
    cluster.stop()  # idempotent

    assert bao_processes_under(tmp_path) == []
