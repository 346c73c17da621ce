"""The drill's verdicts, pure: each rule breaks when it should and only then."""

from __future__ import annotations

from sidecar.drill.verdict import ClassPolicy, Read, judge

STALE_OK = ClassPolicy("web", "serve_stale", refresh_interval=1, max_cache_age=60)
CLOSED = ClassPolicy("pay", "fail_closed", refresh_interval=1, max_cache_age=60)


def _judge(policy: ClassPolicy, reads: list[Read], **overrides: object) -> list[str]:
    options: dict[str, object] = {
        "fault_seconds": 5.0,
        "fault_ended_at": 10.0,
        "timeout": 2.0,
        "recovery_bound": 5.0,
        "exited": False,
    }
    options.update(overrides)
    return judge("store_blocked", policy, reads, **options).broken  # type: ignore[arg-type]


def _ok(at: float, phase: str, version: int = 1, stale: bool = False, age: float = 0.1) -> Read:
    return Read(at, phase, "secret/app/x", 200, 0.01, version=version, stale=stale, age=age)


def test_a_serve_stale_class_served_stale_through_the_outage_holds():
    reads = [_ok(1, "warmup"), _ok(6, "fault", stale=True, age=3), _ok(11, "recovery")]
    assert _judge(STALE_OK, reads) == []


def test_each_broken_promise_is_named():
    failed = Read(6, "fault", "secret/app/x", 503, 0.01, reason="connection_failed")
    assert any(
        "failed during the fault" in b for b in _judge(STALE_OK, [failed, _ok(11, "recovery")])
    )
    too_old = _ok(6, "fault", stale=True, age=90)
    assert any("past max_cache_age" in b for b in _judge(STALE_OK, [too_old, _ok(11, "recovery")]))
    backwards = [_ok(1, "warmup", version=2), _ok(6, "fault", version=1), _ok(11, "recovery", 2)]
    assert any("older than one already served" in b for b in _judge(STALE_OK, backwards))
    assert any("no fresh read after" in b for b in _judge(STALE_OK, [_ok(1, "warmup")]))
    assert any("recovered 9" in b for b in _judge(STALE_OK, [_ok(19, "recovery")]))
    assert any("exited" in b for b in _judge(STALE_OK, [_ok(11, "recovery")], exited=True))
    stale_closed = [_ok(6, "fault", stale=True, age=3), _ok(11, "recovery")]
    assert any("fail_closed: 1 stale answer" in b for b in _judge(CLOSED, stale_closed))
    slow = [Read(6, "fault", "secret/app/x", 503, 2.5, reason="timeout"), _ok(11, "recovery")]
    assert any("at least backend.timeout" in b for b in _judge(CLOSED, slow))
    fast = [Read(6, "fault", "secret/app/x", 503, 0.01, reason="fail_closed"), _ok(11, "recovery")]
    assert _judge(CLOSED, fast) == []


def test_the_cli_names_every_scenario_the_drill_runs():
    from sidecar.drill.commands import SCENARIO_NAMES
    from sidecar.drill.drill import SCENARIOS

    assert tuple(s.name for s in SCENARIOS) == SCENARIO_NAMES
