"""The encrypted cache snapshot: round trip, secrecy, tamper and truncation tolerance, and
atomic replacement, including a writer killed with SIGKILL mid-write."""

from __future__ import annotations

import base64
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from sidecar.ops.snapshot import (
    FORMAT_VERSION,
    LoadResult,
    SnapshotEntry,
    SnapshotKeyError,
    describe,
    key_file_mode_problem,
    load_key,
    read_snapshot,
    write_snapshot,
)
from sidecar.store.interface import Secret

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(0xE0, 0x100))  # its base64 has both "+" and "/", so urlsafe differs
OTHER_KEY = bytes(32)
HEADER_SIZE = 62  # documented in sidecar/snapshot.py

ENTRIES = [
    SnapshotEntry(
        None,
        Secret("secret/app/db", {"password": "hunter2-db-pass"}, 7, "2024-05-01T10:00:00Z"),
        "standard",
        1_700_000_000.5,
    ),
    SnapshotEntry(
        3,
        Secret("secret/app/db", {"password": "old-pinned-pass"}, 3, "2024-04-01T10:00:00Z"),
        "standard",
        1_700_000_001.0,
    ),
    SnapshotEntry(
        None,
        Secret("kv1/app/legacy", {"token": "legacy-kv1-token"}, None, None, kv_version=1),
        "payments",
        1_700_000_002.0,
    ),
    SnapshotEntry(
        None,
        Secret(
            "secret/app/mixed",
            {
                "port": 5432,
                "ratio": 0.25,
                "enabled": True,
                "nothing": None,
                "list": ["nested-list-secret", 1, False],
                "obj": {"inner": "nested-obj-secret"},
                "unicode": "pässwörd-ünïcode",
            },
            1,
        ),
        "standard",
        1_700_000_003.0,
    ),
]
SECRET_STRINGS = [
    "hunter2-db-pass",
    "old-pinned-pass",
    "legacy-kv1-token",
    "nested-list-secret",
    "nested-obj-secret",
    "pässwörd-ünïcode",
]


def _write(path: Path, entries: list[SnapshotEntry] = ENTRIES) -> bytes:
    assert write_snapshot(path, KEY, entries, now=1_700_000_100.0) == len(entries)
    return path.read_bytes()


def _records(data: bytes) -> list[tuple[int, int, int, int]]:
    """(meta_start, meta_end, box_start, box_end) of each record, from the documented layout."""
    spans = []
    offset = HEADER_SIZE
    while offset < len(data):
        (meta_len,) = struct.unpack_from(">I", data, offset)
        meta_start = offset + 4
        (box_len,) = struct.unpack_from(">I", data, meta_start + meta_len)
        box_start = meta_start + meta_len + 4
        spans.append((meta_start, meta_start + meta_len, box_start, box_start + box_len))
        offset = box_start + box_len
    return spans


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _assert_clean(result: LoadResult, expected: list[SnapshotEntry]) -> None:
    assert result.problem is None
    assert result.skipped == 0
    assert result.entries == expected


# -- round trip and secrecy -------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "snap"
    _write(path)
    result = read_snapshot(path, KEY)
    _assert_clean(result, ENTRIES)
    assert result.written_at == 1_700_000_100.0
    assert result.entries[2].secret.version is None
    assert result.entries[2].secret.kv_version == 1


def test_empty_snapshot_round_trips(tmp_path):
    path = tmp_path / "snap"
    assert write_snapshot(path, KEY, []) == 0
    _assert_clean(read_snapshot(path, KEY), [])


def test_file_holds_no_secret_value_and_no_form_of_the_key(tmp_path):
    data = _write(tmp_path / "snap")
    for value in SECRET_STRINGS:
        assert value.encode() not in data
        assert orjson.dumps(value) not in data
    for entry in ENTRIES:
        assert orjson.dumps(dict(entry.secret.data)) not in data
    for form in (
        KEY,
        KEY.hex().encode(),
        KEY.hex().upper().encode(),
        base64.b64encode(KEY),
        base64.urlsafe_b64encode(KEY),
        base64.b64encode(KEY).rstrip(b"="),
    ):
        assert form not in data
    assert b"secret/app/db" in data  # paths are plaintext by design


