"""Path classification by glob rules and freshness of cached values by class."""

from __future__ import annotations

import pytest

from sidecar.core.policy import Freshness, OnOutage, Policy, Rule, SecretClass, glob_regex


def make_class(
    name: str = "standard",
    *,
    refresh: float = 60.0,
    max_age: float = 600.0,
    on_outage: OnOutage = OnOutage.SERVE_STALE,
) -> SecretClass:
    return SecretClass(
        name=name,
        business_function="payments",
        owner="team-payments",
        refresh_interval=refresh,
        max_cache_age=max_age,
        on_outage=on_outage,
        rotation_method="vault rotate",
        revocation_steps="revoke in vault",
    )


def matches(pattern: str, path: str) -> bool:
    return Rule(pattern, make_class()).matches(path)


# -- glob semantics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # ** spans any number of segments
        ("secret/**", "secret/db", True),
        ("secret/**", "secret/app/db", True),
        ("secret/**", "secret/a/b/c/d", True),
        ("secret/**", "secret", False),
        ("secret/**", "other/db", False),
        ("**", "anything/at/all", True),
        ("secret/**/db", "secret/db", True),
        ("secret/**/db", "secret/app/db", True),
        ("secret/**/db", "secret/a/b/db", True),
        ("secret/**/db", "secret/app/dbx", False),
        # **/db: db at any depth, including the top
        ("**/db", "db", True),
        ("**/db", "x/db", True),
        ("**/db", "x/y/z/db", True),
        ("**/db", "xdb", False),
        ("**/db", "x/db/extra", False),
        # * stays within one segment
        ("secret/*", "secret/db", True),
        ("secret/*", "secret/app/db", False),
        ("secret/*/db", "secret/app/db", True),
        ("secret/*/db", "secret/a/b/db", False),
        ("secret/app-*", "secret/app-prod", True),
        ("secret/app-*", "secret/app-prod/db", False),
        ("*", "db", True),
        ("*", "a/db", False),
        # ? is exactly one character, never a slash
        ("secret/db?", "secret/db1", True),
        ("secret/db?", "secret/db", False),
        ("secret/db?", "secret/db12", False),
        ("secret?db", "secret/db", False),
        # whole-path match, not a search
        ("secret/db", "secret/db", True),
        ("secret/db", "xsecret/db", False),
        ("secret/db", "secret/db/x", False),
        ("secret/db", "Secret/db", False),
    ],
)
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


@pytest.mark.parametrize(
    ("pattern", "literal_match", "not_a_match"),
    [
        ("secret/app.db", "secret/app.db", "secret/appXdb"),
        ("secret/c++", "secret/c++", "secret/cc"),
        ("secret/a+b", "secret/a+b", "secret/aab"),
        ("secret/(x)", "secret/(x)", "secret/x"),
        ("secret/[ab]", "secret/[ab]", "secret/a"),
        ("secret/x|y", "secret/x|y", "secret/y"),
        ("secret/$HOME^", "secret/$HOME^", "secret/HOME"),
        ("secret/a{2}", "secret/a{2}", "secret/aa"),
        ("secret/back\\slash", "secret/back\\slash", "secret/backslash"),
    ],
)
def test_regex_metacharacters_are_literal(
    pattern: str, literal_match: str, not_a_match: str
) -> None:
    assert matches(pattern, literal_match)
    assert not matches(pattern, not_a_match)


def test_wildcards_match_any_character_except_slash() -> None:
    # DOTALL: ** spans any character, including a newline, within the path
    assert glob_regex("secret/**").fullmatch("secret/a\nb") is not None
    assert glob_regex("secret/*").fullmatch("secret/a\nb") is not None
    assert glob_regex("secret/*").fullmatch("secret/a/b") is None


# -- classification ------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    critical = make_class("critical", on_outage=OnOutage.FAIL_CLOSED)
    standard = make_class("standard")
    fallback = make_class("fallback")
    policy = Policy(
        [
            Rule("secret/payments/**", critical),
            Rule("secret/**", standard),
            Rule("**", fallback),
        ]
    )
    assert policy.classify("secret/payments/stripe") is critical
    assert policy.classify("secret/app/db") is standard
    assert policy.classify("kv/other") is fallback


def test_order_decides_not_specificity() -> None:
    broad = make_class("broad")
    narrow = make_class("narrow")
    policy = Policy([Rule("secret/**", broad), Rule("secret/payments/**", narrow)])
    # the narrower rule comes second, so it never wins
    assert policy.classify("secret/payments/stripe") is broad


def test_unmatched_path_has_no_class() -> None:
    policy = Policy([Rule("secret/app/*", make_class())])
    assert policy.classify("secret/app/db") is not None
    assert policy.classify("secret/other/db") is None
    assert policy.classify("secret/app/db/nested") is None
    assert Policy([]).classify("secret/app/db") is None


def test_policy_keeps_rules_in_order() -> None:
    rules = [Rule("a/**", make_class("a")), Rule("b/**", make_class("b"))]
    policy = Policy(iter(rules))  # any iterable, consumed once
    assert policy.rules == tuple(rules)
    assert policy.classify("b/x") is rules[1].secret_class


# -- freshness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.0, Freshness.FRESH),
        (59.999, Freshness.FRESH),
        (60.0, Freshness.STALE),  # refresh_interval itself is no longer fresh
        (300.0, Freshness.STALE),
        (599.999, Freshness.STALE),
        (600.0, Freshness.EXPIRED),  # max_cache_age itself is expired
        (10_000.0, Freshness.EXPIRED),
    ],
)
def test_freshness_boundaries(age: float, expected: Freshness) -> None:
    assert make_class(refresh=60.0, max_age=600.0).freshness(age) is expected


def test_freshness_when_refresh_equals_max_age() -> None:
    cls = make_class(refresh=60.0, max_age=60.0)
    assert cls.freshness(59.0) is Freshness.FRESH
    assert cls.freshness(60.0) is Freshness.EXPIRED


@pytest.mark.parametrize(
    ("age", "serve_stale", "fail_closed"),
    [
        (0.0, True, False),
        (59.0, True, False),
        (60.0, True, False),
        (599.999, True, False),
        (600.0, False, False),
        (5000.0, False, False),
    ],
)
def test_may_serve_stale(age: float, serve_stale: bool, fail_closed: bool) -> None:
    lenient = make_class(on_outage=OnOutage.SERVE_STALE)
    strict = make_class(on_outage=OnOutage.FAIL_CLOSED)
    assert lenient.may_serve_stale(age) is serve_stale
    assert strict.may_serve_stale(age) is fail_closed


def test_on_outage_values_are_the_config_spellings() -> None:
    assert OnOutage("serve_stale") is OnOutage.SERVE_STALE
    assert OnOutage("fail_closed") is OnOutage.FAIL_CLOSED
    with pytest.raises(ValueError, match="bogus"):
        OnOutage("bogus")
