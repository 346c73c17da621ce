"""load_settings: YAML file, SIDECAR_* environment, Vault's variables; `sidecar check-config`."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import __version__
from sidecar.backend_settings import TokenAuth
from sidecar.cli import main
from sidecar.config import load_settings
from sidecar.core.policy import OnOutage
from sidecar.settings import ConfigError, Settings

BASE: dict[str, Any] = {
    "listen": "127.0.0.1:8100",
    "metrics_listen": "127.0.0.1:9102",
    "log_level": "warning",
    "backend": {
        "address": "https://vault.example.com:8200/",
        "timeout": "3s",
        "auth": {"method": "token", "token_file": "/run/vault/token"},
    },
    "classes": {
        "standard": {
            "business_function": "application database credentials",
            "owner": "team-app",
            "refresh_interval": "1m",
            "max_cache_age": "15m",
            "on_outage": "serve_stale",
            "rotation_method": "new KV v2 version",
            "revocation_steps": "delete in the store, restart the app",
        },
        "payments": {
            "business_function": "payment signing keys",
            "owner": "team-payments",
            "refresh_interval": "30s",
            "max_cache_age": "5m",
            "on_outage": "fail_closed",
            "rotation_method": "new key version with overlap",
            "revocation_steps": "destroy the version, page the owner",
            "preload": True,
        },
    },
    "secrets": [
        {"match": "secret/payments/**", "class": "payments"},
        {"match": "secret/**", "class": "standard"},
    ],
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's shell may leak into these tests."""
    for name in ("VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(("SIDECAR_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name)


def doc() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def write(tmp_path: Path, document: object, name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, document: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, document))
    assert info.value.problems, "a ConfigError must say what is wrong"
    return info.value.problems


def problem_for(problems: list[str], key: str) -> str:
    found = [p for p in problems if p.startswith(f"{key}: ")]
    assert found, f"no problem names {key!r}: {problems}"
    return found[0]


# -- a valid file --------------------------------------------------------------------------


def test_valid_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, doc()))
    assert settings.listen == "127.0.0.1:8100"
    assert settings.log_level == "warning"
    assert settings.backend.address == "https://vault.example.com:8200"  # trailing / dropped
    assert settings.backend.timeout == 3.0
    assert isinstance(settings.backend.auth, TokenAuth)
    assert settings.backend.auth.token_file == Path("/run/vault/token")
    assert settings.backend.auth.env_token is None

    payments = settings.classes["payments"]
    assert payments.refresh_interval == 30.0
    assert payments.max_cache_age == 300.0
    assert payments.on_outage is OnOutage.FAIL_CLOSED
    assert payments.preload is True
    assert settings.classes["standard"].preload is False
    assert [rule.class_ for rule in settings.secrets] == ["payments", "standard"]


def test_policy_classifies_paths_by_the_configured_rules(tmp_path: Path) -> None:
    policy = load_settings(write(tmp_path, doc())).policy()
    payments = policy.classify("secret/payments/stripe")
    assert payments is not None
    assert payments.name == "payments"
    assert payments.owner == "team-payments"
    assert payments.refresh_interval == 30.0
    assert payments.max_cache_age == 300.0
    assert payments.on_outage is OnOutage.FAIL_CLOSED
    assert payments.preload is True
    standard = policy.classify("secret/app/db")
    assert standard is not None
    assert standard.name == "standard"
    assert standard.on_outage is OnOutage.SERVE_STALE
    assert policy.classify("kv/elsewhere") is None


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    minimal = {"classes": doc()["classes"], "secrets": doc()["secrets"]}
    minimal["backend"] = {"auth": {"method": "token", "token_file": "/t"}}
    settings = load_settings(write(tmp_path, minimal))
    assert settings.listen == "127.0.0.1:8100"
    assert settings.log_level == "info"
    assert settings.allow_remote_callers is False
    assert settings.backend.address == "http://127.0.0.1:8200"
    assert settings.backend.timeout == 2.0


def test_remote_listen_is_allowed_when_deliberate(tmp_path: Path) -> None:
    document = doc()
    document["listen"] = "0.0.0.0:8100"
    document["allow_remote_callers"] = True
    assert load_settings(write(tmp_path, document)).listen == "0.0.0.0:8100"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "[::1]"])
