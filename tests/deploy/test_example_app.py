"""The chart's example workload is a real client: its container command, with the environment
the chart gives it, reads a secret through a real sidecar in front of OpenBao and logs the
version, never the value."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import helm_python

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import CALLER_TOKEN, config, running
from tests.deploy.manifests import CHART, containers, pod_specs, render


async def test_the_example_app_reads_its_secret_through_the_sidecar(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    openbao.kv_put(f"{uid}/config", {"password": "example-app-value-7f3a"})
    ((_, spec),) = pod_specs(render({"example": {"secretPath": f"secret/{uid}/config"}}))
    app = containers(spec)["app"]
    assert app["command"][:2] == ["python", "-c"]
    token_file = tmp_path / "caller-token"
    token_file.write_text(CALLER_TOKEN)
    document = config(openbao.addr, store_token_file, tmp_path)
    async with running(document) as (_, api, _ops):
        env = {e["name"]: e["value"] for e in app["env"]}
        assert env["SECRETS_SIDECAR_URL"] == "http://127.0.0.1:8100"  # the chart's port
        env |= {
            "SECRETS_SIDECAR_URL": api,
            "SECRETS_SIDECAR_TOKEN_FILE": str(token_file),
            "INTERVAL_SECONDS": "0.1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, *app["command"][1:], env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            lines = [
                (await asyncio.wait_for(process.stdout.readline(), 10)).decode() for _ in range(2)
            ]
        finally:
            process.terminate()  # as the kubelet stops the container: it must not linger
            code = await asyncio.wait_for(process.wait(), 5)
    assert code == 0
    assert lines == [
        f"read secret/{uid}/config status 200 version 1 cache MISS stale False\n",
        f"read secret/{uid}/config status 200 version 1 cache HIT stale False\n",
    ]
    assert "example-app-value" not in "".join(lines)


async def test_the_install_notes_one_liner_reads_a_secret_too(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    """NOTES.txt tells how to read a secret from the app container: its command, run with the
    app container's environment, gets an answer from a real sidecar."""
    openbao.kv_put(f"{uid}/config", {"password": "notes-value-2b8e"})
    values = {"example": {"secretPath": f"secret/{uid}/config"}}
    notes = helm_python.Chart.load(str(CHART)).render(values, name="demo", namespace="apps")[
        "secrets-sidecar/templates/NOTES.txt"
    ]
    (script,) = re.findall(r"-- python -c \\\n\s+'([^']+)'", notes)
    ((_, spec),) = pod_specs(render(values))
    token_file = tmp_path / "caller-token"
    token_file.write_text(CALLER_TOKEN)
    async with running(config(openbao.addr, store_token_file, tmp_path)) as (_, api, _ops):
        env = {e["name"]: e["value"] for e in containers(spec)["app"]["env"]}
        env |= {"SECRETS_SIDECAR_URL": api, "SECRETS_SIDECAR_TOKEN_FILE": str(token_file)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0
    assert "X-Sidecar-Cache: MISS" in out.decode()
    assert "notes-value" not in out.decode()
