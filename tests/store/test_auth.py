"""The sidecar's own identity in the store: AppRole, Kubernetes and token auth, renewal and
re-login, against a real OpenBao."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, SidecarFactory, approle_auth, config, metric, read_policy


async def test_approle_login_and_relogin_after_revocation(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/a", {"v": "approle-a"})
    openbao.kv_put(f"{uid}/b", {"v": "approle-b"})
    auth = approle_auth(openbao, uid, tmp_path)
    mount = auth["mount"]
    client, sidecar = await make_sidecar(backend={"auth": auth})

    assert (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status == 200
    assert openbao.count_requests(f"auth/{mount}/login", "update") == 1

    # Revoke every token this auth mount issued: the sidecar's token dies under it.
    openbao.request("PUT", f"sys/leases/revoke-prefix/auth/{mount}/login")
    response = await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)
    assert response.status == 200, await response.text()
    assert (await response.json())["data"] == {"v": "approle-b"}
    assert openbao.count_requests(f"auth/{mount}/login", "update") == 2
    assert (
        metric(sidecar, "sidecar_auth_events_total", {"event": "login", "result": "success"}) == 2
    )


async def test_approle_token_is_renewed_before_expiry(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/late", {"v": "renewed"})
    auth = approle_auth(openbao, uid, tmp_path, token_ttl="2s", token_max_ttl="1h")
    client, sidecar = await make_sidecar(backend={"auth": auth})
    await client.get(f"/secrets/secret/{uid}/warmup", headers=AUTH)  # logs in

    await asyncio.sleep(2.6)  # past the first TTL: only renewal keeps the token alive
    response = await client.get(f"/secrets/secret/{uid}/late", headers=AUTH)
    assert response.status == 200
    assert openbao.count_requests("auth/token/renew-self", "update") >= 1
    assert openbao.count_requests(f"auth/{auth['mount']}/login", "update") == 1
    assert metric(sidecar, "sidecar_auth_events_total", {"event": "renew", "result": "success"})


async def test_bad_approle_credentials_are_unavailable_auth_failed(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    auth = approle_auth(openbao, uid, tmp_path)
    Path(auth["secret_id_file"]).write_text("not-the-secret-id")
    client, sidecar = await make_sidecar(backend={"auth": auth})
    response = await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)
    assert response.status == 503
    assert (await response.json())["reason"] == "auth_failed"
    assert metric(sidecar, "sidecar_auth_events_total", {"event": "login", "result": "failure"})


async def test_failing_logins_back_off_and_reads_are_refused_without_asking(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """A wrong secret_id: reads get 503 auth_failed at once, and logins follow the backoff,
    not the read rate (one misconfigured fleet must not hammer the auth endpoint). /readyz
    says why; once the credential is fixed, the next attempt logs in."""
    openbao.kv_put(f"{uid}/a", {"v": "approle-a"})
    auth = approle_auth(openbao, uid, tmp_path)
    # OpenBao locks a role out after a few failed logins (403 for 15 min); off here, so that
    # fixing the credential is what ends the failure
    openbao.request(
        "POST",
        f"sys/auth/{auth['mount']}/tune",
        {"user_lockout_config": {"lockout_disable": True}},
    )
    good = Path(auth["secret_id_file"]).read_text()
    Path(auth["secret_id_file"]).write_text("not-the-secret-id")
    client, sidecar = await make_sidecar(
        backend={"auth": auth, "backoff": {"base": "200ms", "cap": "1s"}}
    )
    statuses = []
    for _ in range(40):  # an app reading 20 times a second for 2 s
        response = await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)
        statuses.append((response.status, (await response.json())["reason"]))
        await asyncio.sleep(0.05)
    assert set(statuses) == {(503, "auth_failed")}
    logins = openbao.count_requests(f"auth/{auth['mount']}/login", "update")
    assert 1 <= logins <= len(statuses) // 2, logins  # backoff-paced; without: a login per read
    ready = sidecar.readiness()
    assert ready["store_authenticated"] is False
    assert "auth_failed" in ready["store_auth_failure"]

    Path(auth["secret_id_file"]).write_text(good)
    async with asyncio.timeout(10):
        while (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status != 200:
            await asyncio.sleep(0.1)
    assert "store_auth_failure" not in sidecar.readiness()


async def test_token_file_is_read_again_when_the_token_dies(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/a", {"v": "token-a"})
    openbao.kv_put(f"{uid}/b", {"v": "token-b"})
    openbao.kv_put(f"{uid}/c", {"v": "token-c"})
    read_policy(openbao, uid)

    def new_token() -> str:
        created = openbao.request("POST", "auth/token/create", {"policies": [uid], "ttl": "1h"})
        return str(created["auth"]["client_token"])

    token_file = tmp_path / "rotating-token"
    first = new_token()
    token_file.write_text(first)
    document = config(
        openbao.addr, token_file, tmp_path, backend={"backoff": {"base": "50ms", "cap": "5s"}}
    )
    client, _ = await make_sidecar(document=document)
    assert (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status == 200

    # Something outside (an init container, an operator) replaced the token file.
    openbao.request("POST", "auth/token/revoke", {"token": first})
    second = new_token()
    token_file.write_text(second)
    assert (await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)).status == 200

    # Revoked and not replaced: unavailable (auth_failed), not "forbidden".
    openbao.request("POST", "auth/token/revoke", {"token": second})
    response = await client.get(f"/secrets/secret/{uid}/c", headers=AUTH)
    assert response.status == 503
    body = await response.json()
    assert body["reason"] == "auth_failed"
    assert first not in json.dumps(body) and second not in json.dumps(body)

    # The file still holds the dead token: reads keep failing, and what reaches the store
    # follows the backoff, not the read rate (no doomed read + lookup-self per read).
    asked = openbao.count_requests("auth/token/lookup-self")
    reads = 0
    for i in range(40):
        reads += 1
        bad = await client.get(f"/secrets/secret/{uid}/d{i}", headers=AUTH)
        assert (bad.status, (await bad.json())["reason"]) == (503, "auth_failed")
        await asyncio.sleep(0.05)
    # (with a 50 ms base, a backoff that never grew would ask about every 0.1 s: 20 in 2 s)
    assert openbao.count_requests("auth/token/lookup-self") - asked <= reads // 4


# -- Kubernetes auth: the real OpenBao kubernetes method, with a stand-in TokenReview API ----


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _self_signed_ca() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-kube-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _service_account_jwt(namespace: str, name: str, uid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
    claims = {
        "iss": "kubernetes/serviceaccount",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


async def test_kubernetes_auth_logs_in_with_the_service_account_jwt(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    aiohttp_server: Any,
):
    namespace, account, account_uid = "shop", "checkout", "0b7c6e7e-1111-4c1e-9f00-" + uid[:12]
    jwt = _service_account_jwt(namespace, account, account_uid)
    reviews: list[str] = []

    async def token_review(request: web.Request) -> web.Response:
        # What the Kubernetes API server answers for a valid service-account token.
        body = await request.json()
        reviews.append(body["spec"]["token"])
        return web.json_response(
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "status": {
                    "authenticated": body["spec"]["token"] == jwt,
                    "user": {
                        "username": f"system:serviceaccount:{namespace}:{account}",
                        "uid": account_uid,
                        "groups": ["system:serviceaccounts"],
                    },
                },
            },
            status=201,
        )

    kube = web.Application()
    kube.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", token_review)
    kube_server = await aiohttp_server(kube)

    mount = f"k8s{uid}"
    openbao.request("POST", f"sys/auth/{mount}", {"type": "kubernetes"})
    openbao.request(
        "POST",
        f"auth/{mount}/config",
        {
            "kubernetes_host": f"http://127.0.0.1:{kube_server.port}",
            "kubernetes_ca_cert": _self_signed_ca(),  # required; unused over plain http
            "disable_local_ca_jwt": True,
        },
    )
    read_policy(openbao, uid)
    openbao.request(
        "POST",
        f"auth/{mount}/role/app",
        {
            "bound_service_account_names": [account],
            "bound_service_account_namespaces": [namespace],
            "token_policies": [uid],
            "token_ttl": "1h",
        },
    )
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(jwt)
    openbao.kv_put(f"{uid}/db", {"password": "pw-kubernetes"})

    client, _ = await make_sidecar(
        backend={
            "auth": {
                "method": "kubernetes",
                "role": "app",
                "jwt_file": str(jwt_file),
                "mount": mount,
            }
        }
    )
    response = await client.get(f"/secrets/secret/{uid}/db", headers=AUTH)
    assert response.status == 200, await response.text()
    assert (await response.json())["data"] == {"password": "pw-kubernetes"}
    assert reviews == [jwt]
    assert openbao.count_requests(f"auth/{mount}/login", "update") == 1


async def test_a_replaced_token_files_expiry_and_renewal_come_from_the_new_token(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """After the dead token is replaced from the file, the sidecar looks the new one up: the
    expiry it reports (and renews by) is the new token's, not the dead one's."""
    openbao.kv_put(f"{uid}/a", {"v": "expiry-a"})
    openbao.kv_put(f"{uid}/b", {"v": "expiry-b"})
    read_policy(openbao, uid)

    def new_token(ttl: str) -> str:
        created = openbao.request("POST", "auth/token/create", {"policies": [uid], "ttl": ttl})
        return str(created["auth"]["client_token"])

    token_file = tmp_path / "rotating-token"
    first = new_token("1h")
    token_file.write_text(first)
    client, sidecar = await make_sidecar(document=config(openbao.addr, token_file, tmp_path))
    assert (await client.get(f"/secrets/secret/{uid}/a", headers=AUTH)).status == 200
    async with asyncio.timeout(5):
        while metric(sidecar, "sidecar_token_expiry_timestamp_seconds") == 0:
            await asyncio.sleep(0.05)
    assert (
        abs(metric(sidecar, "sidecar_token_expiry_timestamp_seconds") - (time.time() + 3600)) < 60
    )

    openbao.request("POST", "auth/token/revoke", {"token": first})
    token_file.write_text(new_token("3h"))
    assert (await client.get(f"/secrets/secret/{uid}/b", headers=AUTH)).status == 200
    expiry = metric(sidecar, "sidecar_token_expiry_timestamp_seconds")
    assert abs(expiry - (time.time() + 3 * 3600)) < 60