def test_loopback_listen_needs_no_opt_in(tmp_path: Path, host: str) -> None:
    document = doc()
    document["listen"] = f"{host}:8100"
    assert load_settings(write(tmp_path, document)).listen == f"{host}:8100"


# -- invalid files: every problem names its key ------------------------------------------


def _set(path: str, value: object) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


def _delete(path: str) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[part]
        del target[last]

    return change


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (_set("colour", "blue"), "colour", "unknown key (valid keys here: listen"),
        (_set("backend.bogus", 1), "backend.bogus", "unknown key (valid keys here: address"),
        (
            _set("classes.standard.colour", "red"),
            "classes.standard.colour",
            "unknown key (valid keys here: business_function",
        ),
        (
            _set("backend.auth.colour", "red"),
            "backend.auth.colour",
            "unknown key (valid keys here: method, token_file)",
        ),
        (_delete("classes.standard.owner"), "classes.standard.owner", "required key is missing"),
        (
            _delete("classes.payments.revocation_steps"),
            "classes.payments.revocation_steps",
            "required key is missing",
        ),
        (_set("classes.standard.owner", ""), "classes.standard.owner", "at least 1 character"),
        (
            _set("classes.standard.refresh_interval", "-5s"),
            "classes.standard.refresh_interval",
            "must not be negative",
        ),
        (
            _set("classes.standard.refresh_interval", "0s"),
            "classes.standard.refresh_interval",
            "must be greater than 0",
        ),
        (
            _set("classes.standard.refresh_interval", "soon"),
            "classes.standard.refresh_interval",
            "expected a duration (e.g. 500ms",
        ),
        (
            _set("classes.standard.max_cache_age", "30s"),
            "classes.standard.max_cache_age",
            "must be at least refresh_interval (1m), got 30s",
        ),
        (
            _set("secrets.1.class", "nope"),
            "secrets.1.class",
            "unknown class 'nope' (defined classes: payments, standard)",
        ),
        (
            _set("classes.standard.on_outage", "retry"),
            "classes.standard.on_outage",
            "must be one of 'serve_stale' or 'fail_closed', got 'retry'",
        ),
        (_set("listen", "0.0.0.0:8100"), "listen", "0.0.0.0 is not a loopback address"),
        (_set("listen", "10.1.2.3:8100"), "listen", "allow_remote_callers"),
        (_set("listen", "8100"), "listen", "expected HOST:PORT"),
        (_set("metrics_listen", "127.0.0.1:8100"), "metrics_listen", "must differ from listen"),
        (_set("log_level", "loud"), "log_level", "must be one of"),
        (_set("backend.timeout", "10m"), "backend.timeout", "must be from 50ms to 5m, got 10m"),
        (_set("backend.address", "vault:8200"), "backend.address", "http:// or https://"),
        (_set("backend.max_concurrency", 0), "backend.max_concurrency", "must be >= 1"),
        (_set("backend.auth", {"method": "ldap"}), "backend.auth", "method must be one of"),
        (_set("classes", {}), "classes", "must not be empty"),
        (_delete("secrets"), "secrets", "required key is missing"),
        (_set("allow_remote_callers", "perhaps"), "allow_remote_callers", "true or false"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, change: Any, key: str, says: str) -> None:
    document = doc()
    change(document)
    problem = problem_for(problems_of(tmp_path, document), key)
    assert says in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    document = doc()
    document["colour"] = "blue"
    del document["classes"]["standard"]["owner"]
    document["classes"]["payments"]["refresh_interval"] = "-1s"
    problems = problems_of(tmp_path, document)
    for key in ("colour", "classes.standard.owner", "classes.payments.refresh_interval"):
        problem_for(problems, key)


def test_config_error_message_names_the_file(tmp_path: Path) -> None:
    document = doc()
    document["colour"] = "blue"
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "colour: unknown key" in str(info.value)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: 127.0.0.1:8100\nclasses: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("YAML syntax error at line ")


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [f"the top level must be a mapping of keys, got {kind}"]


