"""The ``sidecar faultproxy`` command line: run the proxy, or set, show and clear its fault
through the control API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from sidecar.drill.faults import Mode

DEFAULT_LISTEN = "127.0.0.1:18200"
DEFAULT_CONTROL = "127.0.0.1:18299"
EXIT_BAD_INPUT = 2


def add_faultproxy(commands: Any) -> None:
    """The ``faultproxy`` subcommand and its actions."""
    parser = commands.add_parser(
        "faultproxy",
        help="a fault-injecting proxy between sidecars and the store, for game days",
        description="Exit codes: 0 done, 1 the proxy could not be asked or refused, 2 bad input.",
    )
    actions = parser.add_subparsers(dest="faultproxy_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="proxy the stores, one listener each, from --listen up")
    run.add_argument(
        "--store",
        action="append",
        required=True,
        metavar="URL",
        help="a store node (repeat for more)",
    )
    run.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"first store listener (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--control",
        default=DEFAULT_CONTROL,
        metavar="HOST:PORT",
        help=f"control API (default {DEFAULT_CONTROL}; loopback only)",
    )
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --listen be a non-loopback address (staging clusters)",
    )
    set_ = actions.add_parser(
        "set", help="put a fault in force, e.g. `set latency 3s`, `set error 503`"
    )
    set_.add_argument("mode", choices=[m.value for m in Mode if m is not Mode.PASS])
    set_.add_argument(
        "value", nargs="?", help="latency: the delay; error: the status; ratelimit: Retry-After"
    )
    set_.add_argument("--jitter", help="latency: ± this much, e.g. 500ms")
    set_.add_argument("--fraction", type=float, help="only this share of the requests, 0..1")
    set_.add_argument("--period", help="flap: on for this long, off for as long, e.g. 10s")
    set_.add_argument("--prefix", help="only store paths under this prefix, e.g. secret/app/")
    set_.add_argument("--node", type=int, help="only this store node (0 for the first --store)")
    for action in (
        set_,
        actions.add_parser("clear", help="no fault: forward everything"),
        actions.add_parser("show", help="the fault in force and the counts"),
    ):
        action.add_argument("--control", default=DEFAULT_CONTROL, metavar="HOST:PORT")


def faultproxy_main(args: argparse.Namespace) -> int:
    """Run the action ``args`` names; the exit code."""
    if args.faultproxy_command == "run":
        return _run(args)
    from sidecar.drill.faultproxy import control_request

    try:
        if args.faultproxy_command == "clear":
            answer = control_request(args.control, "DELETE")
        elif args.faultproxy_command == "show":
            answer = control_request(args.control, "GET")
        else:
            answer = control_request(args.control, "PUT", _fault_body(args))
    except OSError as exc:
        print(
            f"sidecar: {exc} (is `sidecar faultproxy run` listening on {args.control}?)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(answer, sort_keys=True))
    return 0


def _fault_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"mode": args.mode}
    if args.value is not None:
        if args.mode == Mode.LATENCY:
            body["delay"] = args.value
        elif args.mode == Mode.ERROR:
            body["status"] = int(args.value) if args.value.isdigit() else args.value
        elif args.mode == Mode.RATE_LIMIT:
            body["retry_after"] = args.value
    for key in ("jitter", "fraction", "period", "prefix", "node"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    return body


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _run(args: argparse.Namespace) -> int:
    from sidecar.drill.faultproxy import FaultProxy, serve
    from sidecar.ops.logs import configure

    try:
        host, port = _address(args.listen, "--listen")
        control = _address(args.control, "--control")
        if not _loopback(control[0]):
            raise ValueError(
                "--control must be a loopback address: it changes what the store answers"
            )
        if not _loopback(host) and not args.allow_remote:
            raise ValueError(
                f"--listen {args.listen} is not loopback; add --allow-remote to mean it"
            )
        for store in args.store:
            if not store.startswith(("http://", "https://")):
                raise ValueError(f"--store must be an http(s):// URL, got {store!r}")
    except ValueError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure("info")
    proxy = FaultProxy(args.store, host, port, control)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
            asyncio.run(serve(proxy))
    except OSError as exc:
        print(f"sidecar: the fault proxy cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


# the drill's scenarios, named here so that building the parser imports no aiohttp (a test
# keeps this equal to sidecar.drill.drill.SCENARIOS)
SCENARIO_NAMES = (
    "store_blocked",
    "store_refusing",
    "store_slow",
    "stale_node",
    "rate_limited",
    "token_revoked",
    "rotation",
    "restart_in_outage",
    "restart_storm",
    "outage_past_max_age",
)


def add_drill(commands: Any) -> None:
    """The ``drill`` subcommand."""
    parser = commands.add_parser(
        "drill",
        help="game day: the sidecar behind the fault proxy, failures under live reads, a verdict "
        "per class",
        description="Exit codes: 0 every class behaved as declared, 1 a verdict failed (or "
        "nothing was judged: every scenario chosen was skipped), 2 bad input.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SIDECAR_CONFIG"),
        help="the service's sidecar config (default: $SIDECAR_CONFIG)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_NAMES,
        help="run only these (repeat); default: all",
    )
    parser.add_argument("--warmup", default="3s", help="reads before each fault (default 3s)")
    parser.add_argument("--fault", default="8s", help="how long each fault lasts (default 8s)")
    parser.add_argument(
        "--recovery", help="reads after each fault (default: 8s, at least backend.backoff.cap + 5s)"
    )
    parser.add_argument("--readers", type=int, default=4, help="concurrent readers (default 4)")
    parser.add_argument(
        "--storm", type=int, default=8, help="sidecars the restart storm starts at once (default 8)"
    )
    parser.add_argument(
        "--long-limit",
        default="2m",
        help="the longest a fault may be stretched: the outage past max_cache_age, a rotation "
        "or warm-up that must cover a refresh_interval (default 2m)",
    )
    parser.add_argument(
        "--operator-token-file",
        type=Path,
        metavar="FILE",
        help="a store token that may write the config's secrets and revoke tokens; without it, "
        "stale_node, rotation and token_revoked are skipped. The drill writes each secret's "
        "data again as a new version: the values do not change",
    )
    parser.add_argument(
        "--store-audit-log",
        type=Path,
        action="append",
        metavar="FILE",
        help="the store's file audit log (repeat for each node): store requests are counted "
        "there; default: at the fault proxy",
    )
    parser.add_argument("--json", action="store_true", help="the outcomes as JSON")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.md",
        help="also write a Markdown report with a timeline chart per scenario",
    )


def drill_main(args: argparse.Namespace) -> int:
    """Run the drill ``args`` describes; 0 when every verdict holds."""
    from sidecar.config import load_settings
    from sidecar.core.durations import parse_duration
    from sidecar.drill.drill import Drill, Phases
    from sidecar.drill.scenarios import by_name, render_table, write_report
    from sidecar.settings import ConfigError

    try:
        if args.config is None:
            raise ValueError("give --config (or SIDECAR_CONFIG): the service's sidecar config")
        settings = load_settings(args.config)
        document = yaml.safe_load(Path(args.config).read_text()) or {}
        recovery = (
            parse_duration(args.recovery)
            if args.recovery
            else max(8.0, settings.backend.backoff.cap + 5)
        )
        phases = Phases(
            parse_duration(args.warmup),
            parse_duration(args.fault),
            recovery,
            args.readers,
            args.storm,
            parse_duration(args.long_limit),
        )
        if not 1 <= args.readers <= 64:
            raise ValueError("--readers must be from 1 to 64")
        if not 1 <= args.storm <= 64:
            raise ValueError("--storm must be from 1 to 64")
        operator_token = None
        if args.operator_token_file is not None:
            operator_token = args.operator_token_file.read_text().strip()
            if not operator_token:
                raise ValueError(f"--operator-token-file {args.operator_token_file} is empty")
        for audit in args.store_audit_log or []:
            if not audit.is_file():
                raise ValueError(f"--store-audit-log {audit}: no such file")
    except (ConfigError, ValueError, OSError) as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    drill = Drill(
        settings,
        document,
        phases,
        lambda line: print(f"drill: {line}", file=sys.stderr, flush=True),
        operator_token=operator_token,
        audit_logs=args.store_audit_log,
    )
    try:
        outcomes = asyncio.run(drill.run(by_name(args.scenario)))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"sidecar: the drill could not run: {exc}", file=sys.stderr)
        return 1
    if args.json:
        document = {"outcomes": [o.as_dict() for o in outcomes], "skipped": drill.skipped}
        print(json.dumps(document, indent=2))
    else:
        print(render_table(outcomes, drill.skipped))
    if not outcomes:
        print(
            "sidecar: no verdict: every scenario chosen was skipped (reasons above)",
            file=sys.stderr,
        )
        return 1
    if args.report is not None:
        for note in write_report(
            args.report,
            outcomes,
            drill.timelines,
            f"sidecar drill --config {args.config}",
            drill.skipped,
        ):
            print(f"drill: {note}", file=sys.stderr)
    return 0 if all(o.holds for o in outcomes) else 1
