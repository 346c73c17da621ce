"""Store paths at the HTTP boundary: nothing that would change the store request (a query, a
fragment, an escape) gets past it, and the store is never asked about a path no rule allows,
not even which mount holds it. Counted in OpenBao's own audit log."""

from __future__ import annotations

import pytest

from sidecar.core.paths import InvalidPath, check_kv_path, check_path, kv_candidates
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, SidecarFactory, raw_get


def _store_requests(openbao: DevOpenBao) -> list[str]:
    """Every request the store received, except the sidecar's own token upkeep."""
    return [
        record["request"]["path"]
        for record in openbao.audit_records()
        if record.get("type") == "request"
        and not record.get("request", {}).get("path", "").startswith("auth/")
    ]


INJECTIONS = [
    "/secrets/secret/{uid}/other/topsecret%3F/public",
    "/secrets/secret/{uid}/other/topsecret%23/public",
    "/secrets/kv1/{uid}/other/topsecret%3F/public",
    "/v1/secret/data/{uid}/other/topsecret%3F/public",
    "/v1/secret/data/{uid}/other/topsecret%23/public",
    "/v1/kv1/{uid}/other/topsecret%3F/public",
    "/secrets/kv1/{uid}/legacy/%3Flist=true/public",
    "/v1/secret/metadata/{uid}/%3Flist=true/public",
    "/secrets/secret/{uid}/db%3Fversion=1/public",
    "/secrets/secret/{uid}/%252e%252e%252fother/public",
    "/secrets/secret/{uid}/%252e%252e/public",
    "/secrets/secret/{uid}/a%2520b/public",
    "/secrets/secret/{uid}/a%20b/public",
    "/secrets/secret/{uid}/caf%C3%A9/public",
    "/secrets/secret/{uid}/%FF%FE/public",
    "/v1/sys/internal/ui/mounts/secret/{uid}/x%3Fy/public",
]


@pytest.mark.parametrize("target", INJECTIONS)
async def test_encoded_query_fragment_and_escapes_never_reach_the_store(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, target: str
):
    openbao.kv_put(f"{uid}/other/topsecret", {"password": "pw-topsecret"})
    openbao.kv1_put(f"{uid}/other/topsecret", {"password": "pw-topsecret-v1"})
    client, _ = await make_sidecar(
        rules=[
            {"match": "secret/**/public", "class": "standard"},
            {"match": "kv1/**/public", "class": "standard"},
        ]
    )
    before = _store_requests(openbao)
    response = await raw_get(client, target.format(uid=uid))
    assert response.status == 400, await response.text()
    body = await response.read()
    assert b"pw-topsecret" not in body
    assert b"bad_request" in body
    assert _store_requests(openbao) == before  # refused before the store


async def test_the_reason_names_the_allowed_characters(make_sidecar: SidecarFactory, uid: str):
    client, _ = await make_sidecar()
    response = await raw_get(client, f"/secrets/secret/{uid}/a%3Fb")
    reason = (await response.json())["reason"]
    assert "'?'" in reason and "letters, digits" in reason


@pytest.mark.parametrize(
    "target",
    [
        "/v1/sys/internal/ui/mounts/auth/token",
        "/v1/sys/internal/ui/mounts/sys",
        "/v1/sys/internal/ui/mounts/sys/mounts",
        "/v1/sys/internal/ui/mounts/cubbyhole/x",
        "/v1/sys/internal/ui/mounts/identity/entity",
        "/v1/sys/internal/ui/mounts/secret/{uid}/outside",
        "/v1/sys/internal/ui/mounts/nomount/x",
        "/v1/secret/data/{uid}/outside",
        "/v1/secret/metadata/{uid}/outside",
        "/v1/foo/bar/baz",
        "/v1/kv1/{uid}/outside",
        "/secrets/secret/{uid}/outside",
        "/secrets/sys/mounts",
        "/secrets/cubbyhole/x",
        "/v1/cubbyhole/x",
        "/v1/sys/mounts",
    ],
)
async def test_the_store_is_not_asked_about_paths_no_rule_allows(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, target: str
):
    client, _ = await make_sidecar(rules=[{"match": f"secret/{uid}/app/**", "class": "standard"}])
    before = _store_requests(openbao)
    response = await client.get(target.format(uid=uid), headers=AUTH)
    assert response.status in (400, 403, 405), (response.status, await response.text())
    assert _store_requests(openbao) == before