def test_top_level_keys_must_be_text(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("8100: listen\ntrue: yes\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        "8100: unknown key (keys must be text)",
        "True: unknown key (keys must be text)",
    ]


def test_empty_file_reports_the_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    problem_for(info.value.problems, "classes")
    problem_for(info.value.problems, "secrets")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == ["cannot read config file: No such file or directory"]
    assert str(path) in str(info.value)


# -- the environment -----------------------------------------------------------------------


def test_sidecar_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_LOG_LEVEL", "debug")
    monkeypatch.setenv("SIDECAR_BACKEND__TIMEOUT", "7s")
    settings = load_settings(write(tmp_path, doc()))
    assert settings.log_level == "debug"
    assert settings.backend.timeout == 7.0
    # the rest of the file's backend section still applies
    assert settings.backend.address == "https://vault.example.com:8200"
    assert settings.backend.auth.token_file == Path("/run/vault/token")  # type: ignore[union-attr]


def test_invalid_environment_value_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_BACKEND__TIMEOUT", "forever")
    problems = problems_of(tmp_path, doc())
    assert "expected a duration" in problem_for(problems, "backend.timeout")


@pytest.mark.parametrize("name", ["VAULT_ADDR", "BAO_ADDR"])
def test_vault_address_variable_fills_a_missing_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    document = doc()
    del document["backend"]["address"]
    monkeypatch.setenv(name, "https://from-env.example:8200")
    settings = load_settings(write(tmp_path, document))
    assert settings.backend.address == "https://from-env.example:8200"
    assert settings.backend.timeout == 3.0  # merged with, not replacing, the file's backend


def test_vault_address_variable_fills_a_missing_backend_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = doc()
    del document["backend"]
    monkeypatch.setenv("VAULT_ADDR", "https://from-env.example:8200")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.from-env")
    settings = load_settings(write(tmp_path, document))
    assert settings.backend.address == "https://from-env.example:8200"


def test_bao_addr_is_preferred_over_vault_addr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = doc()
    del document["backend"]["address"]
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    monkeypatch.setenv("BAO_ADDR", "https://bao.example:8200")
    assert load_settings(write(tmp_path, document)).backend.address == "https://bao.example:8200"


@pytest.mark.parametrize("name", ["VAULT_ADDR", "BAO_ADDR"])
def test_file_address_beats_vault_address_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "https://from-env.example:8200")
    settings = load_settings(write(tmp_path, doc()))
    assert settings.backend.address == "https://vault.example.com:8200"


def test_sidecar_address_variable_beats_the_file_and_vault_addr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_BACKEND__ADDRESS", "https://sidecar-env.example:8200")
    monkeypatch.setenv("VAULT_ADDR", "https://vault-env.example:8200")
    settings = load_settings(write(tmp_path, doc()))
    assert settings.backend.address == "https://sidecar-env.example:8200"


@pytest.mark.parametrize("name", ["BAO_TOKEN", "VAULT_TOKEN"])
def test_token_auth_without_file_takes_the_environment_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    document = doc()
    document["backend"]["auth"] = {"method": "token"}
    monkeypatch.setenv(name, "hvs.secret-token-value")
    settings = load_settings(write(tmp_path, document))
    auth = settings.backend.auth
    assert isinstance(auth, TokenAuth)
    assert auth.token_file is None
    assert auth.env_token is not None
    assert auth.env_token.get_secret_value() == "hvs.secret-token-value"
    assert "hvs.secret-token-value" not in repr(settings)  # never printed by accident


def test_bao_token_is_preferred_over_vault_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = doc()
    document["backend"]["auth"] = {"method": "token"}
    monkeypatch.setenv("VAULT_TOKEN", "hvs.vault")
    monkeypatch.setenv("BAO_TOKEN", "s.bao")
    auth = load_settings(write(tmp_path, document)).backend.auth
    assert isinstance(auth, TokenAuth)
    assert auth.env_token is not None
    assert auth.env_token.get_secret_value() == "s.bao"