def test_file_mode_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        _write(tmp_path / "snap")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "snap").stat().st_mode) == 0o600


def test_entry_that_is_not_json_encodable_is_left_out(tmp_path):
    path = tmp_path / "snap"
    odd = SnapshotEntry(None, Secret("secret/odd", {"n": 2**70}, 1), "standard", 1.0)
    assert write_snapshot(path, KEY, [ENTRIES[0], odd, ENTRIES[1]]) == 2
    _assert_clean(read_snapshot(path, KEY), ENTRIES[:2])


# -- key file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        KEY,
        KEY.hex().encode() + b"\n",
        KEY.hex().upper().encode(),
        b"  " + KEY.hex().encode() + b"\r\n",
        base64.b64encode(KEY) + b"\n",
        base64.b64encode(KEY).rstrip(b"="),
        base64.urlsafe_b64encode(KEY) + b"\n",
        base64.urlsafe_b64encode(KEY).rstrip(b"=") + b"\n",
    ],
    ids=["raw", "hex", "HEX", "hex-space", "b64", "b64-nopad", "urlsafe", "urlsafe-nopad"],
)
def test_load_key_accepts(tmp_path, content):
    assert b"+" in base64.b64encode(KEY) or b"/" in base64.b64encode(KEY)
    (tmp_path / "key").write_bytes(content)
    assert load_key(tmp_path / "key") == KEY


def test_load_key_accepts_random_raw_keys(tmp_path):
    for _ in range(50):
        key = os.urandom(32)
        (tmp_path / "key").write_bytes(key)
        assert load_key(tmp_path / "key") == key


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(31),
        os.urandom(33),
        KEY + b"\n",  # raw keys get no whitespace allowance
        b"",
        b"\n",
        ("g" + KEY.hex()[1:]).encode(),
        KEY.hex()[:-2].encode() + b"\n",
        KEY.hex()[:32].encode(),  # `openssl rand -hex 16` without newline: 32 printable bytes
        base64.b64encode(KEY[:31]),
        base64.b64encode(KEY + b"x"),
        b"not a key at all",
    ],
    ids=[
        "raw31",
        "raw33",
        "raw+newline",
        "empty",
        "newline",
        "badhex",
        "hex31",
        "hex16-as-text",
        "b64-31",
        "b64-33",
        "words",
    ],
)
def test_load_key_rejects(tmp_path, content):
    (tmp_path / "key").write_bytes(content)
    with pytest.raises(SnapshotKeyError) as caught:
        load_key(tmp_path / "key")
    message = str(caught.value)
    for hint in ("32 raw bytes", "64 hex", "base64", "head -c 32 /dev/urandom"):
        assert hint in message
    if content.strip():
        assert content.strip().decode("latin-1") not in message  # never echo key material


def test_load_key_missing_file(tmp_path):
    with pytest.raises(SnapshotKeyError, match="cannot read"):
        load_key(tmp_path / "absent")


