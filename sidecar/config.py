"""Loading and checking the settings: the YAML file read, merged with the environment, and
every problem found at once, each naming its key and the valid range."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sidecar.backend_settings import AppRoleAuth, KubernetesAuth, TokenAuth
from sidecar.core.durations import format_duration
from sidecar.core.policy import is_literal
from sidecar.settings import Settings
from sidecar.settings_fields import ConfigError, is_loopback, split_hostport

NO_CONFIG = "no config file given (use --config FILE or set SIDECAR_CONFIG)"


def load_settings(path: Path | str | None) -> Settings:
    """Read, merge and check the configuration; raise ConfigError naming every bad key."""
    source = str(path) if path is not None else None
    document: dict[str, Any] = {}
    if path is not None:
        document = _read_yaml(Path(path))
    elif not _sidecar_variables():
        # Nothing to read at all: say that, not "classes: required key is missing".
        raise ConfigError([NO_CONFIG])
    return settings_from(document, source)


def _sidecar_variables() -> dict[str, str]:
    """The SIDECAR_* environment variables that are settings (SIDECAR_CONFIG names the file)."""
    return {
        name.upper(): value
        for name, value in os.environ.items()
        if name.upper().startswith("SIDECAR_") and name.upper() != "SIDECAR_CONFIG"
    }


def settings_from(document: Mapping[str, Any], source: str | None = None) -> Settings:
    """Settings from an already parsed document (plus the environment), fully checked."""
    try:
        settings = Settings(**document)
    except ValidationError as exc:
        problems = _say_where(format_errors(exc))
        # What cannot be validated yet is still worth saying now: every mistake in one run.
        problems += [p for p in _document_checks(document) if p not in problems]
        raise ConfigError(problems, source) from None
    problems = _cross_checks(settings)
    if problems:
        raise ConfigError(problems, source)
    return settings


def _say_where(problems: list[str]) -> list[str]:
    """A problem whose key an environment variable set says so: the fix is in the environment,
    not in the file (``SIDECAR_BACKEND__TIMEOUT`` for ``backend.timeout``)."""
    variables = _sidecar_variables()
    said = []
    for problem in problems:
        key, sep, _ = problem.partition(": ")
        parts = key.replace("[", ".").replace("]", "").split(".") if sep else []
        # the variable that set this key, or one of its parents (a whole section as JSON)
        names = ["SIDECAR_" + "__".join(parts[:n]).upper() for n in range(len(parts), 0, -1)]
        name = next((n for n in names if n in variables), None)
        said.append(problem if name is None else f"{problem} (from the environment: {name})")
    return said


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror}"], str(path)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error{where}: {problem}"], str(path)) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys, got {type(document).__name__}"], str(path)
        )
    odd = [key for key in document if not isinstance(key, str)]
    if odd:
        # Settings(**document) would fail with a bare TypeError ("keywords must be strings").
        raise ConfigError([f"{key!r}: unknown key (keys must be text)" for key in odd], str(path))
    return document


def _unknown_class(i: int, name: str, classes: Iterable[str]) -> str:
    defined = ", ".join(sorted(classes))
    return f"secrets.{i}.class: unknown class {name!r} (defined classes: {defined})"


def _glob_preload(i: int, match: str) -> str:
    return (
        f"secrets.{i}.preload: only a literal path can be preloaded, and {match!r} "
        "has wildcards; add a rule with the exact path"
    )


_BOTH_ADDRESSES = "backend.addresses: give either address or addresses, not both"


def _document_checks(document: Mapping[str, Any]) -> list[str]:
    """The checks across keys that can be made on the file as written, so they are reported
    together with the errors that stopped validation, not one round of fixes later."""
    problems = []
    classes, rules = document.get("classes"), document.get("secrets")
    if isinstance(classes, Mapping) and isinstance(rules, list):
        for i, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                continue
            name, match = rule.get("class"), rule.get("match")
            if isinstance(name, str) and name not in classes:
                problems.append(_unknown_class(i, name, map(str, classes)))
            if rule.get("preload") is True and isinstance(match, str) and not is_literal(match):
                problems.append(_glob_preload(i, match))
    backend = document.get("backend")
    if isinstance(backend, Mapping) and "address" in backend and backend.get("addresses"):
        problems.append(_BOTH_ADDRESSES)
    return problems


def _cross_checks(settings: Settings) -> list[str]:
    problems = []
    for i, rule in enumerate(settings.secrets):
        if rule.class_ not in settings.classes:
            problems.append(_unknown_class(i, rule.class_, settings.classes))
    host, _ = split_hostport(settings.listen)
    if not is_loopback(host) and not settings.allow_remote_callers:
        problems.append(
            f"listen: {host} is not a loopback address, so any host that reaches it could ask "
            "for secrets; use 127.0.0.1 or ::1, or set allow_remote_callers: true deliberately"
        )
    for i, rule in enumerate(settings.secrets):
        if rule.preload and not is_literal(rule.match):
            problems.append(_glob_preload(i, rule.match))
    if "address" in settings.backend.model_fields_set and settings.backend.addresses:
        problems.append(_BOTH_ADDRESSES)
    for name, spec in settings.classes.items():
        if spec.max_cache_age > settings.max_cache_age_ceiling:
            problems.append(
                f"classes.{name}.max_cache_age: above max_cache_age_ceiling "
                f"({format_duration(settings.max_cache_age_ceiling)})"
            )
    if settings.caller_token_file == settings.admin_token_file:
        problems.append("admin_token_file: must differ from caller_token_file")
    if settings.listen == settings.metrics_listen and not settings.listen.endswith(":0"):
        problems.append("metrics_listen: must differ from listen (the two APIs are separate)")
    return problems


_FRIENDLY = {
    "missing": "required key is missing",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "string_type": "must be a text value",
    "dict_type": "must be a mapping of keys",
    "model_type": "must be a mapping of keys",
    "list_type": "must be a list",
}


def format_errors(exc: ValidationError) -> list[str]:
    """Pydantic's validation errors as problem lines, ``key.path: what is wrong``, naming the
    valid keys or range, so one run reports every mistake in the file's own terms."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _display_loc(error["loc"])
        kind = error["type"]
        ctx: Mapping[str, Any] = error.get("ctx") or {}
        if kind == "extra_forbidden":
            valid = _valid_keys(error["loc"][:-1])
            hint = f" (valid keys here: {', '.join(valid)})" if valid else ""
            message = f"unknown key{hint}"
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}.get(
                kind, "<"
            )
            bound = next(iter(ctx.values()))
            message = f"must be {op} {bound}, got {error.get('input')!r}"
        elif kind == "too_short":
            message = "must not be empty"
        elif kind in ("literal_error", "enum"):
            message = f"must be one of {ctx.get('expected')}, got {error.get('input')!r}"
        elif kind == "union_tag_invalid":
            message = f"method must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
        elif kind == "union_tag_not_found":
            message = "method is required (token, approle or kubernetes)"
        elif kind in ("value_error", "assertion_error"):
            message = str(ctx.get("error", error["msg"]))
        else:
            message = _FRIENDLY.get(kind, error["msg"])
        lines.append(f"{loc}: {message}" if loc else message)
    return lines


