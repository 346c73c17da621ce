"""``make run``: a local OpenBao dev server with demo secrets, and the sidecar in front of it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from sidecar.dev.openbao import DevOpenBao, DevStoreError, _is_free, bao_binary, free_port
from sidecar.dev.postgres import (
    ThrowawayPostgres,
    configure_database_engine,
    database_role,
    postgres_bin,
    reachable,
)
from sidecar.ops import logs

SIGNING_KEYS = ("demo-signing-key-previous", "demo-signing-key")  # each rotation: previous, current
DEMO_OVERLAP = "2m"

DEMO_CLASSES = {
    "standard": {
        "business_function": "Demo application database credentials",
        "owner": "team-demo",
        "refresh_interval": "30s",
        "max_cache_age": "15m",
        "on_outage": "serve_stale",
        "rotation_method": "write a new KV v2 version; apps re-read within refresh_interval",
        "revocation_steps": "delete the secret in the store; purge the sidecar cache",
    },
    "payments": {
        "business_function": "Payment request signing",
        "owner": "team-payments",
        "refresh_interval": "10s",
        "max_cache_age": "1m",
        "on_outage": "fail_closed",
        "rotation_method": "new key version with overlap; verifiers accept both kids",
        "revocation_steps": "destroy the version in the store; page team-payments",
        "overlap": DEMO_OVERLAP,
    },
    "legacy": {
        "business_function": "Legacy API key on a KV v1 mount",
        "owner": "team-legacy",
        "refresh_interval": "1m",
        "max_cache_age": "1h",
        "on_outage": "serve_stale",
        "rotation_method": "overwrite in place (KV v1 has no versions)",
        "revocation_steps": "overwrite with a new key at the vendor, then in the store",
    },
}


def rotate_demo(directory: Path) -> int:
    """``sidecar demo rotate``: write the demo signing key again, as a previous then a current
    version, so ``?version=previous`` and ``/verify`` of the previous key work for another
    overlap (2 minutes) from now, with the same values as the README shows."""
    try:
        config = yaml.safe_load((directory / "sidecar.yaml").read_text())
        token = (directory / "store-token").read_text().strip()
    except OSError as exc:
        print(
            f"demo: no demo in {directory} ({exc.strerror}); start one with `make run`",
            file=sys.stderr,
        )
        return 2
    address = str(config["backend"]["address"])
    if not address.startswith("http://127.0.0.1:"):
        print(f"demo: {address} is not the demo's local OpenBao", file=sys.stderr)
        return 2
    for value in SIGNING_KEYS:
        request = urllib.request.Request(  # noqa: S310 - checked above: the local dev server
            f"{address}/v1/secret/data/payments/signing-key",
            data=json.dumps({"data": {"key": value, "algorithm": "HS256"}}).encode(),
            headers={"X-Vault-Token": token, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                version = json.loads(response.read())["data"]["version"]
        except OSError as exc:
            print(
                f"demo: the demo's OpenBao at {address} did not answer ({exc}); "
                "is `make run` still running?",
                file=sys.stderr,
            )
            return 1
    # Drop what the sidecar holds for the key, so the next read sees the new version at once
    # instead of within the class's refresh interval.
    admin = Path(config["admin_token_file"]).read_text().strip()
    purge = urllib.request.Request(
        f"http://{config['listen']}/admin/purge",
        data=json.dumps({"path": "secret/payments/signing-key"}).encode(),
        headers={"X-Sidecar-Token": admin, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(purge, timeout=10):  # noqa: S310
            pass
    except OSError as exc:
        print(f"demo: the sidecar did not take the purge ({exc})", file=sys.stderr)
        return 1
    print(
        f"secret/payments/signing-key is at version {version}; for {DEMO_OVERLAP} from now "
        f"?version=previous serves version {version - 1} ({SIGNING_KEYS[0]}) and /verify calls "
        "that value previous; after that, retired"
    )
    return 0


DATABASE_CLASS = {
    "database": {
        "business_function": "Application login to the demo PostgreSQL (leased, per pod)",
        "owner": "team-demo",
        "refresh_interval": "1m",  # does not apply to a lease: renewed at 75-90 % of it
        "max_cache_age": "1h",
        "on_outage": "serve_stale",  # within the lease only: never a dead credential
        "rotation_method": "the sidecar renews the lease, then issues the next credential",
        "revocation_steps": "POST /admin/purge the path (revokes the lease); bao lease revoke",
    }
}


def write_demo_config(
    directory: Path, store: DevOpenBao, port: int, ops_port: int, *, leased: bool = False
) -> Path:
    """Write the demo's sidecar.yaml in ``directory`` (with the store token and snapshot key
    files it names), pointing at ``store``; returns its path. ``leased``: the store issues
    database credentials at ``database/creds/app`` (class ``database``)."""
    token_file = directory / "store-token"
    token_file.write_text(store.root_token + "\n")
    token_file.chmod(0o600)
    env_file = directory / "store.env"  # `. .demo/store.env`: the bao CLI against the demo store
    env_file.write_text(f"export BAO_ADDR={store.addr} BAO_TOKEN={store.root_token}\n")
    env_file.chmod(0o600)
    key_file = directory / "snapshot.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    config = {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{ops_port}",
        "caller_token_file": str(directory / "caller-token"),
        "admin_token_file": str(directory / "admin-token"),
        "audit_log": str(directory / "audit.log"),
        "revocation_list": "secret/sidecar/revocations",
        "revocation_poll_interval": "2s",
        "log_level": "info",
        "startup_jitter": "1s",
        "snapshot": {
            "path": str(directory / "state" / "snapshot"),
            "key_file": str(key_file),
            "interval": "10s",
        },
        "backend": {
            "address": store.addr,
            "auth": {"method": "token", "token_file": str(token_file)},
            "timeout": "2s",
        },
        "classes": {**DEMO_CLASSES, **(DATABASE_CLASS if leased else {})},
        "secrets": [
            *([{"match": "database/creds/app", "class": "database"}] if leased else []),
            {"match": "secret/app/db", "class": "standard", "preload": True},
            {"match": "secret/payments/**", "class": "payments"},
            {"match": "kv1/**", "class": "legacy"},
            {"match": "**", "class": "standard"},
        ],
    }
    path = directory / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def seed(store: DevOpenBao) -> None:
    """Fill the dev store with the demo secrets: two versions each of a database login and a
    signing key, an empty revocation list, and a KV v1 mount holding a legacy API key."""
    store.kv_put("app/db", {"username": "app", "password": "demo-password-v1"})
    store.kv_put("app/db", {"username": "app", "password": "demo-password-v2"})
    for value in SIGNING_KEYS:  # the previous key, then the current one
        store.kv_put("payments/signing-key", {"key": value, "algorithm": "HS256"})
    store.kv_put("sidecar/revocations", {"revoked": []})
    store.enable_kv("kv1", 1)
    store.kv1_put("legacy/api", {"api_key": "demo-legacy-key"})


def run_demo(directory: Path, port: int, run: Callable[[Path], int]) -> int:
    """Start the store, seed it, write a config, then ``run(config)`` until Ctrl-C."""
    directory = directory.resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    if not _is_free(port):
        port = free_port()
    ops_port = 9102 if _is_free(9102) else free_port()
    logs.configure("info")
    print(f"starting a local OpenBao dev server in {directory} ...", file=sys.stderr)
    store = DevOpenBao(directory / "openbao")
    try:
        store.start()
        seed(store)
    except DevStoreError as exc:
        store.stop()
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    database, database_note = _demo_database(directory, store)
    config = write_demo_config(directory, store, port, ops_port, leased=database is not None)
    base = f"http://127.0.0.1:{port}"
    caller = f'-H "X-Sidecar-Token: $(cat {directory / "caller-token"})"'
    admin = f'-H "X-Sidecar-Token: $(cat {directory / "admin-token"})"'
    bao = f"BAO_ADDR={store.addr} BAO_TOKEN={store.root_token} {bao_binary()}"
    verify = '{"field":"key","value":"demo-signing-key-previous"}'
    print(
        f"""
