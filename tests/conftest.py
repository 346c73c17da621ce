"""Shared fixtures: a real OpenBao dev server for the session, and sidecars in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yarl
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from prometheus_client import CollectorRegistry

from sidecar.app import Sidecar, create_app
from sidecar.config import settings_from
from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from sidecar.server import Server, SidecarRunner
from tests.loopserver import dechunk

CALLER_TOKEN = "test-caller-token-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-fedcba9876543210"

CLASSES: dict[str, dict[str, Any]] = {
    "standard": {
        "business_function": "test application credentials",
        "owner": "team-test",
        "refresh_interval": "60s",
        "max_cache_age": "15m",
        "on_outage": "serve_stale",
        "rotation_method": "new KV v2 version",
        "revocation_steps": "delete in the store, purge the sidecar",
    },
    "payments": {
        "business_function": "payment signing",
        "owner": "team-payments",
        "refresh_interval": "60s",
        "max_cache_age": "5m",
        "on_outage": "fail_closed",
        "rotation_method": "new key version with overlap",
        "revocation_steps": "destroy the version, page the owner",
    },
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell (VAULT_ADDR, SIDECAR_*...) must not leak into tests."""
    for name in list(os.environ):
        if name.startswith(("SIDECAR_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevOpenBao]:
    store = DevOpenBao(tmp_path_factory.mktemp("openbao")).start()
    store.enable_kv("kv1", 1)
    yield store
    store.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory, openbao: DevOpenBao) -> Iterator[Any]:
    """A throwaway PostgreSQL (Debian's, installed by `make test-deps`) and OpenBao's database
    secrets engine at ``database/`` configured against it, for leased-credential tests."""
    from sidecar.dev.postgres import ThrowawayPostgres, configure_database_engine, reachable

    folder = tmp_path_factory.mktemp("postgres")
    reachable(folder)  # as root the server runs as postgres: it must reach its folder
    database = ThrowawayPostgres(folder / "pg").start()
    configure_database_engine(openbao, database)
    yield database
    database.stop()


def database_role(openbao: DevOpenBao, name: str, *, ttl: str = "6s", max_ttl: str = "20s") -> str:
    """A database role ``name`` whose credentials live ``ttl`` (renewable up to ``max_ttl``);
    the path the sidecar reads for them. Its users are named ``v-token-<name>-...``."""
    from sidecar.dev.postgres import database_role as make_role

    return make_role(openbao, name, ttl=ttl, max_ttl=max_ttl)


@pytest.fixture
def uid() -> str:
    """A fresh prefix, so tests sharing one store never see each other's secrets."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def store_token_file(tmp_path: Path, openbao: DevOpenBao) -> Path:
    path = tmp_path / "store-token"
    path.write_text(openbao.root_token)
    path.chmod(0o600)
    return path


def config(
    address: str,
    token_file: Path,
    tmp_path: Path,
    *,
    classes: dict[str, dict[str, Any]] | None = None,
    rules: list[dict[str, str]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:1",
        "caller_token_file": str(tmp_path / "caller-token"),
        "admin_token_file": str(tmp_path / "admin-token"),
        "backend": {
            "address": address,
            "auth": {"method": "token", "token_file": str(token_file)},
            "timeout": "2s",
        },
        "classes": copy.deepcopy(classes or CLASSES),
        "secrets": rules
        or [
            {"match": "secret/*/payments/**", "class": "payments"},
            {"match": "**", "class": "standard"},
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    return doc


class SidecarTestServer(TestServer):
    """The test server runs the daemon's own runner (hits answered before routing)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return SidecarRunner(self.app, **kwargs)


SidecarFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], Sidecar]]]


@pytest.fixture
def clock() -> ManualClock:
    """The sidecar's clock in this test: real time until the test ``advance``s it."""
    return ManualClock()


