"""A service that accepts the connection and never answers: every client gives up.

The silent server is a real TCP listener that accepts and then holds each connection
without a byte in reply, the way a hung node or a stuck proxy behaves. Without a read
timeout, web3's HTTP provider and boto3 would wait on it forever.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from coprocessor.chain.rpc import gateway_web3, host_web3
from coprocessor.errors import ServiceUnavailable
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore


@pytest.fixture
def silent_url() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stopping.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.parametrize("connect", [host_web3, gateway_web3])
def test_a_silent_chain_node_fails_the_call_after_rpc_timeout(silent_url, connect):
    settings = Settings(host_rpc_url=silent_url, gateway_rpc_url=silent_url, rpc_timeout_s=0.5)
    w3 = connect(settings)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        w3.eth.chain_id  # noqa: B018 - the property makes the request
    assert time.monotonic() - started < 5


def test_a_silent_s3_server_is_unavailable_after_the_read_timeout(silent_url):
    settings = Settings(s3_endpoint=silent_url, s3_read_timeout_s=0.5)
    store = ObjectStore(settings, attempts=1)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="s3 is unavailable"):
        store.check()
    assert time.monotonic() - started < 10
