"""Counting the store requests a scenario cost, by class: the paths a secret's reads use, and
the new lines of the store's audit log (a line still being written waits)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sidecar.drill.counting import AuditTail, by_class, store_paths


def test_a_secret_maps_to_its_kv_paths_whatever_its_mount():
    assert set(store_paths("team/kv/app/db")) == {
        "team/kv/app/db",
        "team/data/kv/app/db",
        "team/metadata/kv/app/db",
        "team/kv/data/app/db",
        "team/kv/metadata/app/db",
        "team/kv/app/data/db",
        "team/kv/app/metadata/db",
    }
    counts = Counter(
        {
            "secret/data/app/db": 3,
            "secret/metadata/app/db": 2,
            "kv1/legacy": 1,
            "auth/token/lookup-self": 7,  # the sidecar's own, no class's
        }
    )
    assert by_class(counts, {"secret/app/db": "web", "kv1/legacy": "old"}) == {"web": 5, "old": 1}


def _record(kind: str, path: str) -> str:
    return json.dumps({"type": kind, "request": {"path": path}}) + "\n"


def test_the_audit_tail_counts_request_records_written_since_the_last_take(tmp_path: Path):
    log = tmp_path / "audit.log"
    log.write_text(_record("request", "secret/data/before"))
    tail = AuditTail([log, tmp_path / "not-yet"])
    with log.open("a") as out:
        out.write(_record("request", "secret/data/a") + _record("response", "secret/data/a"))
        out.write("not json\n" + _record("request", "secret/data/a"))
        out.write('{"type": "request", "request": {"pa')  # still being written
    assert tail.take() == {"secret/data/a": 2}
    with log.open("a") as out:
        out.write('th": "secret/data/b"}}\n')
    assert tail.take() == {"secret/data/b": 1}
    assert tail.take() == {}
