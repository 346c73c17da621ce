"""Rotation in stages against a real OpenBao: overlap, blocking queries, verify, evidence."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.cli import main
from sidecar.core.clock import ManualClock
from sidecar.dev.openbao import DevOpenBao
from tests.conftest import ADMIN, AUTH, CLASSES, SidecarFactory, metric

ROTATING = {
    "rotating": {
        **CLASSES["standard"],
        "refresh_interval": "1s",
        "max_cache_age": "1h",
        "overlap": "3s",
    },
    "strict": {**CLASSES["payments"], "refresh_interval": "1s", "max_cache_age": "1h"},
}
RULES = [{"match": "secret/*/strict/**", "class": "strict"}, {"match": "**", "class": "rotating"}]


async def _rotating_sidecar(make_sidecar: SidecarFactory, tmp_path: Path, **extra: Any):
    return await make_sidecar(
        classes=ROTATING, rules=RULES, audit_log=str(tmp_path / "audit.log"), **extra
    )


async def test_rotation_under_load_overlap_then_retired(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    openbao.kv_put(f"{uid}/api", {"key": "rot-value-v1"})
    client, sidecar = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{uid}/api"
    first = await client.get(path, headers=AUTH)
    assert (await first.json())["version"] == 1

    seen: list[tuple[float, int, str | None]] = []
    errors: list[int] = []
    stop = asyncio.Event()

    async def app_reading_at_full_speed() -> None:
        while not stop.is_set():
            response = await client.get(path, headers=AUTH)
            if response.status != 200:
                errors.append(response.status)
                continue
            body = await response.json()
            seen.append((time.monotonic(), body["version"], body.get("previous_kid")))

    readers = [asyncio.create_task(app_reading_at_full_speed()) for _ in range(3)]
    await asyncio.sleep(0.3)
    written = time.monotonic()
    openbao.kv_put(f"{uid}/api", {"key": "rot-value-v2"})
    while not any(v == 2 for _, v, _ in seen):
        await asyncio.sleep(0.05)
        assert time.monotonic() - written < 3, "the new version never arrived"
    arrived = next(t for t, v, _ in seen if v == 2)
    # during the overlap: the previous version is served on request, and its kid is announced
    previous = await client.get(f"{path}?version=previous", headers=AUTH)
    assert previous.status == 200
    body = await previous.json()
    assert (body["version"], body["data"], body["kid"]) == (
        1,
        {"key": "rot-value-v1"},
        f"secret/{uid}/api#1",
    )
    current = await (await client.get(path, headers=AUTH)).json()
    assert current["kid"] == f"secret/{uid}/api#2"
    assert current["previous_kid"] == f"secret/{uid}/api#1"
    assert metric(sidecar, "sidecar_overlap_open") == 1

    clock.advance(3.2)  # the overlap (3 s from the new version's creation) ends
    await _until(lambda: metric(sidecar, "sidecar_overlap_open") == 0)
    stop.set()
    await asyncio.gather(*readers)
    assert errors == []
    # the new version was served within refresh_interval (1 s) plus jitter of the write
    assert arrived - written < 1.5
    # the version never went backwards for any reader
    versions = [v for _, v, _ in seen]
    assert versions == sorted(versions)
    retired = await client.get(f"{path}?version=previous", headers=AUTH)
    assert retired.status == 410
    assert (await retired.json())["error"] == "version_retired"
    after = await (await client.get(path, headers=AUTH)).json()
    assert "previous_kid" not in after
    assert metric(sidecar, "sidecar_rotations_total", {"class": "rotating"}) == 1
    assert metric(sidecar, "sidecar_overlap_open") == 0
    assert metric(sidecar, "sidecar_previous_version_served_total", {"class": "rotating"}) == 1

    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    events = [r["event"] for r in records if r.get("path") == f"secret/{uid}/api"]
    assert events.count("rotation_detected") == 1
    assert events.count("previous_retired") == 1
    first_served = [r for r in records if r["event"] == "version_first_served"]
    assert [r["version"] for r in first_served if r["path"] == f"secret/{uid}/api"] == [1, 2]
    rotation = next(r for r in records if r["event"] == "rotation_detected")
    assert rotation["old_fingerprint"] != rotation["new_fingerprint"]
    assert rotation["owner"] == "team-test"
    retired_record = next(r for r in records if r["event"] == "previous_retired")
    assert retired_record["last_served"] is not None
    raw = (tmp_path / "audit.log").read_bytes()
    assert b"rot-value-v1" not in raw and b"rot-value-v2" not in raw


async def test_class_without_overlap_serves_only_current(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/strict/key", {"k": "s1"})
    openbao.kv_put(f"{uid}/strict/key", {"k": "s2"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path)
    response = await client.get(f"/secrets/secret/{uid}/strict/key?version=previous", headers=AUTH)
    assert response.status == 410
    assert "no overlap" in (await response.json())["reason"]
    first = await client.get(f"/secrets/secret/{uid}/other?version=previous", headers=AUTH)
    assert first.status == 404


async def test_blocking_query_wakes_on_rotation_many_waiters_one_poll(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    openbao.kv_put(f"{uid}/watched", {"key": "w1"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{uid}/watched"
    assert (await client.get(path, headers=AUTH)).status == 200
    polls_before = openbao.count_requests(f"secret/metadata/{uid}/watched")

    async def waiter() -> tuple[int, Any, float]:
        started = time.monotonic()
        response = await client.get(f"{path}?wait=20s&newer_than=1&field=key", headers=AUTH)
        return response.status, await response.read(), time.monotonic() - started

    waiters = [asyncio.create_task(waiter()) for _ in range(25)]
    for _ in range(5):  # 2.5 s of the sidecar's time: the value is confirmed about twice
        clock.advance(0.5)
        await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    openbao.kv_put(f"{uid}/watched", {"key": "w2"})
    written = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    woke = time.monotonic() - written
    assert {(status, body) for status, body, _ in results} == {(200, b"w2")}
    assert woke < 1.5  # within a refresh interval plus jitter
    polls = openbao.count_requests(f"secret/metadata/{uid}/watched") - polls_before
    # ~3.5 s of waiting at one poll per refresh interval (1 s), for all 25 waiters together
    assert 2 <= polls <= 6, polls
    assert openbao.count_requests(f"secret/data/{uid}/watched") == 2


async def test_blocking_query_times_out_with_304(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/quiet", {"key": "q1"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path, max_wait="800ms")
    started = time.monotonic()
    response = await client.get(f"/secrets/secret/{uid}/quiet?wait=1h", headers=AUTH)
    assert response.status == 304
    assert response.headers["X-Sidecar-Version"] == "1"
    assert 0.7 < time.monotonic() - started < 10  # capped at max_wait, not an hour
    already = await client.get(f"/secrets/secret/{uid}/quiet?wait=5s&newer_than=0", headers=AUTH)
    assert already.status == 200  # version 1 is newer than 0: no waiting
    bad = await client.get(f"/secrets/secret/{uid}/quiet?newer_than=1", headers=AUTH)
    assert bad.status == 400


async def test_verify_classifies_current_previous_retired_unknown(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    clock: ManualClock,
):
    for n in (1, 2, 3):
        openbao.kv_put(f"{uid}/hook", {"hmac": f"hook-secret-{n}"})
    client, sidecar = await _rotating_sidecar(make_sidecar, tmp_path)
    await client.get(f"/secrets/secret/{uid}/hook", headers=AUTH)

    async def verify(value: str) -> dict[str, Any]:
        response = await client.post(
            f"/verify/secret/{uid}/hook", headers=AUTH, json={"field": "hmac", "value": value}
        )
        assert response.status == 200, await response.text()
        return await response.json()

    current = await verify("hook-secret-3")
    assert (current["match"], current["kid"]) == ("current", f"secret/{uid}/hook#3")
    previous = await verify("hook-secret-2")  # v3 created just now: inside the 3 s overlap
    assert (previous["match"], previous["kid"]) == ("previous", f"secret/{uid}/hook#2")
    retired = await verify("hook-secret-1")
    assert (retired["match"], retired["kid"]) == ("retired", f"secret/{uid}/hook#1")
    unknown = await verify("not-a-value-we-issued")
    assert (unknown["match"], unknown["kid"]) == ("unknown", None)
    assert metric(sidecar, "sidecar_retired_credential_uses_total", {"class": "rotating"}) == 1

    clock.advance(3.1)  # overlap over: the previous one is retired too
    assert (await verify("hook-secret-2"))["match"] == "retired"

    bad = await client.post(f"/verify/secret/{uid}/hook", headers=AUTH, json={"field": "hmac"})
    assert bad.status == 400
    extra = await client.post(
        f"/verify/secret/{uid}/hook", headers=AUTH, json={"field": "x", "value": "y", "z": 1}
    )
    assert extra.status == 400
    records = (tmp_path / "audit.log").read_text()
    assert records.count('"retired_value_presented"') == 2
    assert records.count('"previous_value_presented"') == 1
    assert "hook-secret" not in records and "not-a-value" not in records


async def test_events_stream_announces_rotations(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    openbao.kv_put(f"{uid}/streamed", {"key": "stream-value-one"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path)
    await client.get(f"/secrets/secret/{uid}/streamed", headers=AUTH)
    stream = await client.get("/events", headers=AUTH)
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream"
    openbao.kv_put(f"{uid}/streamed", {"key": "stream-value-two"})
    buffer = b""
    deadline = time.monotonic() + 5
    while b"event: rotation" not in buffer and time.monotonic() < deadline:
        buffer += await asyncio.wait_for(stream.content.readany(), 5)
    assert b"event: rotation" in buffer
    data = json.loads(buffer.split(b"event: rotation\ndata: ")[1].split(b"\n")[0])
    assert data["path"] == f"secret/{uid}/streamed"
    assert (data["version"], data["previous_kid"]) == (2, f"secret/{uid}/streamed#1")
    assert b"stream-value" not in buffer
    stream.close()


async def test_evidence_report_from_a_real_run(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path, capsys
):
    openbao.kv_put(f"{uid}/evid", {"key": "ev-1"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{uid}/evid"
    await client.get(path, headers=AUTH)
    openbao.kv_put(f"{uid}/evid", {"key": "ev-2"})
    for _ in range(40):
        await asyncio.sleep(0.1)
        if (await (await client.get(path, headers=AUTH)).json())["version"] == 2:
            break
    await client.post(
        f"/verify/secret/{uid}/evid", headers=AUTH, json={"field": "key", "value": "ev-2"}
    )
    await client.close()

    capsys.readouterr()
    code = main(["evidence", "--audit-log", str(tmp_path / "audit.log"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    secret = report["paths"][f"secret/{uid}/evid"]
    assert secret["owner"] == "team-test"
    (rotation,) = secret["rotations"]
    assert (rotation["old_version"], rotation["new_version"]) == (1, 2)
    assert rotation["first_served"] is not None
    assert rotation["adoption_seconds"] < 2
    assert main(["evidence", "--audit-log", str(tmp_path / "audit.log")]) == 0
    text = capsys.readouterr().out
    assert f"secret/{uid}/evid" in text
    assert "ev-1" not in text and "ev-2" not in text


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)


async def test_evidence_keeps_rotations_across_a_purge_and_retires_without_overlap(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    tmp_path: Path,
    capsys,
    clock: ManualClock,
):
    """v1 -> v2, a purge, then v3: the evidence lists both rotations (the second one seen with
    nothing held), and in a class without overlap each previous version is retired when the
    rotation is seen, which is what /verify answers too."""
    name = f"{uid}/strict/key"
    openbao.kv_put(name, {"key": "strict-1"})
    client, _ = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{name}"

    async def version_after_refresh() -> int:
        clock.advance(1.1)  # past the class's refresh_interval: the read asks the store
        return int((await (await client.get(path, headers=AUTH)).json())["version"])

    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 1
    openbao.kv_put(name, {"key": "strict-2"})
    assert await version_after_refresh() == 2
    verdict = await client.post(
        f"/verify/secret/{name}", headers=AUTH, json={"field": "key", "value": "strict-1"}
    )
    assert (await verdict.json())["match"] == "retired"
    purged = await client.post("/admin/purge", headers=ADMIN, json={"path": f"secret/{name}"})
    assert purged.status == 200
    openbao.kv_put(name, {"key": "strict-3"})
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 3
    await client.close()

    capsys.readouterr()
    assert main(["evidence", "--audit-log", str(tmp_path / "audit.log"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)  # exit 1: the retired value was presented
    rotations = report["paths"][f"secret/{name}"]["rotations"]
    assert [(r["old_version"], r["new_version"]) for r in rotations] == [(1, 2), (2, 3)]
    assert all(r["previous_retired"] is not None for r in rotations)
    assert all(r["first_served"] is not None for r in rotations)


async def test_reading_only_the_previous_version_is_not_adopting_the_new_one(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """An app that still asks for ?version=previous has not moved to the new version: no
    adoption is counted or audited until it reads the current one."""
    openbao.kv_put(f"{uid}/api", {"key": "adopt-value-v1"})
    client, sidecar = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{uid}/api"
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 1
    openbao.kv_put(f"{uid}/api", {"key": "adopt-value-v2"})
    async with asyncio.timeout(10):  # refresh-ahead notices the rotation
        while True:
            previous = await client.get(f"{path}?version=previous", headers=AUTH)
            if previous.status == 200:
                break
            await asyncio.sleep(0.1)
    assert (await previous.json())["version"] == 1
    adopted = {"class": "rotating"}
    assert metric(sidecar, "sidecar_rotation_adoption_seconds_count", adopted) == 0
    audit = (tmp_path / "audit.log").read_text()
    assert not any(
        json.loads(line)["event"] == "version_first_served" and json.loads(line).get("version") == 2
        for line in audit.splitlines()
    )
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 2
    assert metric(sidecar, "sidecar_rotation_adoption_seconds_count", adopted) == 1


async def test_a_rotation_is_open_until_adopted_and_retired_as_the_metrics_say(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str, tmp_path: Path
):
    """Rotation success as on-call reads it: detected (awaiting adoption), adopted (overlap
    open), finished (the previous version retired)."""
    openbao.kv_put(f"{uid}/api", {"key": "open-rotation-v1"})
    client, sidecar = await _rotating_sidecar(make_sidecar, tmp_path)
    path = f"/secrets/secret/{uid}/api"

    def open_rotations(state: str) -> float:
        return metric(sidecar, "sidecar_rotations_open", {"class": "rotating", "state": state})

    assert (await client.get(path, headers=AUTH)).status == 200
    assert (open_rotations("awaiting_adoption"), open_rotations("overlap_open")) == (0, 0)
    openbao.kv_put(f"{uid}/api", {"key": "open-rotation-v2"})
    async with asyncio.timeout(10):  # refresh-ahead notices the rotation; the app has not read
        while metric(sidecar, "sidecar_rotations_total", {"class": "rotating"}) < 1:
            await asyncio.sleep(0.05)
    assert open_rotations("awaiting_adoption") == 1
    assert (await (await client.get(path, headers=AUTH)).json())["version"] == 2
    assert (open_rotations("awaiting_adoption"), open_rotations("overlap_open")) == (0, 1)
    async with asyncio.timeout(10):  # the 3 s overlap ends
        while metric(sidecar, "sidecar_previous_retired_total", {"class": "rotating"}) < 1:
            await client.get(path, headers=AUTH)
            await asyncio.sleep(0.2)
    assert (open_rotations("awaiting_adoption"), open_rotations("overlap_open")) == (0, 0)
