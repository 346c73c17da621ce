"""One sidecar over its own store request budget, against the real store: reads come before
refresh-ahead, every read is answered, the sidecar keeps to its budget (counted by the store's
own audit log), and the degradation shows in its metrics. (The same scenario at full size, with
both budgets side by side, is `make bench`'s `budget`.)"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from sidecar.dev.openbao import DevOpenBao
from tests.conftest import AUTH, CLASSES, SidecarFactory, metric

SECRETS = 40
SECONDS = 4.0
BUDGET = {"requests_per_second": 10, "burst": 4}  # the secrets need ~48 checks/s


def _classes() -> dict[str, dict[str, Any]]:
    return {
        name: {**spec, "refresh_interval": "1s", "max_cache_age": "60s"}
        for name, spec in CLASSES.items()
    }


def _store_requests(openbao: DevOpenBao, uid: str) -> int:
    prefixes = (f"secret/data/{uid}/", f"secret/metadata/{uid}/")
    return sum(
        1
        for record in openbao.audit_records()
        if record.get("type") == "request"
        and record.get("request", {}).get("path", "").startswith(prefixes)
    )


async def _read_at_random(client: Any, paths: list[str], seconds: float) -> list[tuple[int, bool]]:
    answers: list[tuple[int, bool]] = []
    end = time.monotonic() + seconds

    async def reader() -> None:
        while time.monotonic() < end:
            response = await client.get(f"/secrets/{random.choice(paths)}", headers=AUTH)
            body = await response.json()
            answers.append((response.status, bool(body.get("stale"))))

    await asyncio.gather(*(reader() for _ in range(4)))
    return answers


@pytest.mark.parametrize(("group", "class_name"), [("app", "standard"), ("payments", "payments")])
async def test_over_budget_reads_come_first_and_the_degradation_shows(
    make_sidecar: SidecarFactory,
    openbao: DevOpenBao,
    uid: str,
    group: str,
    class_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = [f"secret/{uid}/{group}/s{i:02}" for i in range(SECRETS)]
    for i, path in enumerate(paths):
        openbao.kv_put(path.removeprefix("secret/"), {"v": f"budget-{uid}-{i}"})
    client, sidecar = await make_sidecar(
        classes=_classes(),
        rules=[
            {"match": "secret/*/payments/**", "class": "payments"},
            {"match": "**", "class": "standard"},
        ],
        backend={"rate_limit": BUDGET},
    )
    for path in paths:  # every secret held once, within the burst and a queue
        assert (await client.get(f"/secrets/{path}", headers=AUTH)).status == 200
    before = _store_requests(openbao, uid)
    started = time.monotonic()
    answers = await _read_at_random(client, paths, SECONDS)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # audit records of requests under way
    asked = _store_requests(openbao, uid) - before

    assert answers, "no read finished"
    assert [status for status, _ in answers if status != 200] == []  # every read answered
    # The sidecar kept to its own budget: the store saw at most the rate, plus the burst, plus
    # one metadata-then-data pair per secret changed (none here).
    assert asked <= BUDGET["requests_per_second"] * (elapsed + 0.5) + BUDGET["burst"]
    deferred = metric(
        sidecar, "sidecar_budget_degraded_total", {"class": class_name, "action": "deferred"}
    )
    served_stale = metric(
        sidecar, "sidecar_budget_degraded_total", {"class": class_name, "action": "served_stale"}
    )
    assert deferred > 0  # refresh-ahead could not keep up, and said so
    stale = sum(1 for _, was_stale in answers if was_stale)
    if class_name == "standard":
        # reads of values past refresh_interval got the value held instead of queueing
        assert served_stale > 0 and stale > 0
    else:
        # a fail_closed class never gets an unconfirmed value: its reads wait, first in line
        assert served_stale == 0 and stale == 0
    # the degradation is logged by path and class, never with a value
    assert "refresh-ahead is behind" in caplog.text
    assert f"budget-{uid}-" not in caplog.text


async def test_each_sidecar_exports_what_it_costs_the_store_and_the_capacity_set(
    make_sidecar: SidecarFactory, openbao: DevOpenBao, uid: str
) -> None:
    for i in range(3):
        openbao.kv_put(f"{uid}/load/s{i}", {"v": f"load-{uid}-{i}"})
    client, sidecar = await make_sidecar(backend={"store_capacity": 4000})
    gauge = "sidecar_store_load_expected_requests_per_second"
    assert metric(sidecar, gauge) == 0.0  # nothing kept fresh yet
    for i in range(3):
        assert (await client.get(f"/secrets/secret/{uid}/load/s{i}", headers=AUTH)).status == 200
    # three values read within their 60 s refresh_interval: kept fresh, one check per cycle each
    assert metric(sidecar, gauge) == pytest.approx(3 / (0.825 * 60))
    assert metric(sidecar, "sidecar_store_capacity_requests_per_second") == 4000
    _, plain = await make_sidecar()
    # not set: no capacity series at all (an alert must not compare with zero)
    assert (
        plain.metrics.registry.get_sample_value("sidecar_store_capacity_requests_per_second")
        is None
    )
