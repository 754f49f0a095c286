"""Waiting for work: LISTEN with a polling fallback and reconnection.

A waiter keeps one dedicated connection that LISTENs on its channels. ``wait()``
returns as soon as a notification arrives, or after the poll interval in any case, so
a notification lost while the connection was down costs latency, never work. When the
connection drops (PostgreSQL restarted, network cut), the next ``wait()`` reconnects
with capped backoff and re-LISTENs; until then it behaves as a plain poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg

from ..errors import ServiceUnavailable
from .pool import DEFAULT_OPTIONS, ConnectOptions, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wakeup:
    reason: str  # "notified" | "poll"
    channel: str | None = None
    payload: str | None = None


class NotificationWaiter:
    def __init__(
        self,
        database_url: str,
        channels: tuple[str, ...],
        *,
        poll_interval: float = 5.0,
        max_reconnect_delay: float = 5.0,
        options: ConnectOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.database_url = database_url
        self.options = options
        self.channels = channels
        self.poll_interval = poll_interval
        self.max_reconnect_delay = max_reconnect_delay
        self._connection: asyncpg.Connection | None = None
        self._queue: asyncio.Queue[Wakeup] = asyncio.Queue()
        self._reconnect_delay = 0.1
        self._next_connect_at = 0.0
        self._ever_connected = False
        self._closing = False
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def __aenter__(self) -> NotificationWaiter:
        await self._ensure_connected()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
            self._connection = None

    def _on_notification(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._queue.put_nowait(Wakeup("notified", channel, payload))

    def _on_termination(self, _conn: object) -> None:
        if self._closing:
            return
        log.warning(
            "notification connection lost", extra={"fields": {"channels": list(self.channels)}}
        )
        self._connection = None

    async def _ensure_connected(self) -> None:
        if self.connected or time.monotonic() < self._next_connect_at:
            return
        try:
            connection = await connect(self.database_url, self.options)
            for channel in self.channels:
                await connection.add_listener(channel, self._on_notification)
            connection.add_termination_listener(self._on_termination)
        except (ServiceUnavailable, OSError, asyncpg.PostgresError) as error:
            self._next_connect_at = time.monotonic() + self._reconnect_delay
            log.info(
                "notification connection retry",
                extra={"fields": {"delay_s": self._reconnect_delay, "error": str(error)}},
            )
            self._reconnect_delay = min(self._reconnect_delay * 2, self.max_reconnect_delay)
            return
        if self._ever_connected:
            self.reconnects += 1
            log.info(
                "notification connection restored",
                extra={"fields": {"reconnects": self.reconnects}},
            )
        self._ever_connected = True
        self._connection = connection
        self._reconnect_delay = 0.1

    def drain(self) -> int:
        """Forget the notifications received so far; for a caller about to look at all
        pending work anyway, so a burst of N notifications costs one pass, not N."""
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped

    async def wait(self, timeout: float | None = None) -> Wakeup:
        """Return at the first notification, or after ``timeout`` (default: poll interval)."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        budget = self.poll_interval if timeout is None else timeout
        deadline = time.monotonic() + budget
        while True:
            await self._ensure_connected()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Wakeup("poll")
            # While disconnected, wake up often enough to try reconnecting.
            step = remaining if self.connected else min(remaining, self._reconnect_delay)
            try:
                return await asyncio.wait_for(self._queue.get(), timeout=step)
            except TimeoutError:
                if self.connected:
                    return Wakeup("poll")
