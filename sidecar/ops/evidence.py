"""``sidecar evidence``: what the audit log shows about each secret, for people or pipelines.

Exit codes: 0 report printed, 1 a retired value was presented within the window (so the
command can gate a pipeline), 2 bad input (missing or unreadable log, bad ``--since``).

``--json`` prints one document. Every key below is always present; times are the audit log's
ISO-8601 UTC strings, ``null`` when unknown; paths and failure kinds are sorted::

    generated_at               time of the report ("now")
    window                     {since: time | null, until: time, path_glob: str | null}
    input                      {file: str | null, records: valid records read,
                                in_window: records used after --since and --path,
                                malformed: lines or records that could not be read,
                                ignored: unknown events, or per-path events without a path}
    retired_value_presented    total in the window; non-zero makes the exit code 1
    warnings                   [str], the same lines the text report starts with
    paths                      {path: {
        class, owner           from the latest record that has them
        rotations              [{time, old_version, new_version, created_time,
                                 value_changed: bool | null (null: fingerprints missing),
                                 first_served: when the new version was first served | null,
                                 adoption_seconds: first_served - time | null,
                                 superseded: a later rotation's version was served,
                                 previous_retired: when old_version stopped being served | null,
                                 previous_last_served: when old_version was last served | null}]
        previous_value_presented   {count, last, fields: [field names]}
        retired_value_presented    {count, last, fields: [field names], versions: [versions]}
        fetch_failures         {kind: {count, last, last_reason}}   (count includes failures
                                a record says it suppressed)
        stale_served           {max_count, last}
        purges                 [{time, scope, target, entries, by}]   (scope "path")
        revocations            [{time, version, reason, entries}]
        unrevocations          [{time, version, reason}]}}
    global                     {
        started                [{time, version}]
        stopped                [time]
        cache_window           [{time, event: "extended" | "reverted", max_cache_age,
                                 previous_max_cache_age, until, requested}]
        snapshot_loads         [{time, restored, discarded, problem}]
        snapshot_saves         {count, last, last_entries}
        auth_renewed           {count, last}
        auth_failed            {count, last, last_reason, by_method: {method: count}}
        purges                 [{time, scope, target, entries, by}]   (scope "prefix", "all")
        audit_gaps             [{time, lost, since}]   (records the daemon could not write)}
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from sidecar.core.durations import parse_duration
from sidecar.core.policy import glob_regex
from sidecar.ops.audit import iso_time
from sidecar.ops.evidence_paths import (
    LEASE_EVENTS,
    SecretEvidence,
    count_in,
    new_tally,
    purge_record,
)
from sidecar.ops.evidence_text import render_text, warning_lines

EXIT_OK, EXIT_RETIRED_PRESENTED, EXIT_BAD_INPUT = 0, 1, 2

_PATH_EVENTS = frozenset(
    {
        "rotation_detected",
        "version_first_served",
        "previous_retired",
        "previous_value_presented",
        "retired_value_presented",
        "fetch_failed",
        "stale_served",
        "purged",
        "revoked",
        "unrevoked",
        *LEASE_EVENTS,
    }
)
_GLOBAL_EVENTS = frozenset(
    {
        "cache_window_extended",
        "cache_window_reverted",
        "snapshot_loaded",
        "snapshot_saved",
        "auth_renewed",
        "auth_failed",
        "started",
        "stopped",
        "audit_gap",
        "purged",
    }
)


# -- building -------------------------------------------------------------------------


def build_report(
    records: Iterable[Mapping[str, Any]],
    *,
    since: float | None = None,
    path_glob: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The evidence report (the ``--json`` document above) from audit records, in any order.

    ``since``: a window in seconds before ``now`` (default: the wall clock); older records
    are left out. ``path_glob`` (a policy glob) leaves out records about other paths; records
    about no path in particular (the global section) are always kept."""
    now = time.time() if now is None else now
    cutoff = None if since is None else now - since
    pattern = None if path_glob is None else glob_regex(path_glob)
    counts = {"records": 0, "in_window": 0, "malformed": 0, "ignored": 0}
    kept: list[tuple[float, str, Mapping[str, Any]]] = []
    for record in records:
        event, stamp = record.get("event"), record.get("time")
        epoch = _epoch(stamp) if isinstance(stamp, str) else None
        if not isinstance(event, str) or epoch is None:
            counts["malformed"] += 1
            continue
        counts["records"] += 1
        if cutoff is not None and epoch < cutoff:
            continue
        path = _path_of(record)
        if path is not None and pattern is not None and not pattern.fullmatch(path):
            continue
        kept.append((epoch, str(stamp), record))
    kept.sort(key=lambda item: item[0])  # stable: equal times keep the file's order

    paths: dict[str, SecretEvidence] = {}
    glob: dict[str, Any] = _empty_global()
    for epoch, stamp, record in kept:
        event, path = record["event"], _path_of(record)
        if path is not None:
            secret = paths.setdefault(path, SecretEvidence())
            secret.note_owner(record)
            if event in _PATH_EVENTS:
                secret.add(event, epoch, stamp, record)
                counts["in_window"] += 1
                continue
        if event in _GLOBAL_EVENTS:
            _add_global(glob, event, stamp, record)
            counts["in_window"] += 1
        else:
            counts["ignored"] += 1

    report_paths = {path: paths[path].summary() for path in sorted(paths)}
    return {
        "generated_at": iso_time(now),
        "window": {
            "since": None if cutoff is None else iso_time(cutoff),
            "until": iso_time(now),
            "path_glob": path_glob,
        },
        "input": {"file": None, **counts},
        "retired_value_presented": sum(
            p["retired_value_presented"]["count"] for p in report_paths.values()
        ),
        "warnings": warning_lines(report_paths, glob),
        "paths": report_paths,
        "global": glob,
    }


