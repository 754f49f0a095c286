"""Connections to PostgreSQL: a server that is away is ServiceUnavailable
(recoverable), settings no retry can fix are ConfigError."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from ..errors import ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from ..settings import Settings

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 300.0
_UNAVAILABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    TimeoutError,
)


@dataclass(frozen=True)
class ConnectOptions:
    """How long to wait for PostgreSQL and whether to insist on TLS.

    ``command_timeout_s`` bounds every statement on the client side (asyncpg cancels it
    and raises TimeoutError, which callers see as ServiceUnavailable): a server that
    stops answering mid-query fails the call instead of hanging the process. ``sslmode``
    is libpq's (disable, allow, prefer, require, verify-ca, verify-full); None keeps
    what the URL says (asyncpg's default there is prefer)."""

    connect_timeout_s: float = CONNECT_TIMEOUT_S
    command_timeout_s: float | None = COMMAND_TIMEOUT_S
    sslmode: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> ConnectOptions:
        return cls(
            connect_timeout_s=settings.database_connect_timeout_s,
            command_timeout_s=settings.database_command_timeout_s,
            sslmode=settings.database_sslmode,
        )

    def kwargs(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "timeout": self.connect_timeout_s,
            "command_timeout": self.command_timeout_s,
        }
        if self.sslmode is not None:
            options["ssl"] = self.sslmode
        return options


DEFAULT_OPTIONS = ConnectOptions()

# Settings no retry can fix: a TLS mode without the CA it needs, a CA file that is not
# there (asyncpg reads sslrootcert before it opens a socket).
_MISCONFIGURED = (asyncpg.ClientConfigurationError, FileNotFoundError)


def _connect_failed(error: BaseException) -> ServiceUnavailable | ConfigError:
    """Settings and TLS mismatches are configuration (retrying cannot help); the rest is
    the server being away."""
    if isinstance(error, _MISCONFIGURED):
        return ConfigError(f"postgres connection settings: {type(error).__name__}: {error}")
    if isinstance(error, ssl.SSLCertVerificationError):
        return ConfigError(
            f"postgres: the server's TLS certificate is not trusted ({error.verify_message}); "
            "give the CA as sslrootcert in the URL or lower database_sslmode"
        )
    if isinstance(error, ConnectionError) and "rejected SSL upgrade" in str(error):
        return ConfigError(
            f"postgres: sslmode asks for TLS but the server does not offer it ({error})"
        )
    return ServiceUnavailable("postgres", f"{type(error).__name__}: {error}")


async def connect(
    database_url: str, options: ConnectOptions = DEFAULT_OPTIONS
) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database_url, **options.kwargs())
    except (*_MISCONFIGURED, *_UNAVAILABLE) as error:
        raise _connect_failed(error) from error
    except asyncpg.InvalidCatalogNameError as error:
        raise ServiceUnavailable("postgres", str(error)) from error


async def create_pool(
    database_url: str, size: int = 8, options: ConnectOptions = DEFAULT_OPTIONS
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            database_url, min_size=1, max_size=size, **options.kwargs()
        )
    except (*_MISCONFIGURED, *_UNAVAILABLE) as error:
        raise _connect_failed(error) from error
    assert pool is not None
    return pool


async def connect_settings(settings: Settings) -> asyncpg.Connection:
    """One connection to the configured database, with the configured timeouts and TLS."""
    return await connect(settings.database_url, ConnectOptions.of(settings))


async def pool_of(settings: Settings, size: int | None = None) -> asyncpg.Pool:
    """A pool on the configured database (``size`` defaults to database_pool_size)."""
    return await create_pool(
        settings.database_url, size or settings.database_pool_size, ConnectOptions.of(settings)
    )


# The server refusing work for now: shutting down, restarting after a crash, or full.
_SERVER_BUSY = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def classify(error: BaseException) -> BaseException:
    """A lost connection in the middle of work, or a server shutting down or full, is
    the database being unavailable (recoverable), not a bug; everything else is returned
    unchanged."""
    if isinstance(error, (*_UNAVAILABLE, *_SERVER_BUSY, asyncpg.PostgresConnectionError)):
        return ServiceUnavailable("postgres", f"{type(error).__name__}: {error}")
    return error