def test_key_file_mode_problem(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    assert key_file_mode_problem(key) is None
    key.chmod(0o400)
    assert key_file_mode_problem(key) is None
    for mode in (0o604, 0o620, 0o660, 0o644):
        key.chmod(mode)
        problem = key_file_mode_problem(key)
        assert problem is not None
        assert f"{mode:04o}" in problem
        assert "chmod 600" in problem
    assert key_file_mode_problem(tmp_path / "absent") is not None


def test_a_key_readable_by_our_own_group_is_accepted_and_by_a_foreign_group_is_not(tmp_path):
    """The shape of a Kubernetes Secret volume with fsGroup: mode 0440, group = the pod's group."""
    key = tmp_path / "key"
    key.write_bytes(KEY)
    key.chmod(0o440)
    assert key.stat().st_gid in {os.getgid(), *os.getgroups()}
    assert key_file_mode_problem(key) is None
    if os.geteuid() != 0:
        pytest.skip("giving the file a foreign group needs root")
    foreign = max({os.getgid(), *os.getgroups()}) + 4242
    os.chown(key, -1, foreign)
    problem = key_file_mode_problem(key)
    assert problem is not None and "0440" in problem


# -- tampering ----------------------------------------------------------------------------


def test_wrong_key_loads_nothing_and_says_so(tmp_path):
    path = tmp_path / "snap"
    _write(path)
    result = read_snapshot(path, OTHER_KEY)
    assert result.entries == []
    assert result.skipped == len(ENTRIES)
    assert result.problem is not None
    assert "wrong key" in result.problem


def test_every_byte_flip_in_one_record_skips_only_that_record(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    meta_start, meta_end, box_start, box_end = _records(data)[1]
    others = [ENTRIES[0], *ENTRIES[2:]]
    for offset in [*range(meta_start, meta_end), *range(box_start, box_end)]:
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        path.write_bytes(tampered)
        result = read_snapshot(path, KEY)
        assert result.skipped == 1, offset
        assert result.entries == others, offset
        assert result.problem is not None
        assert "authentication" in result.problem


def test_swapped_ciphertexts_fail_both(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    (_, _, a_start, a_end), (_, _, b_start, b_end) = _records(data)[:2]
    swapped = data[:a_start] + data[b_start:b_end] + data[a_end:b_start] + data[a_start:a_end]
    swapped += data[b_end:]
    path.write_bytes(swapped)
    result = read_snapshot(path, KEY)
    assert result.skipped == 2
    assert result.entries == ENTRIES[2:]


def test_swapped_whole_records_fail_both(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    spans = _records(data)
    first = data[spans[0][0] - 4 : spans[0][3]]
    second = data[spans[1][0] - 4 : spans[1][3]]
    path.write_bytes(data[:HEADER_SIZE] + second + first + data[spans[1][3] :])
    result = read_snapshot(path, KEY)
    assert result.skipped == 2
    assert result.entries == ENTRIES[2:]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'["secret","secret/app/db",null]', b'["secret","secret/app/xy",null]'),  # another path
        (b'["secret","secret/app/db",3]', b'["secret","secret/app/db",4]'),  # another version
    ],
)
def test_record_bound_to_path_and_version_key(tmp_path, old, new):
    path = tmp_path / "snap"
    data = _write(path)
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    result = read_snapshot(path, KEY)
    assert result.skipped == 1
    assert len(result.entries) == len(ENTRIES) - 1


def test_tampered_header_is_reported_and_records_still_authenticate(tmp_path):
    path = tmp_path / "snap"
    data = bytearray(_write(path))
    data[12] ^= 0x01  # inside written_at
    path.write_bytes(data)
    result = read_snapshot(path, KEY)
    assert result.problem is not None
    assert "header" in result.problem
    assert result.written_at is None  # not trusted
    assert result.entries == ENTRIES


def test_trailing_garbage_is_reported(tmp_path):
    path = tmp_path / "snap"
    path.write_bytes(_write(path) + b"\x00\x00\x00\x05extra")
    result = read_snapshot(path, KEY)
    assert result.entries == ENTRIES
    assert result.problem is not None
    assert "unexpected" in result.problem


# -- truncation and garbage ---------------------------------------------------------------


def test_truncation_at_every_offset_keeps_the_records_before_the_cut(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    ends = [span[3] for span in _records(data)]
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        result = read_snapshot(path, KEY)
        complete = sum(1 for end in ends if end <= cut)
        assert result.entries == ENTRIES[:complete], cut
        assert result.skipped == 0, cut
        assert result.problem is not None, cut
        if cut:
            assert "truncated" in result.problem, (cut, result.problem)
        assert ("problem" in describe(path)) == (cut < HEADER_SIZE), cut


def test_truncation_at_a_record_boundary_is_detected(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    path.write_bytes(data[: _records(data)[1][3]])
    result = read_snapshot(path, KEY)
    assert result.entries == ENTRIES[:2]
    assert result.problem == "truncated: 2 of 4 records present"


@pytest.mark.parametrize(
    "content",
    [
        b"garbage, not a snapshot at all",
        b"\x00" * 100,
        os.urandom(5000),
        b"\x89SCS",
        b'{"json": "file"}\n',
    ],
)
def test_garbage_is_a_problem_not_an_exception(tmp_path, content):
    path = tmp_path / "snap"
    path.write_bytes(content)
    result = read_snapshot(path, KEY)
    assert result.entries == []
    assert result.problem is not None
    assert "problem" in describe(path)


def test_future_format_version_is_a_problem(tmp_path):
    path = tmp_path / "snap"
    data = bytearray(_write(path))
    struct.pack_into(">H", data, 8, FORMAT_VERSION + 1)
    path.write_bytes(data)
    result = read_snapshot(path, KEY)
    assert result.entries == []
    assert result.problem is not None
    assert f"version {FORMAT_VERSION + 1}" in result.problem
    assert f"version {FORMAT_VERSION + 1}" in describe(path)["problem"]


def test_missing_file_is_no_snapshot(tmp_path):
    assert read_snapshot(tmp_path / "absent", KEY) == LoadResult([], 0, None, None)
    assert "problem" in describe(tmp_path / "absent")


def test_unreadable_path_is_a_problem(tmp_path):
    (tmp_path / "snap").mkdir()
    result = read_snapshot(tmp_path / "snap", KEY)
    assert result.entries == []
    assert result.problem is not None


def test_describe_needs_no_key(tmp_path):
    path = tmp_path / "snap"
    data = _write(path)
    info = describe(path)
    assert info["format_version"] == FORMAT_VERSION
    assert info["written_at"] == 1_700_000_100.0
    assert info["entries"] == len(ENTRIES)
    assert info["size"] == len(data)
    assert "problem" not in info
    assert KEY.hex() not in str(info)


# -- atomic replacement -------------------------------------------------------------------


def _old_snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "snap"
    _write(path, ENTRIES[:2])
    return path


def test_failed_replace_leaves_old_snapshot_and_no_temp(tmp_path, monkeypatch):
    path = _old_snapshot(tmp_path)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        write_snapshot(path, KEY, ENTRIES)
    monkeypatch.undo()
    _assert_clean(read_snapshot(path, KEY), ENTRIES[:2])
    assert _temps(tmp_path) == []


def test_failed_fsync_leaves_old_snapshot_and_no_temp(tmp_path, monkeypatch):
    path = _old_snapshot(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_snapshot(path, KEY, ENTRIES)
    monkeypatch.undo()
    _assert_clean(read_snapshot(path, KEY), ENTRIES[:2])
    assert _temps(tmp_path) == []


def test_failing_entry_source_leaves_old_snapshot_and_no_temp(tmp_path):
    path = _old_snapshot(tmp_path)

    def entries():
        yield ENTRIES[0]
        raise RuntimeError("cache changed size during iteration")

    with pytest.raises(RuntimeError):
        write_snapshot(path, KEY, entries())
    _assert_clean(read_snapshot(path, KEY), ENTRIES[:2])
    assert _temps(tmp_path) == []


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "snap"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale_dead = tmp_path / f".snap.{child.pid}.0123abcd.tmp"
    stale_old = tmp_path / f".snap.{os.getppid()}.89abcdef.tmp"  # live pid, but hours old
    in_progress = tmp_path / f".snap.{os.getpid()}.00000000.tmp"  # maybe another thread's
    unrelated = tmp_path / f".snap.old.{child.pid}.0123abcd.tmp"  # another file's temp
    for leftover in (stale_dead, stale_old, in_progress, unrelated):
        leftover.write_bytes(b"partial garbage")
    hours_ago = time.time() - 3 * 3600
    for old in (stale_old, unrelated):
        os.utime(old, (hours_ago, hours_ago))
    _write(path)  # leftovers never confuse the writer...
    _assert_clean(read_snapshot(path, KEY), ENTRIES)  # ...nor the reader
    assert _temps(tmp_path) == sorted([in_progress.name, unrelated.name])


CRASH_WRITER = """
import sys
from pathlib import Path
from sidecar.store.interface import Secret
from sidecar.ops.snapshot import SnapshotEntry, write_snapshot

path, key = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
entries = [
    SnapshotEntry(None, Secret(f"secret/app/{i}", {"password": "x" * 200, "n": i}, 1), "c", 1.0)
    for i in range(20_000)
]
print("ready", flush=True)
while True:
    write_snapshot(path, key, entries)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_writer_killed_mid_write_leaves_old_or_new_complete_snapshot(tmp_path):
    """Kill -9 a writer looping over a 7 MB snapshot at random moments: the target is always
    absent (nothing ever completed) or a whole snapshot, never a partial one."""
    path = tmp_path / "snap"
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed_mid_write = 0
    for attempt in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, str(path), KEY.hex()],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == b"ready\n"
            if attempt == 1:  # make sure later kills hit an overwrite, not a first write
                while not path.exists():
                    time.sleep(0.005)
            delay = rng.uniform(0.0, 0.25)
            time.sleep(delay)
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
        finally:
            writer.kill()
            writer.wait()
        killed_mid_write += bool(_temps(tmp_path))
        if attempt == 0 and not path.exists():
            continue
        assert path.exists(), f"attempt {attempt}, delay {delay:.3f}s"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        result = read_snapshot(path, KEY)
        assert result.problem is None, f"attempt {attempt}, delay {delay:.3f}s"
        assert len(result.entries) == 20_000
    assert killed_mid_write, "no kill landed while a temp file existed"
    # The killed writers' temp files go on the next successful write.
    _write(path)
    assert _temps(tmp_path) == []


# -- format versions ---------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_version_2_keeps_the_mount_table_as_its_own_record(tmp_path):
    path = tmp_path / "snap"
    mounts = [{"path": "secret/", "engine": "kv", "kv_version": 2, "info": {"type": "kv"}}]
    assert write_snapshot(path, KEY, ENTRIES, mounts=mounts) == len(ENTRIES)
    result = read_snapshot(path, KEY)
    assert (result.format_version, result.problem) == (FORMAT_VERSION, None)
    assert result.entries == ENTRIES and result.mounts == mounts
    assert describe(path)["format_version"] == 2


def test_version_1_snapshots_still_warm_a_start():
    """A file written by format version 1 (tests/fixtures/snapshot-v1.bin, key bytes 0..31):
    its secrets, pinned versions, KV v1 lease and mount table all come back."""
    result = read_snapshot(FIXTURES / "snapshot-v1.bin", bytes(range(32)))
    assert (result.format_version, result.problem, result.skipped) == (1, None, 0)
    by_key = {(e.secret.path, e.version_key): e for e in result.entries}
    assert set(by_key) == {
        ("secret/v1app/db", None),
        ("secret/v1app/db", 2),
        ("kv1/v1app/legacy", None),
    }
    latest = by_key[("secret/v1app/db", None)].secret
    assert (latest.data, latest.version, latest.custom_metadata) == (
        {"password": "v1-fixture-pw"},
        3,
        {"owner": "team-a"},
    )
    assert by_key[("kv1/v1app/legacy", None)].secret.lease_duration == 2764800
    assert [m["path"] for m in result.mounts] == ["secret/"]
    assert describe(FIXTURES / "snapshot-v1.bin")["format_version"] == 1


def test_a_leased_credential_keeps_its_lease_across_the_snapshot_and_bad_leases_are_refused():
    from sidecar.ops.snapshot_records import SnapshotEntry, decode_secret, secret_record
    from sidecar.store.interface import Secret

    leased = Secret(
        "database/creds/app",
        {"username": "u", "password": "p"},
        None,
        None,
        0,
        lease_duration=60,
        lease_id="database/creds/app/abc",
        renewable=True,
    )
    meta, payload = secret_record(SnapshotEntry(None, leased, "database", 1000.0))
    back = decode_secret(meta[1:], payload)
    assert back.secret == leased and back.confirmed_at == 1000.0
    for bad in (
        {"lease_id": 7},
        {"lease_id": "a b"},
        {"lease_id": "x", "lease_duration": 0},
        {"lease_id": "x" * 1025},
        {"lease_id": "x", "renewable": "yes"},
    ):
        with pytest.raises(ValueError, match="bad lease fields"):
            decode_secret(meta[1:], {**payload, **bad})
