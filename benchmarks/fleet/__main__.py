"""``python -m benchmarks.fleet [--smoke] [--update-docs]``: calibrate the store model against a
real OpenBao, hold the simulator against real sidecars, run every fleet scenario (two at a
time), write benchmarks/results/fleet.json and, with --update-docs, docs/fleet.md and its
charts."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.fleet import calibrate, validate
from benchmarks.fleet.scenarios import catalogue, execute

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="small fleets, short runs (the suite)")
    p.add_argument("--update-docs", action="store_true", help="write docs/fleet.md and charts")
    p.add_argument("--workers", type=int, default=2, help="simulations run at once (default 2)")
    p.add_argument("--only", help="run only this scenario (steady, restart_cold, ...)")
    p.add_argument("--no-validation", action="store_true", help="skip the real sidecars")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/fleet.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the fleet benchmark; 1 when the simulator misses reality by more than 20 %."""
    args = _parser().parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    say("calibrating the store model against a real OpenBao ...")
    if args.smoke:
        calibration = calibrate.measure([1, 8], 0.4, say=lambda m: say(m.strip()))
    else:
        calibration = calibrate.measure([1, 4, 16, 64], 2.0, say=lambda m: say(m.strip()))
    store = calibrate.model(calibration)
    say(
        f"store model: {store.capacity['metadata']:.0f} metadata reads/s, "
        f"{store.capacity['data']:.0f} data reads/s, idle latency "
        f"{store.base_latency * 1000:.2f} ms"
    )
    validation: dict[str, Any] | None = None
    if not args.no_validation:
        if args.smoke:
            validation = validate.validate(
                store, sidecars=4, secrets=10, seconds=14, settle=6, say=lambda m: say(m.strip())
            )
        else:
            validation = validate.validate(store, say=lambda m: say(m.strip()))
    runs = [r for r in catalogue(args.smoke, store) if args.only in (None, r.scenario)]
    say(f"{len(runs)} simulations, {args.workers} at a time ...")
    results: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        # the costliest first (pods x virtual seconds), so the two workers finish together
        order = sorted(runs, key=lambda r: -r.spec.sidecars * r.duration)
        submitted = {id(run): pool.submit(execute, run, store) for run in order}
        futures = [submitted[id(run)] for run in runs]
        for run, future in zip(runs, futures, strict=True):
            result = future.result()
            window = result["in_window"]
            say(
                f"  {run.scenario:12} {run.label:9} {window['mean']:>8.1f} req/s mean, "
                f"peak {window['peak']:>6} ({window['peak_to_mean']:.2f}x), "
                f"{window.get('mean_of_capacity', 0):.1%} of capacity "
                f"[{result['wall_seconds']:.0f}s wall]"
            )
            results.append(result)
    document = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "smoke": args.smoke,
        "machine": _machine(),
        "calibration": calibration,
        "store_model": {"capacity": store.capacity, "base_latency": store.base_latency},
        "validation": validation,
        "runs": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = args.out or ROOT / "benchmarks" / "results" / "fleet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    say(f"results: {out}")
    if args.update_docs:
        from benchmarks.fleet.report import write_docs

        page = write_docs(document, ROOT / "docs")
        say(f"docs: {page}")
    if validation is not None and not validation["within_20_percent"]:
        say("the simulator missed the real sidecars' store request rate by more than 20 %")
        return 1
    return 0


def _machine() -> dict[str, Any]:
    from benchmarks.common import machine
    from sidecar.dev.openbao import bao_binary

    return machine(str(bao_binary()))


if __name__ == "__main__":
    sys.exit(main())