def _path_of(record: Mapping[str, Any]) -> str | None:
    path = record.get("path")
    if isinstance(path, str):
        return path
    if record.get("event") == "purged" and record.get("scope") == "path":
        target = record.get("target")
        return target if isinstance(target, str) else None
    return None


def _epoch(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _empty_global() -> dict[str, Any]:
    return {
        "started": [],
        "stopped": [],
        "cache_window": [],
        "snapshot_loads": [],
        "snapshot_saves": {**new_tally(), "last_entries": None},
        "auth_renewed": new_tally(),
        "auth_failed": {**new_tally(), "last_reason": None, "by_method": {}},
        "purges": [],
        "audit_gaps": [],
    }


def _add_global(glob: dict[str, Any], event: str, stamp: str, r: Mapping[str, Any]) -> None:
    if event == "started":
        glob["started"].append({"time": stamp, "version": r.get("version")})
    elif event == "stopped":
        glob["stopped"].append(stamp)
    elif event in ("cache_window_extended", "cache_window_reverted"):
        glob["cache_window"].append(
            {
                "time": stamp,
                "event": event.removeprefix("cache_window_"),
                "max_cache_age": r.get("max_cache_age"),
                "previous_max_cache_age": r.get("previous_max_cache_age"),
                "until": r.get("until"),
                "requested": r.get("requested"),
            }
        )
    elif event == "snapshot_loaded":
        glob["snapshot_loads"].append(
            {
                "time": stamp,
                "restored": r.get("restored"),
                "discarded": r.get("discarded"),
                "problem": r.get("problem"),
            }
        )
    elif event == "snapshot_saved":
        count_in(glob["snapshot_saves"], stamp)
        glob["snapshot_saves"]["last_entries"] = r.get("entries")
    elif event == "auth_renewed":
        count_in(glob["auth_renewed"], stamp)
    elif event == "auth_failed":
        failed = glob["auth_failed"]
        count_in(failed, stamp)
        failed["last_reason"] = r.get("reason")
        method = str(r.get("method") or "unknown")
        failed["by_method"][method] = failed["by_method"].get(method, 0) + 1
    elif event == "purged":
        glob["purges"].append(purge_record(stamp, r))
    elif event == "audit_gap":
        glob["audit_gaps"].append({"time": stamp, "lost": r.get("lost"), "since": r.get("since")})


# -- command --------------------------------------------------------------------------


class _Lines:
    """JSON objects from an audit log, counting the lines that are not one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.malformed = 0

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for raw in self._stream:
            line = raw.strip()
            if not line:
                continue  # the audit log ends a torn line after a failed write with a newline
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield record
            else:
                self.malformed += 1


def main(audit_log: Path, since: str | None, path_glob: str | None, as_json: bool) -> int:
    """Run ``sidecar evidence`` on one audit log: print the report (text, or JSON with
    ``as_json``) and return the exit code, 1 when a retired value was presented, so a pipeline
    can gate on it."""
    window = None
    if since is not None:
        try:
            window = parse_duration(since)
        except ValueError as exc:
            print(f"sidecar: --since: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        with audit_log.open("rb") as stream:
            if stream.peek(2)[:2] == b"\x1f\x8b":
                print(
                    f"sidecar: {audit_log} is gzip-compressed; decompress it first "
                    f"(zcat {audit_log} > audit.log) and pass that file",
                    file=sys.stderr,
                )
                return EXIT_BAD_INPUT
            lines = _Lines(stream)
            report = build_report(lines, since=window, path_glob=path_glob)
    except FileNotFoundError:
        print(
            f"sidecar: audit log {audit_log} does not exist; pass the file the sidecar "
            "writes its audit records to",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"sidecar: cannot read audit log {audit_log}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report["input"]["file"] = str(audit_log)
    report["input"]["malformed"] += lines.malformed
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return EXIT_RETIRED_PRESENTED if report["retired_value_presented"] else EXIT_OK
