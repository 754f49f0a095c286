"""PostgreSQL from Debian's package, one cluster per state directory.

PostgreSQL refuses to run as root, so when ``fhectl`` runs as root the cluster belongs
to the ``postgres`` system user (created by Debian's package; created here if missing).
Clients connect over TCP on 127.0.0.1 as role ``fhe`` with trust authentication: a dev
stack on loopback, never a production configuration. The server also speaks TLS, with
a certificate from a CA of its own (``<state>/postgres/tls/ca.crt``), so clients can be
tried with every sslmode, verify-full included.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from coprocessor.errors import ServiceUnavailable

from . import process
from .component import Info
from .pki import ensure_serving_cert
from .versions import postgres_bin_dir

log = logging.getLogger(__name__)

ROLE = "fhe"
DATABASE = "coprocessor"


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--home-dir", "/var/lib/postgresql", "postgres"],
            check=True,
        )
    return "postgres"


def _grant_traverse(path: Path) -> None:
    """Let the service user reach its data dir through ancestors such as /root."""
    for ancestor in [path, *path.parents]:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)
            log.info("granted traverse permission", extra={"fields": {"path": str(ancestor)}})


def _run(argv: list[str], user: str | None, what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        check=False,
        **process.run_as(user),  # type: ignore[arg-type]
    )
    if result.returncode != 0:
        raise ServiceUnavailable("postgres", f"{what} failed: {result.stderr.strip()[-400:]}")
    return result


class Postgres:
    name = "postgres"

    def __init__(self, port: int | None = None) -> None:
        self.requested_port = port

    def up(self, state_dir: Path, previous: Info | None) -> Info:
        if previous and self.health(previous)["healthy"]:
            return previous
        bindir = process.require_installed(postgres_bin_dir() / "postgres", "postgres").parent
        # Before any side effect, so a busy port fails fast and leaves nothing behind.
        port = process.choose_port(self.requested_port, previous, "postgres")
        user = _service_user()
        data = state_dir / "postgres" / "data"
        logfile = state_dir / "postgres" / "postgres.log"
        data.parent.mkdir(parents=True, exist_ok=True)
        if user:
            _grant_traverse(data.parent)
            shutil.chown(data.parent, user=user)
        ca, certificate, key = ensure_serving_cert(
            state_dir / "postgres" / "tls", "postgres", "IP:127.0.0.1,DNS:localhost"
        )
        key.chmod(0o600)  # PostgreSQL refuses a key others can read
        if user:
            for path in (key.parent, certificate, key):
                shutil.chown(path, user=user)
        if not (data / "PG_VERSION").exists():
            _run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    ROLE,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                user,
                "initdb",
            )
        pid = process.spawn(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={data}",
                "-c",
                "max_connections=200",
                "-c",
                "ssl=on",
                "-c",
                f"ssl_cert_file={certificate}",
                "-c",
                f"ssl_key_file={key}",
            ],
            logfile,
            user=user,
        )
        info: Info = {
            "pid": pid,
            "port": port,
            "data_dir": str(data),
            "log": str(logfile),
            "user": user,
            "tls_ca": str(ca),
        }
        process.wait_until(
            lambda: self._ready(port), timeout=60, service="postgres", log_path=logfile, pid=pid
        )
        self._ensure_database(port)
        return info

    @staticmethod
    def _ready(port: int) -> bool:
        result = subprocess.run(
            [
                str(postgres_bin_dir() / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                ROLE,
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    @staticmethod
    def _ensure_database(port: int) -> None:
        psql = [
            str(postgres_bin_dir() / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            ROLE,
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = _run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            None,
            "database lookup",
        )
        if exists.stdout.strip() != "1":
            _run([*psql, f'CREATE DATABASE "{DATABASE}"'], None, "createdb")

    def down(self, info: Info) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of
        # waiting for them (SIGTERM's "smart" mode waits for every session to end).
        process.stop(info.get("pid"), expect="postgres", timeout=30, signum=signal.SIGINT)

    def health(self, info: Info) -> Info:
        alive = process.is_running(info.get("pid"), expect="postgres")
        healthy = alive and self._ready(int(info["port"]))
        return {
            "healthy": healthy,
            "pid": info.get("pid"),
            "port": info.get("port"),
            "url": self.env(info)["FHE_DATABASE_URL"],
        }

    def env(self, info: Info) -> dict[str, str]:
        return {"FHE_DATABASE_URL": f"postgresql://{ROLE}@127.0.0.1:{info['port']}/{DATABASE}"}
