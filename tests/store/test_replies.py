"""The store boundary without a store: every reply shape the sidecar accepts, and the ones it
refuses as ``bad_response``. Pure (replies.py), plus how a store URL is built."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.store import replies
from sidecar.store.client import _url_path
from sidecar.store.interface import ErrorKind, SecretNotFound, StoreUnavailable


def kv2(data: Any = None, **meta: Any) -> dict[str, Any]:
    metadata = {"version": 3, "created_time": "2026-12-01T00:00:00Z", **meta}
    return {"data": {"data": {"password": "pw"} if data is None else data, "metadata": metadata}}


def test_a_well_formed_kv2_reply():
    secret = replies.kv2_secret("secret/app/db", None, kv2(custom_metadata={"owner": "a"}))
    assert (secret.version, secret.data, secret.custom_metadata) == (
        3,
        {"password": "pw"},
        {"owner": "a"},
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data": "x"},
        {"data": []},
        kv2(data="a string"),
        kv2(data=["list"]),
        kv2(data=7),
        kv2(version="3"),
        kv2(version=3.0),
        kv2(version=True),
        kv2(version=0),
        kv2(created_time=5),
        kv2(custom_metadata=["x"]),
        kv2(custom_metadata={"k": 1}),
        kv2(destroyed="yes"),
        {"data": {"data": {}, "metadata": "m"}},
    ],
)
def test_kv2_replies_of_the_wrong_shape_are_bad_response(body: dict[str, Any]):
    with pytest.raises(StoreUnavailable) as info:
        replies.kv2_secret("secret/app/db", None, body)
    assert (info.value.reason, info.value.kind) == ("bad_response", ErrorKind.BAD_RESPONSE)
    assert "pw" not in str(info.value.detail)


def test_a_deleted_or_destroyed_version_is_not_found():
    with pytest.raises(SecretNotFound, match="version 3 was deleted"):
        replies.kv2_secret("p", None, {"data": {"data": None, "metadata": {"version": 3}}})
    destroyed = {"data": {"data": None, "metadata": {"version": 2, "destroyed": True}}}
    with pytest.raises(SecretNotFound, match="version 2 was destroyed"):
        replies.kv2_secret("p", None, destroyed)


def test_kv1_metadata_mount_and_auth_replies():
    assert (
        replies.kv1_secret("kv/a", {"data": {"k": "v"}, "lease_duration": 60}).lease_duration == 60
    )
    with pytest.raises(StoreUnavailable):
        replies.kv1_secret("kv/a", {"data": "v"})
    with pytest.raises(StoreUnavailable):
        replies.kv1_secret("kv/a", {"data": {}, "lease_duration": "1h"})

    info = replies.version_info(
        {"data": {"current_version": 2, "versions": {"2": {"created_time": "t"}}}}
    )
    assert (info.current, info.gone) == (2, False)
    for bad in (
        {"data": []},
        {"data": {"current_version": "2"}},
        {"data": {"current_version": 1, "versions": 1}},
    ):
        with pytest.raises(StoreUnavailable):
            replies.version_info(bad)
    with pytest.raises(SecretNotFound):
        replies.version_info({"data": {"current_version": 0}})

    mount = replies.mount({"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}})
    assert mount is not None and (mount.path, mount.kv_version) == ("secret/", 2)
    assert replies.mount({"data": {}}) is None
    for bad in (
        {"data": {"path": "secret"}},
        {"data": {"path": 1}},
        {"data": {"path": "s/", "options": []}},
    ):
        with pytest.raises(StoreUnavailable):
            replies.mount(bad)

    grant = replies.login({"auth": {"client_token": "t", "lease_duration": 60, "renewable": True}})
    assert (grant.token, grant.ttl, grant.renewable) == ("t", 60.0, True)
    with pytest.raises(StoreUnavailable, match="auth_failed"):
        replies.login({"auth": {"lease_duration": 60}})
    for bad in ({"auth": []}, {"auth": {"client_token": "t", "lease_duration": "60"}}):
        with pytest.raises(StoreUnavailable):
            replies.login(bad)
    with pytest.raises(StoreUnavailable):
        replies.lookup({"data": {"ttl": 1.5}})


def test_not_found_reasons_never_trust_odd_shapes():
    assert replies.not_found_reason({"data": "x"}) == "the store has no secret at this path"
    odd = {"data": {"metadata": {"version": "v; drop table"}}}
    assert replies.not_found_reason(odd) == "the store has no secret at this path"


def test_a_store_url_path_can_never_carry_a_query_a_fragment_or_an_escape():
    assert _url_path("secret/data/app/db") == "/v1/secret/data/app/db"
    assert _url_path("secret/a@b+c=d,e:f~g_h-i.j") == "/v1/secret/a@b+c=d,e:f~g_h-i.j"
    assert _url_path("secret/a?list=true#x%2e y") == "/v1/secret/a%3Flist=true%23x%252e%20y"
    assert _url_path("secret/caf\u00e9") == "/v1/secret/caf%C3%A9"


def test_a_leased_reply_is_checked_field_by_field_and_a_lease_must_be_for_the_path():
    good = {
        "lease_id": "database/creds/app/AbC123",
        "lease_duration": 3600,
        "renewable": True,
        "data": {"username": "u", "password": "p"},
    }
    secret = replies.leased_secret("database/creds/app", good)
    assert secret.lease_id == good["lease_id"] and secret.lease_duration == 3600
    assert secret.renewable and secret.kid.startswith("database/creds/app#lease-")
    for bad in (
        {"lease_id": "database/creds/other/AbC"},  # another path's lease
        {"lease_id": "database/creds/app/a b"},
        {"lease_id": 7},
        {"lease_duration": 0},
        {"lease_duration": 10**12},  # a "lease" past any date: would break the envelope
        {"lease_duration": "3600"},
        {"renewable": "yes"},
        {"data": ["u", "p"]},
    ):
        with pytest.raises(StoreUnavailable) as refused:
            replies.leased_secret("database/creds/app", {**good, **bad})
        assert refused.value.kind is ErrorKind.BAD_RESPONSE, bad
    with pytest.raises(replies.Unaskable):  # not leased at all: another engine, refused
        replies.leased_secret("transit/keys/app", {"data": {"name": "app"}})
    assert replies.renewed("database/creds/app/AbC123", {**good, "lease_duration": 60}) == 60
    with pytest.raises(StoreUnavailable):
        replies.renewed("database/creds/app/AbC123", {**good, "lease_id": "database/creds/x/1"})
