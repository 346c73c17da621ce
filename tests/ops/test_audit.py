"""The audit log: JSON lines appended with mode 0600, values only as HMAC fingerprints, stale
serves rate-limited, and a log that cannot be written never takes the daemon down."""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path

import orjson
import pytest

from sidecar.ops.audit import AuditKeyError, AuditLog, fingerprint_key, iso_time

KEY = bytes(range(32))
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_records_are_json_lines_with_time_and_event(tmp_path):
    path = tmp_path / "audit.log"
    clock = Clock(T0 + 0.25)
    audit = AuditLog(path, fingerprint_key=KEY, clock=clock)
    audit.record("started", version="1.2.3")
    clock.now += 1.5
    audit.record("fetch_failed", path="secret/app/db", kind="timeout", reason=None, version=3)
    audit.close()

    assert lines(path) == [
        {"time": "2023-11-14T22:13:20.250Z", "event": "started", "version": "1.2.3", "audit": True},
        {
            "time": "2023-11-14T22:13:21.750Z",
            "event": "fetch_failed",
            "path": "secret/app/db",
            "kind": "timeout",
            "version": 3,
            "audit": True,
        },
    ]
    assert path.read_bytes().count(b"\n") == 2
    assert audit.records == 2 and audit.failures == 0


def test_iso_time_has_milliseconds_and_a_z():
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(T0 + 0.0456) == "2023-11-14T22:13:20.045Z"


def test_file_is_0600_in_a_0700_directory_and_appended_not_truncated(tmp_path):
    path = tmp_path / "state" / "audit" / "audit.log"
    first = AuditLog(path, fingerprint_key=KEY, clock=Clock())
    first.record("started", version="1")
    first.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    second = AuditLog(path, fingerprint_key=KEY, clock=Clock())
    second.record("stopped")
    second.close()
    assert [r["event"] for r in lines(path)] == ["started", "stopped"]


def test_stdout_mirror_carries_audit_true(tmp_path):
    stream = io.StringIO()
    audit = AuditLog(tmp_path / "audit.log", stdout=True, fingerprint_key=KEY, stream=stream)
    audit.record("auth_renewed", method="approle")
    audit.close()
    mirrored = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert mirrored == lines(tmp_path / "audit.log")
    assert mirrored[0]["audit"] is True and mirrored[0]["event"] == "auth_renewed"


def test_stdout_only_and_disabled(tmp_path, capsys):
    AuditLog(None, stdout=True, fingerprint_key=KEY).record("stopped")
    assert orjson.loads(capsys.readouterr().out)["event"] == "stopped"

    disabled = AuditLog(None, fingerprint_key=KEY)
    disabled.record("stopped")
    disabled.stale_served("secret/a", version=1)
    assert (disabled.records, disabled.failures) == (2, 0)
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_fingerprints_are_stable_keyed_and_domain_separated():
    audit = AuditLog(None, fingerprint_key=KEY)
    other = AuditLog(None, fingerprint_key=bytes(32))
    data = {"username": "app", "password": "s3cret"}

    fp = audit.fingerprint(data)
    assert fp.startswith("hmac-sha256:") and len(fp) == len("hmac-sha256:") + 64
    assert fp == audit.fingerprint({"password": "s3cret", "username": "app"})  # key order
    assert fp != audit.fingerprint({**data, "password": "s3cret2"})
    assert fp != other.fingerprint(data)

    field = audit.fingerprint_value("secret/app/db", "password", "s3cret")
    assert field == audit.fingerprint_value("secret/app/db", "password", "s3cret")
    assert field != audit.fingerprint_value("secret/app/db", "password", "other")
    assert field != audit.fingerprint_value("secret/app/other", "password", "s3cret")
    assert field != other.fingerprint_value("secret/app/db", "password", "s3cret")
    # A one-field secret and that field must not fingerprint alike.
    assert audit.fingerprint({"password": "s3cret"}) != field


def test_no_secret_value_reaches_the_file_or_stdout(tmp_path):
    values = {"username": "svc-user-value-1", "password": "pw-value-8c1f2d", "api": "tok-value-77"}
    rotated = {**values, "password": "pw-value-new-93ab"}
    path = tmp_path / "audit.log"
    stream = io.StringIO()
    audit = AuditLog(path, stdout=True, fingerprint_key=KEY, clock=Clock(), stream=stream)
    audit.record(
        "rotation_detected",
        path="secret/app/db",
        old_version=1,
        new_version=2,
        old_fingerprint=audit.fingerprint(values),
        new_fingerprint=audit.fingerprint(rotated),
    )
    audit.record(
        "version_first_served",
        path="secret/app/db",
        version=2,
        fingerprint=audit.fingerprint(rotated),
    )
    for name in ("password", "api"):
        audit.record(
            "previous_value_presented",
            path="secret/app/db",
            field=name,
            version=1,
            current_version=2,
            fingerprint=audit.fingerprint_value("secret/app/db", name, values[name]),
        )
    audit.close()

    written = path.read_bytes() + stream.getvalue().encode()
    assert b"rotation_detected" in written
    for secret in [*values.values(), *rotated.values()]:
        assert secret.encode() not in written


@pytest.mark.parametrize("name", ["value", "data", "secret", "token", "password", "Password"])
def test_field_names_that_would_hold_values_are_refused(tmp_path, name):
    audit = AuditLog(tmp_path / "audit.log", fingerprint_key=KEY)
    with pytest.raises(ValueError, match="secret value"):
        audit.record("previous_value_presented", path="p", **{name: "x"})
    with pytest.raises(ValueError, match="secret value"):
        audit.stale_served("p", **{name: "x"})
    audit.close()
    assert audit.records == 0
    assert (tmp_path / "audit.log").read_bytes() == b""


