"""A relayer stand-in: what Zama's relayer does for encrypted inputs, over its HTTP API.

The client SDK (``@zama-fhe/relayer-sdk``) sends a proven list to
``POST <relayer>/input-proof`` and polls ``GET <relayer>/input-proof/<jobId>`` (its v2
API). Zama's relayer then calls the gateway's ``InputVerification.verifyProofRequest``
and waits for the coprocessors' consensus, ``VerifyProofResponse(zkProofId, handles,
signatures)``, which the SDK checks (handles it computed itself, signatures against the
host InputVerifier's signers) and packs into an ``inputProof``. This stand-in does the
same for the dev stack and the tests: the relayer itself is not ours to run, and
nothing here decides anything - the coprocessors do.

Answers, as the SDK expects them: POST -> 202 ``{"status": "queued", "requestId",
"result": {"jobId"}}``; GET -> 202 ``{"status": "queued"}`` (``Retry-After: 1``) until
the gateway has a verdict, then 200 ``{"status": "succeeded", "result": {"accepted":
true, "extraData": "0x00", "handles": [...], "signatures": [...]}}`` (``accepted:
false`` for a rejected list); a malformed body is a 400 with ``{"status": "failed",
"error": {...}}``.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20  # a 2048-bit proven list is ~20 KB; hex doubles it
NO_EXTRA_DATA = b"\x00"


class BadRequest(Exception):
    pass


@dataclass
class _Job:
    zk_proof_id: int


def parse_request(body: dict[str, Any]) -> tuple[int, str, str, bytes, bytes]:
    """(contractChainId, contract, user, list, extraData) of an SDK input-proof POST."""
    try:
        chain_text = body["contractChainId"]
        chain_id = int(chain_text, 16) if str(chain_text).startswith("0x") else int(chain_text)
        contract = Web3.to_checksum_address(body["contractAddress"])
        user = Web3.to_checksum_address(body["userAddress"])
        listed = str(body["ciphertextWithInputVerification"])
        proven = bytes.fromhex(listed[2:] if listed.startswith("0x") else listed)
        extra_text = str(body.get("extraData", "0x00"))
        extra = bytes.fromhex(extra_text[2:] if extra_text.startswith("0x") else extra_text)
    except (KeyError, TypeError, ValueError) as error:
        raise BadRequest(
            f"malformed input-proof request: {type(error).__name__}: {error}"
        ) from None
    if not proven:
        raise BadRequest("malformed input-proof request: empty ciphertextWithInputVerification")
    return chain_id, contract, user, proven, extra


class RelayerStandIn:
    """Serves the SDK's input-proof API in a thread, sending the requests from
    ``sender`` (an unlocked node account's address, or a key)."""

    def __init__(self, w3: Web3, input_verification: Contract, sender: str | LocalAccount) -> None:
        self.w3 = w3
        self.contract = input_verification
        self.sender = sender
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    def requested(self) -> list[int]:
        """The zkProofIds of the requests sent so far, in order."""
        with self._lock:
            return [job.zk_proof_id for job in self._jobs.values()]

    # --- the gateway side -----------------------------------------------------------

    def request(self, chain_id: int, contract: str, user: str, proven: bytes, extra: bytes) -> int:
        """verifyProofRequest; the zkProofId the gateway assigned."""
        call = self.contract.functions.verifyProofRequest(chain_id, contract, user, proven, extra)
        with self._lock:  # one nonce at a time
            if isinstance(self.sender, str):
                tx_hash = call.transact({"from": self.sender})
            else:
                built = call.build_transaction(
                    {
                        "from": self.sender.address,
                        "nonce": self.w3.eth.get_transaction_count(self.sender.address, "pending"),
                    }
                )
                signed = self.sender.sign_transaction(built)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt["status"] != 1:
            raise BadRequest(f"the gateway refused the request (tx {tx_hash.hex()})")
        (event,) = self.contract.events.VerifyProofRequest().process_receipt(receipt)
        return int(event["args"]["zkProofId"])

    def verdict(self, zk_proof_id: int) -> dict[str, Any] | None:
        """The SDK's result object once the gateway reached a verdict, else None."""
        functions = self.contract.functions
        if functions.isProofRejected(zk_proof_id).call():
            return {"accepted": False, "extraData": "0x00"}
        if not functions.isProofVerified(zk_proof_id).call():
            return None
        (event, *_) = self.contract.events.VerifyProofResponse().get_logs(
            from_block=0, argument_filters={"zkProofId": zk_proof_id}
        )
        return {
            "accepted": True,
            "extraData": "0x00",
            "handles": ["0x" + bytes(h).hex() for h in event["args"]["ctHandles"]],
            "signatures": ["0x" + bytes(s).hex() for s in event["args"]["signatures"]],
        }

    # --- HTTP -----------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread; returns the relayer URL to give the SDK."""
        relayer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("relayer %s", format % args)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 202:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(payload)

            def _failed(self, status: int, label: str, message: str) -> None:
                self._send(
                    status, {"status": "failed", "error": {"label": label, "message": message}}
                )

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/input-proof":
                    return self._failed(404, "not_found", self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY_BYTES:
                    return self._failed(400, "malformed_json", f"body of {length} bytes")
                try:
                    fields = parse_request(json.loads(self.rfile.read(length)))
                    zk_proof_id = relayer.request(*fields)
                except (BadRequest, json.JSONDecodeError) as error:
                    return self._failed(400, "validation_failed", str(error))
                job_id = f"input-{zk_proof_id}"
                with relayer._lock:
                    relayer._jobs[job_id] = _Job(zk_proof_id)
                log.info("input proof requested", extra={"fields": {"zk_proof_id": zk_proof_id}})
                self._send(
                    202, {"status": "queued", "requestId": job_id, "result": {"jobId": job_id}}
                )

            def do_GET(self) -> None:
                prefix = "/input-proof/"
                job = (
                    relayer._jobs.get(self.path[len(prefix) :])
                    if self.path.startswith(prefix)
                    else None
                )
                if job is None:
                    return self._failed(404, "not_found", self.path)
                result = relayer.verdict(job.zk_proof_id)
                if result is None:
                    return self._send(
                        202, {"status": "queued", "requestId": self.path[len(prefix) :]}
                    )
                self._send(
                    200,
                    {
                        "status": "succeeded",
                        "requestId": self.path[len(prefix) :],
                        "result": result,
                    },
                )

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://{host}:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
