"""The drill's verdicts, pure: each rule breaks when it should and only then."""

from __future__ import annotations

from sidecar.drill.verdict import ClassPolicy, Outcome, Read, judge, judge_rotation

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


def test_while_the_store_stays_available_any_failed_read_breaks_every_class():
    failed = Read(6, "fault", "secret/app/x", 503, 0.01, reason="auth_failed")
    reads = [_ok(1, "warmup"), failed, _ok(11, "recovery")]
    for policy in (STALE_OK, CLOSED):
        (why,) = _judge(policy, reads, kind="healthy")
        assert why == "1 read(s) failed while the store stayed available: 503 auth_failed"
    assert (
        _judge(CLOSED, [_ok(1, "warmup"), _ok(6, "fault"), _ok(11, "recovery")], kind="healthy")
        == []
    )


def test_a_value_served_past_max_cache_age_by_the_drills_clock_breaks_whatever_age_it_claims():
    short = ClassPolicy("web", "serve_stale", refresh_interval=1, max_cache_age=3)
    claims_young = _ok(9, "fault", stale=True, age=0.5)  # 6 s after the cut, says 0.5 s old
    broken = _judge(short, [claims_young, _ok(11, "recovery")], fault_started_at=3.0)
    assert broken == ["1 value(s) served more than max_cache_age (3s) after the store was cut off"]
    in_time = _ok(5, "fault", stale=True, age=2)
    assert _judge(short, [in_time, _ok(11, "recovery")], fault_started_at=3.0) == []
    refused = Read(9, "fault", "secret/app/x", 503, 0.01, reason="max_cache_age_exceeded")
    assert _judge(short, [in_time, refused, _ok(11, "recovery")], fault_started_at=3.0) == []


def _rotation(policy: ClassPolicy, reads: list[Read], end: float = 20.0) -> Outcome:
    outcome = Outcome("rotation", policy.name)
    judge_rotation(outcome, policy, reads, {"secret/app/x": 5}, 4.0, end, slack=2.0)
    return outcome


def test_rotation_readers_must_reach_the_new_version_within_refresh_interval():
    overlap = ClassPolicy("web", "serve_stale", refresh_interval=2, max_cache_age=60, overlap=10)
    moved = _ok(5, "fault", version=5)
    previous = Read(6, "fault", "secret/app/x", 200, 0.01, version=4, previous=True)
    assert _rotation(overlap, [_ok(3, "fault", 4), moved, previous]).broken == []

    late = _rotation(overlap, [_ok(3, "fault", 4), _ok(9, "fault", version=5), previous])
    assert late.broken == [
        "secret/app/x: readers got version 5 5.0s after it was written (refresh_interval 2s)"
    ]
    never = _rotation(overlap, [_ok(3, "fault", 4), _ok(12, "fault", version=4)])
    assert never.broken == [
        "secret/app/x: readers never got version 5 in 16s (refresh_interval 2s)"
    ]
    short = _rotation(
        overlap, [_ok(3, "fault", 4)], end=7.0
    )  # the phase was shorter than the bound
    assert short.broken == [] and "not judged" in short.notes[0]

    gone = Read(6, "fault", "secret/app/x", 410, 0.01, reason="version_retired", previous=True)
    assert _rotation(overlap, [moved, gone]).broken == [
        "secret/app/x: 1 ?version=previous read(s) during the overlap did not get version 4"
    ]
    no_overlap = ClassPolicy("web", "serve_stale", refresh_interval=2, max_cache_age=60)
    assert _rotation(no_overlap, [moved, gone]).broken == []  # 410 is what no overlap means


def test_previous_reads_are_counted_apart_and_are_not_older_versions():
    previous = Read(6, "fault", "secret/app/x", 200, 0.01, version=4, previous=True)
    outcome = judge(
        "rotation",
        STALE_OK,
        [_ok(5, "fault", version=5), previous, _ok(11, "recovery", version=5)],
        fault_seconds=5.0,
        fault_ended_at=10.0,
        timeout=2.0,
        recovery_bound=5.0,
        exited=False,
        kind="healthy",
    )
    assert outcome.previous_served == 1 and outcome.older == 0 and outcome.holds


def test_a_revoked_version_served_breaks_the_class():
    from sidecar.core.revocations import Revocations
    from sidecar.drill.verdict import judge_revoked

    listed = Revocations()
    listed.replace([("secret/app/x", 1, "leaked")])
    outcome = Outcome("store_blocked", "web")
    judge_revoked(outcome, [_ok(1, "warmup", version=2), _ok(2, "fault", version=2)], listed.covers)
    assert outcome.revoked == 0 and outcome.holds
    judge_revoked(outcome, [_ok(3, "fault", version=1)], listed.covers)
    assert outcome.revoked == 1 and outcome.broken == ["1 read(s) served a revoked version"]