OpenBao dev server: {store.addr} (root token: {store.root_token}; audit log {store.audit_log})
Sidecar config:     {config}
Caller token file:  {directory / "caller-token"} (created at start, mode 0640)
Admin token file:   {directory / "admin-token"} (mode 0600)

Try, in another terminal:
  curl -s {caller} {base}/secrets/secret/app/db
  curl -s {caller} "{base}/secrets/secret/app/db?field=password"
  curl -s {caller} "{base}/secrets/secret/app/db?version=1"
  curl -s {caller} {base}/secrets/kv1/legacy/api
  curl -s {caller} {base}/secrets/secret/payments/signing-key
  curl -s {caller} "{base}/secrets/secret/payments/signing-key?version=previous"
                  # served for {DEMO_OVERLAP} after a rotation; `sidecar demo rotate` opens it again
  {database_note.format(caller=caller, base=base)}
  curl -s {caller} {base}/secrets/secret/app/missing                 # 404
  curl -s {base}/secrets/secret/app/db                                # 401

Rotation: wait for a new version, then write one from a third terminal:
  curl -s {caller} "{base}/secrets/secret/app/db?wait=60s&newer_than=2"
  {bao} kv put secret/app/db username=app password=v3
  curl -s {caller} -d '{verify}' \\
       {base}/verify/secret/payments/signing-key
  curl -s {admin} -d '{{"path":"secret/app/db"}}' {base}/admin/purge
  {sys.executable} -m sidecar evidence --audit-log {directory / "audit.log"}

Ops:
  curl -s http://127.0.0.1:{ops_port}/metrics | grep ^sidecar_
  curl -s http://127.0.0.1:{ops_port}/readyz

Ctrl-C stops the sidecar and the OpenBao server.
""",
        file=sys.stderr,
        flush=True,
    )
    try:
        return run(config)
    finally:
        store.stop()
        if database is not None:
            database.stop()
        print("demo: sidecar and OpenBao stopped", file=sys.stderr)


def _demo_database(directory: Path, store: DevOpenBao) -> tuple[ThrowawayPostgres | None, str]:
    """A throwaway PostgreSQL behind OpenBao's database engine (role ``app``: 1 h leases,
    renewable to 24 h), when PostgreSQL is installed; the line that says how to try it, or how
    to get it."""
    if postgres_bin() is None:
        return None, (
            "(no PostgreSQL here: `apt-get install postgresql` adds a leased database "
            "credential to this demo)"
        )
    folder = directory / "postgres"
    reachable(folder)
    try:
        database = ThrowawayPostgres(folder).start()
        configure_database_engine(store, database)
        database_role(store, "app", ttl="1h", max_ttl="24h")
    except (DevStoreError, OSError) as exc:
        print(f"demo: no database credential: {exc}", file=sys.stderr)
        return None, "(no database credential: PostgreSQL did not start; see above)"
    return database, (
        "curl -s {caller} {base}/secrets/database/creds/app            "
        f"# a leased PostgreSQL login (port {database.port}), one shared lease"
    )