@pytest.fixture
async def make_sidecar(
    aiohttp_client: Any,
    openbao: DevOpenBao,
    store_token_file: Path,
    tmp_path: Path,
    clock: ManualClock,
) -> SidecarFactory:
    """Build a real sidecar (real store client) in front of ``address`` (default: the store),
    on the test's ``clock``."""

    async def factory(
        address: str | None = None, *, document: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[TestClient[Any, Any], Sidecar]:
        doc = document or config(address or openbao.addr, store_token_file, tmp_path, **overrides)
        settings = settings_from(doc)
        sidecar = create_app(
            settings,
            registry=CollectorRegistry(),
            caller_token=CALLER_TOKEN,
            admin_token=ADMIN_TOKEN,
            clock=clock,
        )
        client = await aiohttp_client(SidecarTestServer(sidecar.api))
        return client, sidecar

    return factory


AUTH = {"X-Sidecar-Token": CALLER_TOKEN}
ADMIN = {"X-Sidecar-Token": ADMIN_TOKEN}


async def raw_get(
    client: TestClient[Any, Any], raw_path: str, headers: dict[str, str] | None = None
) -> ClientResponse:
    """GET exactly this path: no client-side normalisation of '..' or '%2e'."""
    url = yarl.URL(f"http://{client.host}:{client.port}{raw_path}", encoded=True)
    return await client.session.get(url, headers=AUTH if headers is None else headers)


def metric(sidecar: Sidecar, name: str, labels: dict[str, str] | None = None) -> float:
    value = sidecar.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def raw_request(
    client: TestClient[Any, Any],
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    head_only: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte on a fresh connection (any request target: absolute-
    form, odd escapes), answered as (status, headers, body). ``head_only``: stop after the
    status line and headers (streams that never end)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {client.host}:{client.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        payload = b"" if head_only else await asyncio.wait_for(reader.read(), 10)
        if parsed.get("transfer-encoding") == "chunked":
            payload = dechunk(payload)
        return int(status_line.split()[1]), parsed, payload
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def running(document: dict[str, Any]) -> AsyncIterator[tuple[Server, str, str]]:
    """The daemon's own server (both listeners on real sockets, connection guards, access
    log) for ``document``; yields it with the two base URLs."""
    sidecar = create_app(
        settings_from(document),
        registry=CollectorRegistry(),
        caller_token=CALLER_TOKEN,
        admin_token=ADMIN_TOKEN,
    )
    server = Server(sidecar)
    await server.startup()
    try:
        api, ops = server.addresses["api"], server.addresses["ops"]
        yield server, f"http://{api[0]}:{api[1]}", f"http://{ops[0]}:{ops[1]}"
    finally:
        await server.shutdown()


def docs_image(name: str) -> str | None:
    """Where a live test keeps a picture for the docs (`make docs-images` sets DOCS_IMAGES), or
    None: an ordinary run keeps nothing."""
    folder = os.environ.get("DOCS_IMAGES")
    return str(Path(folder) / name) if folder else None


def read_policy(openbao: DevOpenBao, uid: str) -> None:
    """A store policy named ``uid`` that reads KV v2 secrets under ``secret/<uid>/``."""
    openbao.request(
        "POST",
        f"sys/policies/acl/{uid}",
        {"policy": f'path "secret/data/{uid}/*" {{ capabilities = ["read"] }}'},
    )


def approle_auth(openbao: DevOpenBao, uid: str, tmp_path: Path, **role: Any) -> dict[str, Any]:
    """An AppRole mount ``ar<uid>`` with a role reading ``secret/<uid>/``; the sidecar's
    ``backend.auth`` for it (the secret_id in a file under ``tmp_path``)."""
    mount = f"ar{uid}"
    openbao.request("POST", f"sys/auth/{mount}", {"type": "approle"})
    read_policy(openbao, uid)
    openbao.request(
        "POST", f"auth/{mount}/role/app", {"token_policies": [uid], "token_ttl": "1h", **role}
    )
    role_id = openbao.request("GET", f"auth/{mount}/role/app/role-id")["data"]["role_id"]
    secret_id = openbao.request("POST", f"auth/{mount}/role/app/secret-id")["data"]["secret_id"]
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(secret_id)
    return {
        "method": "approle",
        "role_id": role_id,
        "secret_id_file": str(secret_id_file),
        "mount": mount,
    }