def test_omitted_auth_defaults_to_token_auth_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = doc()
    del document["backend"]["auth"]
    monkeypatch.setenv("VAULT_TOKEN", "hvs.default")
    auth = load_settings(write(tmp_path, document)).backend.auth
    assert isinstance(auth, TokenAuth)
    assert auth.env_token is not None
    assert auth.env_token.get_secret_value() == "hvs.default"


@pytest.mark.parametrize(
    "auth", [{"method": "token"}, None], ids=["explicit_token_auth", "omitted_auth"]
)
def test_token_auth_without_any_token_fails_clearly(
    tmp_path: Path, auth: dict[str, str] | None
) -> None:
    document = doc()
    if auth is None:
        del document["backend"]["auth"]
    else:
        document["backend"]["auth"] = auth
    document["colour"] = "blue"  # reported together with the token problem, not hidden by it
    problems = problems_of(tmp_path, document)
    message = problem_for(problems, "backend.auth")
    assert "token_file" in message
    assert "BAO_TOKEN" in message
    assert "VAULT_TOKEN" in message
    problem_for(problems, "colour")


def test_settings_object_is_immutable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, doc()))
    with pytest.raises(ValueError, match="frozen"):
        settings.log_level = "debug"  # type: ignore[misc]
    assert isinstance(settings, Settings)


# -- sidecar check-config / --version ------------------------------------------------------


def test_check_config_rejects_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = doc()
    del document["classes"]["standard"]["owner"]
    assert main(["check-config", str(write(tmp_path, document))]) == 2
    captured = capsys.readouterr()
    assert "classes.standard.owner: required key is missing" in captured.err
    assert "nothing started" in captured.err
    assert "configuration is valid" not in captured.out


def test_check_config_rejects_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(tmp_path / "nowhere.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_check_config_accepts_a_valid_file_and_lists_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = doc()  # a literal rule of the preloaded class: the one rule that preloads
    document["secrets"].insert(0, {"match": "secret/payments/key", "class": "payments"})
    path = write(tmp_path, document)
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == f"{path}: configuration is valid"
    header = next(line for line in lines if line.startswith("CLASS"))
    assert header.split()[:4] == ["CLASS", "OWNER", "ON", "OUTAGE"]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("standard", "pay"))}
    assert rows["standard"][:5] == ["standard", "team-app", "serve_stale", "1m", "15m"]
    assert rows["payments"][:5] == ["payments", "team-payments", "fail_closed", "30s", "5m"]
    # what people need in an incident: how each class is rotated and revoked
    out = captured.out
    assert "payments: payment signing keys (owner team-payments)" in out
    assert "  rotation:   new key version with overlap" in out
    assert "  revocation: destroy the version, page the owner" in out
    assert "  rotation:   new KV v2 version" in out
    # rules in order, preload as it applies to each rule (a glob is never preloaded)
    rules = [line.split() for line in lines[lines.index("rules, first match wins:") + 1 :]]
    assert rules[0] == ["#", "MATCH", "CLASS", "PRELOAD"]
    assert rules[1] == ["0", "secret/payments/key", "payments", "yes"]
    assert rules[2] == ["1", "secret/payments/**", "payments", "no"]
    assert rules[3] == ["2", "secret/**", "standard", "no"]
    assert "store: https://vault.example.com:8200 (auth: token)" in captured.out


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """``sidecar check-config … | head -1``: the pipe closes before the table is written; the
    command ends quietly (no BrokenPipeError traceback, no "Exception ignored" at exit)."""
    path = write(tmp_path, doc())
    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader_gone.stdout is not None and reader_gone.stderr is not None
    reader_gone.stdout.close()  # long before the command (still importing) writes anything
    err = reader_gone.stderr.read().decode()
    assert reader_gone.wait(60) == 141  # as a shell reports a command ended by SIGPIPE
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert "Exception ignored" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sidecar {__version__}"


