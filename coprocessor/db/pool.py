"""Connections to PostgreSQL, with connection failures mapped to ServiceUnavailable."""

from __future__ import annotations

import asyncpg

from ..errors import ServiceUnavailable

CONNECT_TIMEOUT_S = 10.0
_UNAVAILABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    TimeoutError,
)


async def connect(database_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    except _UNAVAILABLE as error:
        raise ServiceUnavailable("postgres", f"{type(error).__name__}: {error}") from error
    except asyncpg.InvalidCatalogNameError as error:
        raise ServiceUnavailable("postgres", str(error)) from error


async def create_pool(database_url: str, size: int = 8) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            database_url, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT_S
        )
    except _UNAVAILABLE as error:
        raise ServiceUnavailable("postgres", f"{type(error).__name__}: {error}") from error
    assert pool is not None
    return pool


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
