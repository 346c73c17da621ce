"""Command line: ``sidecar run``, ``check-config``, ``snapshot inspect``, ``evidence``, ``demo``,
``--version``.

Exit codes: 0 success, 1 runtime failure (e.g. a port in use, or a snapshot with a problem),
2 invalid configuration or usage. ``sidecar evidence`` has its own (see sidecar/ops/evidence.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from sidecar import __version__
from sidecar.config import file_problems, load_settings
from sidecar.core.durations import format_duration
from sidecar.core.load import describe, estimate
from sidecar.drill.commands import add_drill, add_faultproxy, drill_main, faultproxy_main
from sidecar.http.tokens import CallerTokenError
from sidecar.ops import logs
from sidecar.ops.columns import aligned
from sidecar.settings import ConfigError, Settings

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command ended by SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Serve an application's secrets on localhost, cached by intent, in front "
        "of Vault or OpenBao.",
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the sidecar in the foreground")
    run.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SIDECAR_CONFIG"),
        help="YAML config file (default: $SIDECAR_CONFIG)",
    )

    check = commands.add_parser("check-config", help="validate a config file and show its classes")
    check.add_argument("config", type=Path)
    check.add_argument(
        "--files",
        action="store_true",
        help="also check, as this machine sees them, the files it names (token, keys, TLS): "
        "run it where the sidecar will run",
    )
    check.add_argument(
        "--check-store",
        action="store_true",
        help="also log in as the sidecar and ask the store, rule by rule, whether its policy "
        "allows the reads (a literal path is read once; no value is shown); exit 1 if not",
    )

    snapshot = commands.add_parser("snapshot", help="look inside the encrypted snapshot")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="ACTION")
    inspect = snapshot_commands.add_parser(
        "inspect", help="paths, versions, classes, ages, and what a start would discard (no values)"
    )
    inspect.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SIDECAR_CONFIG"),
        help="YAML config file (default: $SIDECAR_CONFIG)",
    )
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    demo = commands.add_parser(
        "demo", help="start a local OpenBao dev server with demo secrets and run against it"
    )
    demo.add_argument(
        "action",
        nargs="?",
        choices=["rotate"],
        help="rotate: write the demo signing key again (previous, then current), so the "
        "overlap examples work for another 2 minutes",
    )
    demo.add_argument("--dir", type=Path, default=Path(".demo"), help="where demo files go")
    demo.add_argument("--port", type=int, default=8100, help="secrets API port (default 8100)")

    status = commands.add_parser(
        "status",
        help="what the running sidecar holds: each secret's class, owner, version, age and "
        "state; store nodes, token, snapshot (with the admin token from its config)",
        description="Exit codes: 0 printed, 1 the sidecar could not be asked, 2 bad config.",
    )
    status.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SIDECAR_CONFIG"),
        help="the sidecar's YAML config file (default: $SIDECAR_CONFIG)",
    )
    status.add_argument("--json", action="store_true", help="the report as JSON")

    admin = commands.add_parser(
        "admin",
        help="emergency controls of the running sidecar, with the admin token from its config",
        description="Exit codes: 0 done, 1 refused or the sidecar could not be asked, "
        "2 bad config.",
    )
    actions = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    purge = actions.add_parser(
        "purge", help="drop values from memory and snapshot: the next read goes to the store"
    )
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("--path", help="one secret path, e.g. secret/app/db")
    what.add_argument("--prefix", help="every path under a prefix, e.g. secret/app/")
    what.add_argument("--all", action="store_true", help="everything cached")
    extend = actions.add_parser(
        "extend",
        help="during an incident, serve a serve_stale class's values longer (audited; reverts)",
    )
    extend.add_argument("--class", dest="secret_class", required=True, help="the class")
    extend.add_argument("--max-cache-age", required=True, help="the longer limit, e.g. 2h")
    extend.add_argument("--for", dest="duration", required=True, help="how long, e.g. 1h")
    for action in (purge, extend):
        action.add_argument(
            "--config",
            type=Path,
            default=os.environ.get("SIDECAR_CONFIG"),
            help="the sidecar's YAML config file (default: $SIDECAR_CONFIG)",
        )

    add_faultproxy(commands)
    add_drill(commands)

    evidence = commands.add_parser(
        "evidence",
        help="per-secret rotations, presentations, failures and purges from the audit log",
        description="Exit codes: 0 report printed, 1 a retired secret value was presented "
        "within the window (use it to gate a pipeline), 2 bad input.",
    )
    evidence.add_argument(
        "--audit-log", type=Path, required=True, metavar="PATH", help="the audit log to read"
    )
    evidence.add_argument("--since", metavar="DURATION", help="only this recent, e.g. 30d")
    evidence.add_argument(
        "--path", metavar="GLOB", help="only secrets whose path matches, e.g. secret/app/**"
    )
    evidence.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sidecar`` command: run the subcommand ``argv`` names and return its exit code (usage
    help and 2 when none is given). A reader that stops early (``| head``) ends the output
    quietly, not with a traceback."""
    try:
        status = _dispatch(_parser().parse_args(argv))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except BrokenPipeError:
        # As Python's documentation recommends: point stdout at /dev/null so the flush at
        # interpreter exit does not fail again, and exit as a cut-off write does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        return _check(args.config, files=args.files, store=args.check_store)
    if args.command == "snapshot" and args.snapshot_command == "inspect":
        return _inspect_snapshot(args.config, as_json=args.json)
    if args.command == "demo":
        try:
            from sidecar.dev.demo import rotate_demo, run_demo
        except ImportError:
            print(
                "sidecar: the demo ships with the source tree, not the installed package; "
                "run `make run` in a checkout of secrets-sidecar",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if args.action == "rotate":
            return rotate_demo(args.dir)
        return run_demo(args.dir, args.port, _run)
    if args.command == "status":
        from sidecar.ops.status_text import main as status_main

        settings = _load(args.config)
        return EXIT_CONFIG if settings is None else status_main(settings, as_json=args.json)
    if args.command == "admin":
        from sidecar.ops.admin_client import extend_main, purge_main

        settings = _load(args.config)
        if settings is None:
            return EXIT_CONFIG
        if args.admin_command == "purge":
            return purge_main(settings, path=args.path, prefix=args.prefix, every=args.all)
        return extend_main(
            settings,
            secret_class=args.secret_class,
            max_cache_age=args.max_cache_age,
            duration=args.duration,
        )
    if args.command == "faultproxy":
        return faultproxy_main(args)
    if args.command == "drill":
        return drill_main(args)
    if args.command == "evidence":
        from sidecar.ops.evidence import main as evidence_main

        return evidence_main(args.audit_log, args.since, args.path, args.json)
    _parser().print_help(sys.stderr)
    return EXIT_CONFIG


def _load(path: Path | None) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        print("sidecar: nothing started; fix the keys above and run again", file=sys.stderr)
        return None


def _run(path: Path | None) -> int:
    settings = _load(path)
    if settings is None or not _files_ready(settings, path, at_start=True):
        return EXIT_CONFIG
    logs.configure(settings.log_level)
    from sidecar.server import ListenError, serve

    try:
        _event_loop_run(serve(settings))
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CallerTokenError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_OK


def _event_loop_run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def _files_ready(settings: Settings, path: Path | None, *, at_start: bool = False) -> bool:
    """Every file the settings name is there and readable (all problems said at once)."""
    problems, warnings = file_problems(settings, at_start=at_start)
    for warning in warnings:
        print(f"sidecar: warning: {warning}", file=sys.stderr)
    if problems:
        print(f"sidecar: files named in {path or 'the configuration'}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print("sidecar: nothing started; fix the files above and run again", file=sys.stderr)
    return not problems


def _check(path: Path, *, files: bool = False, store: bool = False) -> int:
    settings = _load(path)
    if settings is None or ((files or store) and not _files_ready(settings, path)):
        return EXIT_CONFIG
    print(f"{path}: configuration is valid\n")
    policy = settings.policy()
    _table(
        [("CLASS", "OWNER", "ON OUTAGE", "REFRESH", "MAX AGE", "OVERLAP")]
        + [
            (
                name,
                spec.owner,
                spec.on_outage.value,
                format_duration(spec.refresh_interval),
                format_duration(spec.max_cache_age),
                format_duration(spec.overlap) if spec.overlap else "-",
            )
            for name, spec in settings.classes.items()
        ]
    )
    for name, spec in settings.classes.items():
        print(f"\n{name}: {spec.business_function} (owner {spec.owner})")
        print(f"  rotation:   {spec.rotation_method}")
        print(f"  revocation: {spec.revocation_steps}")
        if not any(r.class_ == name for r in settings.secrets):
            print("  (no rule uses it)")
    print("\nrules, first match wins:")
    preloaded = set(policy.preload_paths())
    _table(
        [("#", "MATCH", "CLASS", "PRELOAD")]
        + [
            (str(i), rule.match, rule.class_, "yes" if rule.match in preloaded else "no")
            for i, rule in enumerate(settings.secrets)
        ]
    )
    for i, rule in enumerate(settings.secrets):
        if rule.match.strip("/") == "**":
            print(
                f"\nnote: rule {i} ({rule.match!r}) matches every path, so the rules allow "
                "whatever the sidecar's store token can read; list the paths the app needs"
            )
    preloads = policy.preload_paths()
    print(f"\npreloaded at start ({len(preloads)}): {', '.join(preloads) or 'none'}")
    poll = settings.revocation_poll_interval if settings.revocation_list else None
    budget = settings.backend.rate_limit.requests_per_second
    for line in describe(estimate(policy, poll, budget)):
        print(line)
    print(f"store: {', '.join(settings.backend.urls)} (auth: {settings.backend.auth.method})")
    print(f"secrets API: {settings.listen}   ops API: {settings.metrics_listen}")
    snapshot = settings.snapshot
    if snapshot.key_file is None:
        print("snapshot: off (no snapshot.key_file)")
    else:
        print(f"snapshot: {snapshot.path} every {format_duration(snapshot.interval)}")
    if store:
        return _check_store(settings)
    return EXIT_OK


def _check_store(settings: Settings) -> int:
    """Ask the store, with the sidecar's identity, about every rule; 1 if any read is refused."""
    from sidecar.store.preflight import check_rules

    print(f"\nasking the store as the sidecar ({settings.backend.auth.method} auth):")
    checks = asyncio.run(check_rules(settings.backend, [r.match for r in settings.secrets]))
    _table([("RULE", "STORE")] + [(c.match, ("ok: " if c.ok else "NO: ") + c.said) for c in checks])
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILURE


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Rows in aligned columns (the last one unpadded)."""
    for line in aligned(rows):
        print(line)


def _inspect_snapshot(path: Path | None, *, as_json: bool) -> int:
    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    from sidecar.ops.warmstart import inspect_snapshot

    try:
        report = inspect_snapshot(settings)
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK if report.get("problem") is None else EXIT_FAILURE
    print(f"snapshot: {report['file']}")
    if report.get("written_at"):
        print(f"written:  {report['written_at']}")
    if report.get("problem"):
        print(f"PROBLEM:  {report['problem']}")
    rows = [("PATH", "VERSION", "CLASS", "AGE", "AT START")]
    for item in report["entries"]:
        rows.append(
            (
                item["path"] + ("" if item["held_as"] == "latest" else f" ({item['held_as']})"),
                "-" if item["version"] is None else str(item["version"]),
                item["class"] or "-",
                format_duration(round(item["age_seconds"])),
                "restore" if item["discard"] is None else f"discard: {item['discard']}",
            )
        )
    if len(rows) > 1:
        _table(rows)
    print(f"\n{report['restorable']} of {len(report['entries'])} entries would be restored")
    return EXIT_OK if report.get("problem") is None else EXIT_FAILURE