# -- the hardening keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "key", "words"),
    [
        (("backend", "max_response_size"), "2GiB", "backend.max_response_size", "1KiB to 1GiB"),
        (("backend", "max_response_size"), "lots", "backend.max_response_size", ""),
        (("http", "max_connections"), 5, "http.max_connections", ">= 16"),
        (("http", "ops_max_connections"), 0, "http.ops_max_connections", ">= 4"),
        (("http", "header_timeout"), "0s", "http.header_timeout", "greater than 0"),
        (("http", "keepalive_timeout"), "1h", "http.keepalive_timeout", "at most 10m"),
        (("http", "colour"), 1, "http.colour", "unknown key"),
        (("classes", "standard", "negative_ttl"), "-1s", "classes.standard.negative_ttl", ""),
        (("token_rotation_grace",), "soon", "token_rotation_grace", "duration"),
        (("revocation_list",), "secret/a?list=true", "revocation_list", "'?'"),
        (("revocation_list",), "sys/mounts", "revocation_list", "KV secrets only"),
    ],
)
def test_hardening_keys_are_checked_and_named(
    tmp_path: Path, path: tuple[str, ...], value: object, key: str, words: str
) -> None:
    document = doc()
    target = document
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
    problem = problem_for(problems_of(tmp_path, document), key)
    assert words in problem


def test_hardening_keys_have_safe_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, doc()))
    assert settings.backend.max_response_size == 4 * 1024 * 1024
    assert (settings.http.max_connections, settings.http.ops_max_connections) == (1024, 128)
    assert (settings.http.header_timeout, settings.http.keepalive_timeout) == (10.0, 30.0)
    assert settings.token_rotation_grace == 30.0
    assert settings.policy().classify("secret/app/db").negative_ttl == 5.0  # type: ignore[union-attr]
    sized = doc()
    sized["backend"]["max_response_size"] = "512KiB"
    assert load_settings(write(tmp_path, sized)).backend.max_response_size == 512 * 1024


def test_every_key_is_in_the_example_config_and_the_configuration_page() -> None:
    from pydantic import BaseModel

    from sidecar.settings import BackendSettings, Settings

    root = Path(__file__).resolve().parent.parent
    example = (root / "examples" / "sidecar.yaml").read_text()
    readme = (root / "docs" / "configuration.md").read_text()

    def keys(model: type[BaseModel], prefix: str) -> list[str]:
        found = []
        for name, info in model.model_fields.items():
            shown = info.alias or name
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += keys(annotation, f"{prefix}{shown}.")
            else:
                found.append(f"{prefix}{shown}")
        return found

    every = [k for k in keys(Settings, "") if k not in ("classes", "secrets")]
    every += keys(BackendSettings, "backend.")
    missing_example = sorted(k for k in every if f"{k.rsplit('.', 1)[-1]}:" not in example)
    assert not missing_example, missing_example
    missing_readme = sorted(
        k for k in every if f"`{k}`" not in readme and f"`{k.rsplit('.', 1)[0]}." not in readme
    )
    assert not missing_readme, missing_readme


# -- where a problem comes from --------------------------------------------------------------


