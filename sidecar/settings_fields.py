"""What every settings section is made of: durations, hosts and ports, the strict base model,
and the error that names each bad key."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from sidecar.core.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
Text = Annotated[str, Field(min_length=1)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0 (e.g. 500ms, 30s, 15m)")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


class ConfigError(Exception):
    """Invalid configuration. ``problems`` are lines of the form ``key.path: what is wrong``."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in problems))


class Strict(BaseModel):
    """The base of every settings section: an unknown key is an error (a typo must not pass
    silently), and settings cannot change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as host and port, for binding and for the
    loopback check; ValueError says the expected form."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8100, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only, so a secrets API open to the network
    is refused unless allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostport(value: str) -> str:
    split_hostport(value)
    return value


HostPort = Annotated[str, AfterValidator(_hostport)]