async def test_reserved_backends_are_refused_even_when_a_rule_matches_everything(
    make_sidecar: SidecarFactory, openbao: DevOpenBao
):
    client, _ = await make_sidecar(rules=[{"match": "**", "class": "standard"}])
    before = _store_requests(openbao)
    for target in (
        "/v1/sys/internal/ui/mounts/auth/token",
        "/v1/sys/internal/ui/mounts/sys",
        "/v1/sys/internal/ui/mounts/cubbyhole/x",
        "/secrets/sys/health",
        "/secrets/auth/token/lookup-self",
        "/secrets/cubbyhole/x",
        "/secrets/identity/entity/name/x",
    ):
        response = await client.get(target, headers=AUTH)
        assert response.status in (400, 403), (target, response.status)
    assert _store_requests(openbao) == before


async def test_allowed_paths_still_work_through_both_apis_and_the_cli_preflight(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
):
    openbao.kv_put(f"{uid}/app/db", {"password": "pw-allowed"})
    openbao.kv1_put(f"{uid}/app/legacy", {"password": "pw-allowed-v1"})
    client, _ = await make_sidecar(
        rules=[
            {"match": f"secret/{uid}/app/**", "class": "standard"},
            {"match": f"kv1/{uid}/app/**", "class": "standard"},
        ]
    )
    for target in (
        f"/secrets/secret/{uid}/app/db",
        f"/secrets/secret/{uid}/app/d%62",  # an escape in the variable part: the same path
        f"/v1/secret/data/{uid}/app/db",
        f"/v1/secret/metadata/{uid}/app/db",
        f"/v1/sys/internal/ui/mounts/secret/{uid}/app/db",
        f"/secrets/kv1/{uid}/app/legacy",
        f"/v1/kv1/{uid}/app/legacy",
        "/secrets/secret/" + uid + "/app/db?version=1",
    ):
        response = await raw_get(client, target)
        assert response.status == 200, (target, await response.text())


# -- unit: the checks themselves -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["secret/app/db", "kv/team-a/svc_1/key.pem", "secret/a@b+c=d,e:f~g", "a" * 500],
)
def test_safe_paths_pass(path: str):
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("path", "part"),
    [
        ("", "empty"),
        ("secret/a?b", "'?'"),
        ("secret/a#b", "'#'"),
        ("secret/a%2e", "'%'"),
        ("secret/a b", "a space"),
        ("secret/café", "U+00E9"),
        ("secret/a\udcff", "U+DCFF"),
        ("secret/a*b", "'*'"),
        ("secret/a;b", "';'"),
        ("secret/../b", "'..'"),
        ("secret//b", "'//'"),
        ("secret/b/", "trailing"),
        ("secret/a\x00", "control"),
        ("secret\\a", "backslash"),
        ("x" * 513, "512"),
    ],
)
def test_unsafe_paths_are_refused_with_a_reason(path: str, part: str):
    with pytest.raises(InvalidPath, match=None) as info:
        check_path(path)
    assert part in str(info.value)


@pytest.mark.parametrize("path", ["sys/mounts", "auth/token/x", "identity/e", "cubbyhole/x"])
def test_reserved_backends_are_not_kv(path: str):
    check_path(path)
    with pytest.raises(InvalidPath, match="KV secrets only"):
        check_kv_path(path)


def test_kv_candidates_name_every_secret_an_api_path_can_mean():
    assert kv_candidates("secret/data/app/db") == ["secret/data/app/db", "secret/app/db"]
    assert kv_candidates("team/kv/metadata/x") == ["team/kv/metadata/x", "team/kv/x"]
    assert kv_candidates("kv1/app/db") == ["kv1/app/db"]
    # "data" as the last segment is a key name, never the KV v2 action
    assert kv_candidates("secret/data") == ["secret/data"]
    assert kv_candidates("data/data/x") == ["data/data/x", "data/x"]
