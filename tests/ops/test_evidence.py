"""``sidecar evidence``: a whole rotation story written with AuditLog, read back as a report."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import orjson
import pytest

from sidecar.ops.audit import AuditLog, iso_time
from sidecar.ops.evidence import build_report, main, render_text

KEY = bytes(range(32))
BASE = float(int(time.time()) - 3600)  # recent, so --since on the wall clock keeps it
DB, API = "secret/app/db", "secret/app/api"
V1 = {"username": "app", "password": "db-pass-v1-7f3a"}
V2 = {"username": "app", "password": "db-pass-v2-91c4"}
API_V4, API_V5 = {"key": "api-key-v4-55e0"}, {"key": "api-key-v5-0b2d"}
VALUES = [b"db-pass-v1-7f3a", b"db-pass-v2-91c4", b"api-key-v4-55e0", b"api-key-v5-0b2d"]


class Clock:
    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> float:
        return self.now


def at(offset: float) -> str:
    return iso_time(BASE + offset)


def write_story(path: Path) -> None:
    clock = Clock()
    audit = AuditLog(path, fingerprint_key=KEY, clock=clock)

    def rec(offset: float, event: str, **fields: object) -> None:
        clock.now = BASE + offset
        audit.record(event, **fields)

    db = {"path": DB, "class": "standard", "owner": "team-db"}
    api = {"path": API, "class": "payments", "owner": "team-pay"}
    rec(0, "started", version="0.3.0")
    rec(1, "snapshot_loaded", restored=3, discarded=1, problem=None)
    rec(2, "version_first_served", **api, version=4, fingerprint=audit.fingerprint(API_V4))
    rec(
        10,
        "rotation_detected",
        **db,
        old_version=1,
        new_version=2,
        old_fingerprint=audit.fingerprint(V1),
        new_fingerprint=audit.fingerprint(V2),
        created_time=at(8),
    )
    rec(
        13,
        "version_first_served",
        **db,
        version=2,
        fingerprint=audit.fingerprint(V2),
        seconds_since_rotation=5.0,
    )
    rec(20, "previous_value_presented", **db, field="password", version=1, current_version=2)
    rec(100, "previous_retired", **db, version=1, current_version=2, last_served=at(20))
    rec(110, "retired_value_presented", **db, field="password", version=1, current_version=2)
    rec(120, "fetch_failed", **db, kind="timeout", reason="store timed out", version=2)
    rec(121, "fetch_failed", **db, kind="connection", reason="connection refused", version=2)
    rec(122, "fetch_failed", **db, kind="timeout", reason="store timed out again", suppressed=4)
    clock.now = BASE + 130
    for _ in range(250):
        audit.stale_served(DB, **{"class": "standard"}, version=2, age_seconds=70.0)
    rec(200, "purged", scope="path", target=DB, entries=2, by="admin")
    rec(210, "revoked", **db, version=1, reason="leaked in ticket 42", entries=1)
    rec(215, "unrevoked", **db, version=1, reason="false alarm")
    rec(
        220,
        "cache_window_extended",
        max_cache_age=3600,
        previous_max_cache_age=900,
        until=at(3820),
        requested="1h",
    )
    rec(230, "cache_window_reverted", max_cache_age=900)
    rec(240, "auth_renewed", method="approle")
    rec(250, "auth_failed", method="approle", reason="permission denied")
    rec(
        300,
        "rotation_detected",
        **api,
        old_version=4,
        new_version=5,
        old_fingerprint=audit.fingerprint(API_V4),
        new_fingerprint=audit.fingerprint(API_V5),
        created_time=at(299),
    )
    rec(310, "purged", scope="prefix", target="secret/app/", entries=5, by="revocation_list")
    rec(320, "snapshot_saved", entries=3)
    rec(330, "snapshot_saved", entries=4)
    rec(400, "stopped")
    audit.close()


@pytest.fixture
def story(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    write_story(path)
    return path


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_build_report_tells_the_whole_story(story):
    report = build_report(records(story), now=BASE + 1000)

    assert report["generated_at"] == at(1000)
    assert report["window"] == {"since": None, "until": at(1000), "path_glob": None}
    assert report["input"] == {
        "file": None,
        "records": 26,
        "in_window": 26,
        "malformed": 0,
        "ignored": 0,
    }
    assert report["retired_value_presented"] == 1
    assert list(report["paths"]) == [API, DB]  # sorted

    assert report["paths"][DB] == {
        "class": "standard",
        "owner": "team-db",
        "rotations": [
            {
                "time": at(10),
                "old_version": 1,
                "new_version": 2,
                "created_time": at(8),
                "value_changed": True,
                "first_served": at(13),
                "adoption_seconds": 3.0,
                "superseded": False,
                "previous_retired": at(100),
                "previous_last_served": at(20),
            }
        ],
        "previous_value_presented": {"count": 1, "last": at(20), "fields": ["password"]},
        "retired_value_presented": {
            "count": 1,
            "last": at(110),
            "fields": ["password"],
            "versions": [1],
        },
        "fetch_failures": {
            "connection": {"count": 1, "last": at(121), "last_reason": "connection refused"},
            "timeout": {"count": 6, "last": at(122), "last_reason": "store timed out again"},
        },
        "stale_served": {"max_count": 200, "last": at(130)},
        "purges": [{"time": at(200), "scope": "path", "target": DB, "entries": 2, "by": "admin"}],
        "revocations": [
            {"time": at(210), "version": 1, "reason": "leaked in ticket 42", "entries": 1}
        ],
        "unrevocations": [{"time": at(215), "version": 1, "reason": "false alarm"}],
    }

    api = report["paths"][API]
    assert (api["class"], api["owner"]) == ("payments", "team-pay")
    assert api["rotations"] == [
        {
            "time": at(300),
            "old_version": 4,
            "new_version": 5,
            "created_time": at(299),
            "value_changed": True,
            "first_served": None,
            "adoption_seconds": None,
            "superseded": False,
            "previous_retired": None,
            "previous_last_served": None,
        }
    ]
    assert api["retired_value_presented"]["count"] == 0

    assert report["global"] == {
        "started": [{"time": at(0), "version": "0.3.0"}],
        "stopped": [at(400)],
        "cache_window": [
            {
                "time": at(220),
                "event": "extended",
                "max_cache_age": 3600,
                "previous_max_cache_age": 900,
                "until": at(3820),
                "requested": "1h",
            },
            {
                "time": at(230),
                "event": "reverted",
                "max_cache_age": 900,
                "previous_max_cache_age": None,
                "until": None,
                "requested": None,
            },
        ],
        "snapshot_loads": [{"time": at(1), "restored": 3, "discarded": 1, "problem": None}],
        "snapshot_saves": {"count": 2, "last": at(330), "last_entries": 4},
        "auth_renewed": {"count": 1, "last": at(240)},
        "auth_failed": {
            "count": 1,
            "last": at(250),
            "last_reason": "permission denied",
            "by_method": {"approle": 1},
        },
        "purges": [
            {
                "time": at(310),
                "scope": "prefix",
                "target": "secret/app/",
                "entries": 5,
                "by": "revocation_list",
            }
        ],
        "audit_gaps": [],
    }

    assert report["warnings"] == [
        f"WARNING: {API}: rotated v4 -> v5 at {at(300)}, but v5 was never served: the app has "
        "not reloaded the secret",
        f"WARNING: {DB}: a retired value (v1) was presented once, last at {at(110)}: someone "
        "still holds a rotated-out secret; find the caller and handle it as an incident",
    ]


def test_text_report_warns_and_never_shows_values(story):
    text = render_text(build_report(records(story), now=BASE + 1000))
    lines = text.splitlines()
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert len(warnings) == 2
    assert any("v5 was never served" in w for w in warnings)
    assert any("retired value (v1) was presented once" in w for w in warnings)

    assert f"{DB}  (class standard, owner team-db)" in lines
    header = next(
        line
        for line in lines[lines.index(f"{DB}  (class standard, owner team-db)") :]
        if "DETECTED" in line
    )
    row = lines[lines.index(header) + 1]
    assert row.split() == [at(10), "v1", "->", "v2", "changed", at(13), "3s", at(20)]
    assert header.index("FIRST SERVED") == row.index(at(13))  # aligned
    assert f"{API}  (class payments, owner team-pay)" in lines
    api_header = next(line for line in lines if "DETECTED" in line)
    api_row = lines[lines.index(api_header) + 1]
    assert api_row.split() == [at(300), "v4", "->", "v5", "changed", "never", "-", "not", "retired"]
    assert "  fetch failed (timeout): 6 times, last " + at(122) + ": store timed out again" in lines
    assert "  stale served: at least 200 times, last recorded " + at(130) in lines
    assert f"  revoked: {at(210)} v1 (1 cached entry): leaked in ticket 42" in lines
    assert f"  AUTH FAILED: once (approle 1), last {at(250)}: permission denied" in lines
    for value in VALUES:
        assert value.decode() not in text
    assert "hmac-sha256" not in text  # fingerprints stay in the log; people read "changed"


def test_main_json_parses_and_retired_presentation_exits_1(story, capsys):
    assert main(story, None, None, as_json=True) == 1
    out = capsys.readouterr().out
    report = orjson.loads(out)
    assert report["input"]["file"] == str(story)
    assert report["retired_value_presented"] == 1
    assert report["paths"][DB]["rotations"][0]["adoption_seconds"] == 3.0
    for value in VALUES:
        assert value not in out.encode()


def test_main_text_and_path_filter(story, capsys):
    # The retired presentation is on DB: filtered to API, nothing gates the pipeline.
    assert main(story, None, "secret/app/a*", as_json=False) == 0
    out = capsys.readouterr().out
    assert API in out and DB not in out
    assert "paths matching secret/app/a*" in out

    report = build_report(records(story), path_glob="**/db", now=BASE + 1000)
    assert list(report["paths"]) == [DB]
    assert report["global"]["started"], "the global section is not filtered by path"
    assert report["global"]["purges"][0]["target"] == "secret/app/"


def test_since_leaves_out_old_records(tmp_path, capsys):
    path = tmp_path / "audit.log"
    old = Clock()
    old.now = time.time() - 40 * 86400
    audit = AuditLog(path, fingerprint_key=KEY, clock=old)
    audit.record("rotation_detected", path="secret/old", old_version=1, new_version=2)
    audit.record("retired_value_presented", path="secret/old", field="k", version=1)
    audit.close()
    write_story(path)

    assert main(path, "30d", "secret/old", as_json=True) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["paths"] == {}
    assert report["input"]["records"] == 28 and report["input"]["in_window"] == 10
    assert main(path, "50d", "secret/old", as_json=True) == 1
    assert orjson.loads(capsys.readouterr().out)["paths"]["secret/old"]["rotations"]

    report = build_report(records(path), since=500, now=BASE + 1000)
    assert report["window"]["since"] == at(500)
    assert report["paths"] == {} and report["input"]["in_window"] == 0


def test_malformed_lines_are_counted_not_fatal(story, capsys):
    with story.open("ab") as f:
        f.write(b"not json at all\n")
        f.write(b'{"time": "2026-01-0')  # a torn write: the audit log ends it with a newline
        f.write(b"\n\n")
        f.write(b"[1, 2]\n")
        f.write(b'{"event": "started"}\n')  # no time
        f.write(b'{"time": "yesterday", "event": "started"}\n')
        f.write(b'{"time": "2026-01-01T00:00:00.000Z", "event": "new_in_v9", "audit": true}\n')
    assert main(story, None, None, as_json=True) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["input"]["malformed"] == 5
    assert report["input"]["ignored"] == 1
    assert report["input"]["records"] == 27

    assert main(story, None, None, as_json=False) == 1
    assert "5 malformed skipped, 1 not understood" in capsys.readouterr().out


def test_an_audit_gap_is_a_warning():
    gap = {"time": at(50), "event": "audit_gap", "lost": 7, "since": at(40)}
    report = build_report([gap], now=BASE + 100)
    assert report["global"]["audit_gaps"] == [{"time": at(50), "lost": 7, "since": at(40)}]
    assert report["warnings"] == [
        f"WARNING: the audit log lost 7 record(s) between {at(40)} and {at(50)} (write "
        "failures): this report cannot see that time"
    ]


def test_unchanged_value_and_superseded_rotations():
    def rotation(t: float, old: int, new: int, same: bool = False) -> dict:
        return {
            "time": at(t),
            "event": "rotation_detected",
            "path": "p",
            "old_version": old,
            "new_version": new,
            "old_fingerprint": "hmac-sha256:aa",
            "new_fingerprint": "hmac-sha256:aa" if same else "hmac-sha256:bb",
        }

    served = {"time": at(30), "event": "version_first_served", "path": "p", "version": 3}
    report = build_report([rotation(10, 1, 2), rotation(20, 2, 3, same=True), served], now=BASE)
    first, second = report["paths"]["p"]["rotations"]
    assert (first["first_served"], first["superseded"]) == (None, True)
    assert (second["first_served"], second["adoption_seconds"]) == (at(30), 10.0)
    assert second["value_changed"] is False
    assert report["warnings"] == [
        f"WARNING: p: rotation v2 -> v3 at {at(20)} kept the same value (equal fingerprints): "
        "the secret was not actually rotated"
    ]
    assert "never (superseded)" in render_text(report)


def test_bad_input_exits_2_and_says_what_to_do(tmp_path, capsys):
    missing = tmp_path / "nope.log"
    assert main(missing, None, None, as_json=False) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err

    log = tmp_path / "audit.log"
    log.write_text("")
    assert main(log, "a while", None, as_json=False) == 2
    assert "--since" in capsys.readouterr().err

    packed = tmp_path / "audit.log.1.gz"
    packed.write_bytes(gzip.compress(b'{"time": "2026-01-01T00:00:00Z", "event": "started"}\n'))
    assert main(packed, None, None, as_json=False) == 2
    assert "zcat" in capsys.readouterr().err

    assert main(tmp_path, None, None, as_json=False) == 2  # a directory
    assert "cannot read audit log" in capsys.readouterr().err


def test_an_empty_log_is_an_empty_report(tmp_path, capsys):
    log = tmp_path / "audit.log"
    log.write_text("")
    assert main(log, "1d", None, as_json=False) == 0
    out = capsys.readouterr().out
    assert "records: 0 read, 0 in the report" in out
    assert "nothing recorded" in out


def test_the_cli_subcommand(story, capsys):
    from sidecar.cli import main as cli

    assert cli(["evidence", "--audit-log", str(story), "--since", "30d", "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["window"]["since"] is not None
    assert cli(["evidence", "--audit-log", str(story), "--path", "**/api"]) == 0
    assert "v5 was never served" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli(["evidence"])  # --audit-log is required
    assert exc.value.code == 2