def test_reserved_names_and_objects_are_refused():
    audit = AuditLog(None, fingerprint_key=KEY)
    with pytest.raises(ValueError, match="set by the audit log"):
        audit.record("started", time="yesterday")
    # orjson encodes dataclasses, values included: only plain scalars get through.
    from sidecar.store.interface import Secret

    with pytest.raises(TypeError, match="'entry'"):
        audit.record("purged", entry=Secret("p", {"k": "v"}, 1))
    with pytest.raises(TypeError):
        audit.record("purged", targets=[{"k": "v"}])
    audit.record("purged", targets=["a", "b"], entries=2, scope="prefix")


def test_stale_served_is_rate_limited_per_path_with_counts(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, fingerprint_key=KEY, clock=Clock(), stale_every=5)
    for _ in range(11):
        audit.stale_served("secret/a", version=4, age_seconds=61.5)
    audit.stale_served("secret/b", version=1, age_seconds=2.0)
    audit.close()
    stale = [(r["path"], r["count"]) for r in lines(path)]
    assert stale == [("secret/a", 1), ("secret/a", 5), ("secret/a", 10), ("secret/b", 1)]
    assert lines(path)[1] == {
        "time": iso_time(T0),
        "event": "stale_served",
        "path": "secret/a",
        "version": 4,
        "age_seconds": 61.5,
        "count": 5,
        "audit": True,
    }
    with pytest.raises(ValueError, match="at least 1"):
        AuditLog(None, fingerprint_key=KEY, stale_every=0)


def test_default_stale_every_is_100():
    stream = io.StringIO()
    audit = AuditLog(None, stdout=True, fingerprint_key=KEY, stream=stream)
    for _ in range(200):
        audit.stale_served("secret/a")
    counts = [orjson.loads(line)["count"] for line in stream.getvalue().splitlines()]
    assert counts == [1, 100, 200]


def test_an_unwritable_path_never_raises_and_counts_failures(tmp_path, caplog):
    path = tmp_path / "audit.log"
    path.mkdir()  # a directory in the way: fails even as root
    caplog.set_level(logging.INFO, logger="sidecar.audit")
    audit = AuditLog(path, fingerprint_key=KEY, clock=Clock())
    audit.record("started", version="1")
    audit.record("stopped")
    assert (audit.records, audit.failures) == (2, 3)  # the open at start, then each record
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per burst, not per record"
    assert "disk space" in warnings[0].getMessage()

    # Once the path is usable the log resumes, and says how much it lost.
    path.rmdir()
    audit.record("auth_renewed", method="token")
    audit.close()
    got = lines(path)
    assert [r["event"] for r in got] == ["audit_gap", "auth_renewed"]
    assert got[0]["lost"] == 2 and got[0]["since"] == iso_time(T0)
    assert any("writable again" in r.getMessage() for r in caplog.records)
    assert audit.last_error is None


def test_a_failing_stream_never_raises():
    stream = io.StringIO()
    stream.close()
    audit = AuditLog(None, stdout=True, fingerprint_key=KEY, stream=stream)
    audit.record("stopped")
    assert (audit.records, audit.failures) == (1, 1)


def test_a_renamed_log_is_followed_to_a_new_file(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, fingerprint_key=KEY, clock=Clock())
    audit.record("started", version="1")
    os.rename(path, tmp_path / "audit.log.1")  # logrotate without copytruncate
    audit.record("stopped")
    audit.close()
    assert [r["event"] for r in lines(tmp_path / "audit.log.1")] == ["started"]
    assert [r["event"] for r in lines(path)] == ["stopped"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fingerprint_key_sources(tmp_path):
    raw = os.urandom(32)
    key_file = tmp_path / "audit.key"
    key_file.write_text(raw.hex())
    assert fingerprint_key(key_file, b"x" * 32) == (raw, "key_file")

    snapshot_key = bytes(range(100, 132))
    derived, source = fingerprint_key(None, snapshot_key)
    assert source == "snapshot_key" and len(derived) == 32
    assert derived != snapshot_key
    assert fingerprint_key(None, snapshot_key) == (derived, "snapshot_key")  # deterministic

    first, source = fingerprint_key(None, None)
    assert source == "random" and len(first) == 32
    assert fingerprint_key(None, None)[0] != first


def test_a_bad_fingerprint_key_file_says_what_it_must_hold(tmp_path):
    bad = tmp_path / "audit.key"
    bad.write_text("not a key")
    with pytest.raises(
        AuditKeyError, match=r"audit fingerprint key file .*head -c 32 /dev/urandom"
    ):
        fingerprint_key(bad, None)
    with pytest.raises(AuditKeyError, match="cannot read"):
        fingerprint_key(tmp_path / "missing.key", None)


def test_a_failing_stdout_copy_loses_nothing_from_the_file(tmp_path):
    stream = io.StringIO()
    stream.close()
    path = tmp_path / "audit.log"
    audit = AuditLog(path, stdout=True, fingerprint_key=KEY, stream=stream)
    audit.record("started", version="1")
    audit.record("stopped")
    audit.close()
    assert audit.failures == 2
    assert [r["event"] for r in lines(path)] == ["started", "stopped"]  # no audit_gap
