"""Helpers the command groups share to reach the database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from coprocessor.db import queries
from coprocessor.db.pool import connect_settings
from coprocessor.errors import UserError
from coprocessor.settings import load_settings

T = TypeVar("T")


async def connected(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``action(connection)`` on one database connection."""
    connection = await connect_settings(load_settings())
    try:
        return await action(connection)
    finally:
        await connection.close()


async def tenant_named(connection: asyncpg.Connection, name: str) -> Any:
    tenant = await queries.get_tenant(connection, name)
    if tenant is None:
        raise UserError(f"unknown tenant {name!r}; create it with `fhectl tenant create {name}`")
    return tenant