_AUTH_TAGS = {"token", "approle", "kubernetes"}


def _display_loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    # A discriminated union adds its tag to the location: backend.auth.approle.role_id.
    for i in range(1, len(parts)):
        if parts[i - 1] == "auth" and parts[i] in _AUTH_TAGS:
            del parts[i]
            break
    return ".".join(p if p != "class_" else "class" for p in parts)


def _valid_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: Any = Settings
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part in _AUTH_TAGS:
            model = {"token": TokenAuth, "approle": AppRoleAuth, "kubernetes": KubernetesAuth}[part]
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        if part not in fields:
            # a dict key (a class name): descend into the dict's value model
            continue
        annotation = fields[part].annotation
        model = _inner_model(annotation)
    fields = getattr(model, "model_fields", None) or {}
    return [info.alias or name for name, info in fields.items()]


def _inner_model(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def file_problems(settings: Settings, *, at_start: bool = False) -> tuple[list[str], list[str]]:
    """Files the sidecar will read, checked before it starts: (problems, warnings). A problem
    is a file that is missing or unreadable; a warning, a secret file others may read. (The
    caller and admin token files are created at start when missing.) ``at_start``: a missing
    store credential is only a warning, since the login retries until it appears (an init
    container or an agent may write it a moment later)."""
    auth = settings.backend.auth
    tls = settings.backend.tls
    needed: list[tuple[str, Path | None, bool]] = [  # (key, path, holds a secret)
        ("snapshot.key_file", settings.snapshot.key_file, True),
        ("audit_fingerprint_key_file", settings.audit_fingerprint_key_file, True),
        ("backend.tls.ca_cert", tls.ca_cert, False),
        ("backend.tls.client_cert", tls.client_cert, False),
        ("backend.tls.client_key", tls.client_key, True),
    ]
    if isinstance(auth, TokenAuth):
        needed.append(("backend.auth.token_file", auth.token_file, True))
    elif isinstance(auth, AppRoleAuth):
        needed.append(("backend.auth.role_id_file", auth.role_id_file, False))
        needed.append(("backend.auth.secret_id_file", auth.secret_id_file, True))
    elif isinstance(auth, KubernetesAuth):
        # a projected service account token: short-lived, audience-bound, and 0644 by default
        needed.append(("backend.auth.jwt_file", auth.jwt_file, False))
    credentials = {key for key, _, _ in needed if key.startswith("backend.auth.")}
    problems, warnings = [], []
    for key, path, secret in needed:
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                problems.append(f"{key}: {path} is not a regular file")
                continue
            with path.open("rb"):
                pass
        except FileNotFoundError:
            if at_start and key in credentials:
                warnings.append(
                    f"{key}: {path} does not exist yet; the login retries until it does"
                )
            else:
                problems.append(f"{key}: {path} does not exist")
            continue
        except OSError as exc:
            problems.append(f"{key}: {path} cannot be read ({exc.strerror})")
            continue
        if secret and mode & 0o007:
            warnings.append(
                f"{key}: {path} can be read by any user (mode {stat.S_IMODE(mode):04o}); "
                "make it 0600 or 0640"
            )
    return problems, warnings
