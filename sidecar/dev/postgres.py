"""A throwaway PostgreSQL cluster for tests and the demo: Debian's ``postgresql`` binaries,
``initdb`` into a scratch folder, listening on a free loopback port (TCP with passwords, a
socket in the folder), stopped and gone with the folder. As root the server runs as the
``postgres`` user (PostgreSQL refuses to run as root); otherwise as whoever runs this."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sidecar.dev.openbao import DevStoreError, free_port

SUPERUSER = "postgres"


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version), if installed."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


class ThrowawayPostgres:
    """One PostgreSQL cluster in ``workdir``; ``start``/``stop`` it, or use it as a context
    manager. ``password`` is the superuser's (md5 over TCP)."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise DevStoreError(
                "PostgreSQL is not installed: `apt-get install postgresql` (make test-deps does)"
            )
        self.bin = binaries
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(16)
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        """A libpq URL for the superuser over loopback TCP."""
        return (
            f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"
            "?sslmode=disable"
        )

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._as_root:  # PostgreSQL will not run as root
            command = ["su", SUPERUSER, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in command)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> ThrowawayPostgres:
        """initdb and start; DevStoreError with PostgreSQL's words if either fails."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.workdir / "pw"
        password_file.write_text(self.password + "\n")
        if self._as_root:
            owner = pwd.getpwnam(SUPERUSER)
            for path in (self.workdir, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        password_file.chmod(0o600)
        done = self._run(
            self.bin / "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=md5",
            f"--pwfile={password_file}",
        )
        password_file.unlink()
        if done.returncode != 0:
            raise DevStoreError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        options = f"-p {self.port} -k {self.workdir} -h 127.0.0.1"
        done = self._run(
            self.bin / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "start",
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise DevStoreError(f"PostgreSQL did not start: {done.stderr.strip()} {log[-500:]}")
        return self

    def stop(self) -> None:
        """Stop the server at once (fast shutdown)."""
        if self.data.exists():
            self._run(self.bin / "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` as the superuser (psycopg, from the dev extra)."""
        import psycopg

        with psycopg.connect(self.url, connect_timeout=10) as connection:
            return connection.execute(sql, params).fetchall()

    def login_roles(self, prefix: str) -> list[str]:
        """The roles that may log in whose names start with ``prefix`` (users the store made)."""
        rows = self.query(
            "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname LIKE %s ORDER BY 1",
            prefix + "%",
        )
        return [str(r[0]) for r in rows]


def reachable(folder: Path) -> None:
    """As root, let the ``postgres`` user reach ``folder``: search permission for others (x,
    never read) on it and on each parent that lacks it (temporary and demo folders are 0700;
    names inside stay unlistable, and each file keeps its own mode)."""
    if os.geteuid() != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder, *folder.parents):
        mode = path.stat().st_mode
        if not mode & 0o001:
            path.chmod(mode | 0o001)


def configure_database_engine(store: Any, database: ThrowawayPostgres) -> None:
    """Enable OpenBao's database secrets engine at ``database/`` against ``database`` (any
    role may use it): ``store`` is a DevOpenBao (its ``request``)."""
    store.request("POST", "sys/mounts/database", {"type": "database"})
    store.request(
        "POST",
        "database/config/pg",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:"
            f"{database.port}/postgres?sslmode=disable",
            "username": SUPERUSER,
            "password": database.password,
            "allowed_roles": "*",
        },
    )


def database_role(store: Any, name: str, *, ttl: str, max_ttl: str) -> str:
    """A role ``name`` whose credentials live ``ttl`` (renewable up to ``max_ttl``); the path
    that issues them. Its users are named ``v-token-<first 8 of name>-...``."""
    store.request(
        "POST",
        f"database/roles/{name}",
        {
            "db_name": "pg",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                "VALID UNTIL '{{expiration}}';"
            ],
            "default_ttl": ttl,
            "max_ttl": max_ttl,
        },
    )
    return f"database/creds/{name}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def psql_available() -> bool:
    """Whether a PostgreSQL server can be started here (the binaries are installed)."""
    return postgres_bin() is not None and shutil.which("su") is not None
