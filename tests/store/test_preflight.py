"""``sidecar check-config --check-store``: the store's own answer, rule by rule, with the
sidecar's identity (a real OpenBao and a token that carries a narrow policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sidecar.cli import main
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import config
from tests.hostile import HostileStore, respond


def test_check_store_reports_each_rule_as_the_store_answers(
    openbao: DevOpenBao, uid: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openbao.kv_put(f"{uid}/app/db", {"password": "preflight-value"})
    openbao.kv_put(f"{uid}/other/key", {"key": "preflight-other"})
    policy = (
        f'path "secret/data/{uid}/app/*" {{ capabilities = ["read"] }}\n'
        f'path "secret/data/{uid}/db-*" {{ capabilities = ["read"] }}\n'
        f'path "sys/internal/ui/mounts/secret/{uid}/*" {{ capabilities = ["read"] }}\n'
    )
    openbao.request("POST", f"sys/policies/acl/pf{uid}", {"policy": policy})
    token = openbao.request("POST", "auth/token/create", {"policies": [f"pf{uid}"], "ttl": "1h"})
    token_file = tmp_path / "sidecar-token"
    token_file.write_text(token["auth"]["client_token"])
    token_file.chmod(0o600)
    rules = [
        {"match": f"secret/{uid}/app/db", "class": "standard"},  # allowed, read once
        {"match": f"secret/{uid}/app/none", "class": "standard"},  # allowed, nothing there
        {"match": f"secret/{uid}/other/key", "class": "standard"},  # refused
        {"match": f"secret/{uid}/app/**", "class": "standard"},  # allowed under the prefix
        {"match": f"secret/{uid}/other/**", "class": "standard"},  # refused under the prefix
        {"match": f"secret/{uid}/db-*", "class": "standard"},  # a glob inside a segment
    ]
    document = config(openbao.addr, token_file, tmp_path, rules=rules)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(document))

    assert main(["check-config", str(path), "--check-store"]) == 1
    out = capsys.readouterr().out
    verdicts = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.startswith(f"secret/{uid}/")
    }
    assert verdicts == {
        f"secret/{uid}/app/db": "ok:",
        f"secret/{uid}/app/none": "ok:",
        f"secret/{uid}/other/key": "NO:",
        f"secret/{uid}/app/**": "ok:",
        f"secret/{uid}/other/**": "NO:",
        f"secret/{uid}/db-*": "ok:",
    }, out
    assert "preflight-value" not in out and "preflight-other" not in out

    del document["secrets"][2]
    del document["secrets"][3]
    path.write_text(yaml.safe_dump(document))
    assert main(["check-config", str(path), "--check-store"]) == 0


@pytest.mark.parametrize(
    "lie",
    [{"capabilities": "read"}, {"capabilities": [1, None]}, ["read"], {}],
    ids=["text", "not-strings", "a-list", "nothing"],
)
def test_check_store_reads_a_lying_capabilities_reply_as_no_grant(
    openbao: DevOpenBao, uid: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], lie
) -> None:
    """A capabilities reply of the wrong shape grants nothing (and crashes nothing)."""
    store = HostileStore(openbao.port).start()
    try:
        store.on("sys/capabilities-self", respond(200, json.dumps(lie).encode()))
        token_file = tmp_path / "t"
        token_file.write_text(openbao.root_token)
        token_file.chmod(0o600)
        rules = [{"match": f"secret/{uid}/**", "class": "standard"}]
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config(store.addr, token_file, tmp_path, rules=rules)))
        assert main(["check-config", str(path), "--check-store"]) == 1
        out = capsys.readouterr().out
        verdict = next(line for line in out.splitlines() if line.startswith(f"secret/{uid}/**"))
        # a JSON object of the wrong shape grants nothing; anything else is a bad reply
        assert verdict.split(None, 1)[1].startswith(
            ("NO: the policy does not grant read", "NO: could not ask: bad_response")
        ), verdict
    finally:
        store.stop()