@pytest.mark.parametrize("command", [["run"], ["snapshot", "inspect"]])
def test_no_config_at_all_says_so(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIDECAR_CONFIG", raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "no config file given (use --config FILE or set SIDECAR_CONFIG)" in err
    assert "required key is missing" not in err


def test_a_bad_environment_variable_is_named_as_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_BACKEND__TIMEOUT", "soon")
    monkeypatch.setenv("SIDECAR_LOG_LEVEL", "loud")
    document = doc()
    document["colour"] = "blue"  # a mistake in the file: reported without an env hint
    problems = problems_of(tmp_path, document)
    assert "(from the environment: SIDECAR_BACKEND__TIMEOUT)" in problem_for(
        problems, "backend.timeout"
    )
    assert "(from the environment: SIDECAR_LOG_LEVEL)" in problem_for(problems, "log_level")
    assert "environment" not in problem_for(problems, "colour")


def test_every_mistake_in_one_run_as_the_readme_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown keys, bad values and checks across keys (an unknown class, a glob preload) are
    reported together: no second round of fixes. The README's example is this run's output."""
    document = doc()
    document["backend"]["colour"] = "blue"
    document["classes"]["standard"]["max_cache_age"] = "10s"
    document["secrets"] = [
        {"match": "secret/payments/**", "class": "payment"},
        {"match": "secret/app/*", "class": "standard", "preload": True},
    ]
    path = write(tmp_path, document, name="bad.yaml")
    monkeypatch.chdir(tmp_path)  # the README shows the file by its relative name
    assert main(["check-config", "bad.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("sidecar: invalid configuration in bad.yaml:", 1)[1]
    example = example.split("```", 1)[0]
    shown = ["sidecar: invalid configuration in bad.yaml:", *example.strip("\n").splitlines()]
    assert [line for line in err if line in shown] == shown
    assert any(line.startswith("  secrets.1.preload: only a literal path") for line in err)
    assert path.exists()


def test_auth_method_defaults_to_token_as_documented(tmp_path: Path) -> None:
    document = doc()
    document["backend"]["auth"] = {"token_file": str(tmp_path / "store-token")}
    settings = load_settings(write(tmp_path, document))
    assert isinstance(settings.backend.auth, TokenAuth)
    assert settings.backend.auth.token_file == tmp_path / "store-token"
    # an AppRole block without its method is still read as token auth, and says what is wrong
    document["backend"]["auth"] = {"role_id": "x"}
    problems = problems_of(tmp_path, document)
    assert any(p.startswith("backend.auth.role_id: unknown key") for p in problems), problems


def test_check_config_notes_a_rule_that_allows_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = doc()
    assert main(["check-config", str(write(tmp_path, document))]) == 0
    assert "matches every path" not in capsys.readouterr().out
    document["secrets"].append({"match": "**", "class": "standard"})
    assert main(["check-config", str(write(tmp_path, document))]) == 0
    assert "note: rule 2 ('**') matches every path" in capsys.readouterr().out


def test_check_config_files_are_checked_where_the_sidecar_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--files`` (and every ``sidecar run``) looks at each file the settings name: all
    problems in one run; a secret file others can read is a warning."""
    document = doc()
    document["backend"]["auth"]["token_file"] = str(tmp_path / "no-token")
    document["backend"]["tls"] = {"ca_cert": str(tmp_path)}  # a folder, not a file
    key = tmp_path / "snapshot.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    document["snapshot"] = {"key_file": str(key), "path": str(tmp_path / "snap")}
    path = write(tmp_path, document)
    assert main(["check-config", str(path)]) == 0  # without --files: the file alone (CI)
    capsys.readouterr()

    assert main(["check-config", str(path), "--files"]) == 2
    err = capsys.readouterr().err
    assert f"backend.auth.token_file: {tmp_path / 'no-token'} does not exist" in err
    assert f"backend.tls.ca_cert: {tmp_path} is not a regular file" in err
    assert "warning: snapshot.key_file" in err and "any user (mode 0644)" in err
    assert main(["run", "--config", str(path)]) == 2  # the same, before anything starts
    err = capsys.readouterr().err
    # at start a store credential may still be on its way (an init container writes it): only
    # a warning then, the login retries; the folder where a CA file should be is not
    assert "backend.auth.token_file" in err and "does not exist yet" in err
    assert f"backend.tls.ca_cert: {tmp_path} is not a regular file" in err

    (tmp_path / "no-token").write_text("s.token")
    (tmp_path / "no-token").chmod(0o600)
    del document["backend"]["tls"]
    key.chmod(0o600)
    path = write(tmp_path, document)
    assert main(["check-config", str(path), "--files"]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_prints_the_expected_store_load_and_warns_over_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    document = doc()
    document["secrets"].insert(0, {"match": "secret/app/db", "class": "standard"})
    assert main(["check-config", str(write(tmp_path, document))]) == 0
    out = capsys.readouterr().out
    assert "expected store load of this sidecar in steady state:" in out
    assert "1 literal secret(s)" in out and "each secret read under a glob rule" in out
    assert "warning:" not in out
    document["backend"]["rate_limit"] = {"requests_per_second": 0.001}
    assert main(["check-config", str(write(tmp_path, document))]) == 0  # valid, but said
    out = capsys.readouterr().out
    assert "warning: the named secrets need" in out and "backend.rate_limit" in out

    from sidecar.app import _say_store_load

    with caplog.at_level("WARNING", logger="sidecar"):
        _say_store_load(load_settings(write(tmp_path, document)))
    assert any("more store requests than backend.rate_limit" in r.message for r in caplog.records)
