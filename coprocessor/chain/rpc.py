"""JSON-RPC connections to the host and gateway chains, always with a timeout.

Without one, web3's HTTP provider waits as long as the node keeps the socket open, and
a node that accepts a request and never answers hangs the listener or the sender.
"""

from __future__ import annotations

from web3 import Web3

from ..settings import Settings


def http_web3(url: str, timeout_s: float) -> Web3:
    """A Web3 over HTTP whose every request gives up after ``timeout_s``."""
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}))


def host_web3(settings: Settings) -> Web3:
    return http_web3(settings.host_rpc_url, settings.rpc_timeout_s)


def gateway_web3(settings: Settings) -> Web3:
    return http_web3(settings.gateway_rpc_url, settings.rpc_timeout_s)
