"""``sidecar status``: the running sidecar's status report in a terminal, asked with the admin
token its config names (as on-call runs it through `kubectl exec`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.cli import main
from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import ADMIN_TOKEN, AUTH, config, running

VALUE = "status-cli-value-8a1c"


def _sidecar_config(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, **extra: Any
) -> tuple[dict[str, Any], Path]:
    """A config on a fixed free port (the CLI reads it from the file), with the admin token
    the in-process server uses in the file the config names; the document and its path."""
    document = config(
        openbao.addr,
        store_token_file,
        tmp_path,
        listen=f"127.0.0.1:{free_port()}",
        metrics_listen="127.0.0.1:0",
        **extra,
    )
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(document))
    return document, path


async def test_status_prints_each_secret_and_the_store_and_never_a_value(
    openbao: DevOpenBao,
    store_token_file: Path,
    tmp_path: Path,
    uid: str,
    capsys: pytest.CaptureFixture[str],
):
    openbao.kv_put(f"{uid}/db", {"password": VALUE})
    document, path = _sidecar_config(openbao, store_token_file, tmp_path)
    async with running(document) as (_, api, _ops):
        async with aiohttp.ClientSession() as session:
            reply = await session.get(f"{api}/secrets/secret/{uid}/db", headers=AUTH)
            assert reply.status == 200
        code = await asyncio.to_thread(main, ["status", "--config", str(path)])
        text = capsys.readouterr().out
        assert code == 0
        assert await asyncio.to_thread(main, ["status", "--config", str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    lines = text.splitlines()
    assert lines[0].startswith("1 secrets cached (1 fresh)")
    header = next(line for line in lines if line.startswith("PATH"))
    assert header.split() == [
        "PATH",
        "CLASS",
        "OWNER",
        "VERSION",
        "STATE",
        "AGE",
        "REFRESH",
        "MAX",
        "AGE",
        "ERROR",
    ]
    row = next(line for line in lines if line.startswith(f"secret/{uid}/db"))
    assert row.split()[1:5] == ["standard", "team-test", "1", "fresh"]
    assert any(line.startswith(openbao.addr) and "yes" in line for line in lines)
    assert report["secrets"][0]["path"] == f"secret/{uid}/db"
    assert VALUE not in text and VALUE not in json.dumps(report)


def test_status_says_what_to_check_when_the_sidecar_cannot_be_asked(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    document = config(openbao.addr, store_token_file, tmp_path, listen=f"127.0.0.1:{free_port()}")
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["status", "--config", str(path)]) == 1
    assert "is it running with this config" in capsys.readouterr().err
    path.write_text("listen: [nonsense\n")
    assert main(["status", "--config", str(path)]) == 2


async def test_admin_purge_and_extend_act_on_the_running_sidecar_and_say_why_not(
    openbao: DevOpenBao,
    store_token_file: Path,
    tmp_path: Path,
    uid: str,
    capsys: pytest.CaptureFixture[str],
):
    openbao.kv_put(f"{uid}/db", {"password": VALUE})
    document, path = _sidecar_config(
        openbao, store_token_file, tmp_path, audit_log=str(tmp_path / "audit.log")
    )
    cli = ["--config", str(path)]

    async def run(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, [*args])
        out = capsys.readouterr()
        return code, out.out, out.err

    async with running(document) as (_, api, _ops), aiohttp.ClientSession() as session:
        url = f"{api}/secrets/secret/{uid}/db"
        assert (await session.get(url, headers=AUTH)).status == 200
        code, out, _ = await run("admin", "purge", "--path", f"secret/{uid}/db", *cli)
        assert code == 0 and out.startswith("purged 1 cached value(s)")
        assert (await session.get(url, headers=AUTH)).headers["X-Sidecar-Cache"] == "MISS"

        code, out, _ = await run(
            "admin", "extend", "--class", "standard", "--max-cache-age", "1h", "--for", "10m", *cli
        )
        assert code == 0
        assert out.startswith("class standard: max_cache_age 1h (configured 15m) until ")
        code, _, err = await run(
            "admin", "extend", "--class", "payments", "--max-cache-age", "1h", "--for", "1m", *cli
        )
        assert code == 1 and "409" in err and "fail_closed" in err
        code, _, err = await run(
            "admin", "extend", "--class", "nope", "--max-cache-age", "1h", "--for", "1m", *cli
        )
        assert code == 1 and "404" in err
    records = (tmp_path / "audit.log").read_text()
    assert '"purged"' in records and '"cache_window_extended"' in records
