"""Following a chain's head: a ``newHeads`` WebSocket subscription that wakes the poll
loop, with polling as the fallback, and chain reads that turn node errors into waits.
Shared by the host and the gateway listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)

RESUBSCRIBE_S = 30.0  # how long polling alone carries on before subscribing again


class HeadCounters(Protocol):
    heads: int
    subscribed: bool


async def chain_call(call, service: str):
    """A chain read off the event loop; transport and node errors are recoverable
    (ServiceUnavailable naming ``service``); BlockNotFound is the caller's to interpret."""
    from web3.exceptions import BlockNotFound, Web3Exception

    from coprocessor.errors import ServiceUnavailable

    try:
        return await asyncio.to_thread(call)
    except BlockNotFound:
        raise
    except (OSError, ConnectionError, Web3Exception) as error:
        raise ServiceUnavailable(service, f"{type(error).__name__}: {error}") from None


def ws_url(configured: str | None, rpc_url: str) -> str | None:
    """The subscription URL: the setting, 'off' for none, default the RPC URL with ws://
    (anvil and most nodes serve both on one port)."""
    if configured == "off":
        return None
    if configured:
        return configured
    return "ws" + rpc_url[4:] if rpc_url.startswith("http") else rpc_url


async def follow_heads(
    url: str | None, new_head: asyncio.Event, stop: asyncio.Event, counters: HeadCounters
) -> None:
    """Set ``new_head`` on every newHeads notification; on any failure, log it, rely on
    polling for a while and subscribe again."""
    if url is None:
        return
    from web3 import AsyncWeb3, WebSocketProvider

    while not stop.is_set():
        try:
            async with AsyncWeb3(WebSocketProvider(url)) as w3:
                await w3.eth.subscribe("newHeads")
                counters.subscribed = True
                log.info("subscribed", extra={"fields": {"url": url}})
                async for _ in w3.socket.process_subscriptions():
                    counters.heads += 1
                    new_head.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # no ws endpoint, a dropped connection, ...
            counters.subscribed = False
            log.warning(
                "newHeads subscription unavailable; polling",
                extra={"fields": {"url": url, "error": f"{type(error).__name__}: {error}"[:300]}},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESUBSCRIBE_S)


async def wait_for_head(new_head: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Until a new head, ``stop`` or ``timeout`` seconds, whichever comes first."""
    wake = asyncio.ensure_future(new_head.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({wake, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    wake.cancel()
    stopping.cancel()
