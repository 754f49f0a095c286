"""``fhe-listener gateway``: follow the gateway chain and take what it asks of us.

Zama's gw-listener, for this coprocessor. Events read, block by block up to
``head - FHE_GATEWAY_FINALITY_DEPTH``:

* ``InputVerification.VerifyProofRequest`` - a ``verify_proofs`` row (idempotent by
  zkProofId) carrying the host chain's ACL address from GatewayConfig's host chain
  registry (the proof and the input handles are bound to it), to be answered by the
  verify stage and sent back by the sender;
* ``KMSGeneration.ActivateKey`` - the server and public keys are fetched from the KMS
  storage URLs, each checked against its digest, and the keyset becomes a tenant's
  (the tenant that already holds it is activated under the KMS key id; else a tenant is
  created for FHE_GATEWAY_TENANT_CHAIN_ID);
* ``KMSGeneration.ActivateCrs`` - the CRS, digest-checked, pinned as the deployment's.

A block's rows and its cursor row are written in one transaction. Material that cannot
be fetched now (storage down) stops the listener at that block: the cursor does not
move, and the next polls retry with backoff; material whose digest does not match is
refused (logged, counted) and nothing about it changes. A log that does not decode,
a request whose ids do not fit, or one for an unregistered host chain is skipped with a
warning (the gateway itself refuses requests for unregistered chains).

Reorgs: the cursor's block is compared with the chain's on every poll; when it changed,
the stored blocks above the highest one still canonical are forgotten and read again.
A request moved to another block is re-queued with that block's content while it is
still unanswered; an answered one is left as it is (the gateway refuses an answer to a
request it no longer has).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from web3 import Web3

from coprocessor import kms
from coprocessor.chain.contracts import bound, decode_logs
from coprocessor.db import kms as kms_rows
from coprocessor.db import proofs
from coprocessor.db.pool import classify
from coprocessor.errors import ConfigError, Irrecoverable, Recoverable, ServiceUnavailable
from coprocessor.retry import backoff_delays
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore

from .heads import follow_heads, wait_for_head, ws_url
from .skips import record_skip

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1  # zkProofId and chain ids are BIGINT rows


@dataclass
class GatewayCounters:
    blocks: int = 0
    requests: int = 0
    keys_activated: int = 0
    crs_activated: int = 0
    refused_activations: int = 0  # digest mismatches: never applied
    fetch_retries: int = 0  # KMS storage unreachable: the block is read again later
    skipped_logs: int = 0
    reorgs: int = 0
    heads: int = 0
    subscribed: bool = False
    skipped_reasons: list[str] = field(default_factory=list)


def require_gateway_contracts(settings: Settings) -> None:
    missing = [
        f"FHE_{name.upper()}"
        for name in (
            "gateway_config_address",
            "gateway_input_verification_address",
            "gateway_kms_generation_address",
        )
        if getattr(settings, name) is None
    ]
    if missing:
        raise ConfigError(
            f"setting {', '.join(missing)} not set: the gateway listener reads the "
            "gateway's GatewayConfig, InputVerification and KMSGeneration "
            "(`fhectl dev gateway --env` prints them locally)"
        )


def _member(struct: Any, name: str, index: int) -> Any:
    """A struct member of a decoded event (web3 gives dicts; a tuple where it cannot name)."""
    return struct[name] if isinstance(struct, Mapping) else struct[index]


class _Skip(Exception):
    """This log is not used; the reason is logged and counted."""


class GatewayListener:
    def __init__(
        self,
        settings: Settings,
        w3: Web3,
        pool: asyncpg.Pool,
        store: ObjectStore | None = None,
        fetch=kms.fetch_url,
        host_chain_id: int | None = None,
    ) -> None:
        require_gateway_contracts(settings)
        self.settings = settings
        self.w3 = w3
        self.pool = pool
        self.store = store or ObjectStore(settings)
        self.fetch = fetch
        self.config = bound(w3, "GatewayConfig", settings.gateway_config_address)
        self.inputs = bound(w3, "InputVerification", settings.gateway_input_verification_address)
        self.kms = bound(w3, "KMSGeneration", settings.gateway_kms_generation_address)
        self.counters = GatewayCounters()
        self.chain_id = 0
        self.tenant_chain_id = settings.gateway_tenant_chain_id or host_chain_id
        self._acl_addresses: dict[int, bytes] = {}
        self._delays = self._new_delays()

    @staticmethod
    def _new_delays():
        """Pauses between polls while one keeps failing (KMS storage or a node down)."""
        return backoff_delays(10**9, 1.0, 60.0)

    async def _rpc(self, call):
        from web3.exceptions import BlockNotFound, Web3Exception

        try:
            return await asyncio.to_thread(call)
        except BlockNotFound:
            raise
        except (OSError, ConnectionError, Web3Exception) as error:
            raise ServiceUnavailable("gateway chain", f"{type(error).__name__}: {error}") from None

    async def start(self) -> None:
        self.chain_id = await self._rpc(lambda: self.w3.eth.chain_id)
        if self.tenant_chain_id is None:
            host = Web3(
                Web3.HTTPProvider(self.settings.host_rpc_url, request_kwargs={"timeout": 10})
            )
            try:
                self.tenant_chain_id = await asyncio.to_thread(lambda: host.eth.chain_id)
            except Exception as error:
                raise ServiceUnavailable(
                    "host chain", f"chain id of FHE_HOST_RPC_URL: {type(error).__name__}: {error}"
                ) from None

    # --- host chains ------------------------------------------------------------------

    async def acl_address(self, chain_id: int) -> bytes:
        """The host chain's ACL as GatewayConfig registers it (FHE_HOST_ACL_ADDRESS where
        the registry has none); _Skip for a chain the gateway does not serve."""
        if chain_id not in self._acl_addresses:
            chains = await self._rpc(lambda: self.config.functions.getHostChains().call())
            for chain in chains:
                registered = bytes.fromhex(Web3.to_checksum_address(chain[2])[2:])
                if registered == bytes(20) and self.settings.host_acl_address:
                    registered = bytes.fromhex(self.settings.host_acl_address[2:])
                self._acl_addresses[int(chain[0])] = registered
        if chain_id not in self._acl_addresses:
            raise _Skip(f"host chain {chain_id} is not registered in GatewayConfig")
        if self._acl_addresses[chain_id] == bytes(20):
            raise _Skip(
                f"host chain {chain_id} has no ACL address in GatewayConfig and "
                "FHE_HOST_ACL_ADDRESS is not set"
            )
        return self._acl_addresses[chain_id]

    # --- the loop ---------------------------------------------------------------------

    async def poll(self) -> int:
        """One round: reorg check, then new blocks. Returns the blocks processed."""
        head = await self._rpc(lambda: self.w3.eth.block_number)
        target = head - self.settings.gateway_finality_depth
        await self._check_reorg()
        async with self.pool.acquire() as connection:
            last = await connection.fetchrow(
                """SELECT block_number, block_hash FROM gateway_blocks WHERE chain_id = $1
                   ORDER BY block_number DESC LIMIT 1""",
                self.chain_id,
            )
        start = last["block_number"] + 1 if last else self.settings.gateway_start_block
        processed = 0
        for number in range(start, target + 1):
            await self._process(number)
            processed += 1
        return processed

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        log.info(
            "gateway listener started",
            extra={
                "fields": {
                    "chain": self.chain_id,
                    "input_verification": self.inputs.address,
                    "kms_generation": self.kms.address,
                    "tenant_chain": self.tenant_chain_id,
                }
            },
        )
        new_head = asyncio.Event()
        url = ws_url(self.settings.gateway_ws_url, self.settings.gateway_rpc_url)
        heads = asyncio.create_task(follow_heads(url, new_head, stop, self.counters))
        try:
            while not stop.is_set():
                new_head.clear()
                pause = self.settings.gateway_poll_interval_s
                try:
                    await self.poll()
                    self._delays = self._new_delays()
                except Exception as raised:
                    error = classify(raised)
                    if not isinstance(error, Recoverable):
                        raise
                    pause = max(pause, next(self._delays, 60.0))
                    log.warning(
                        "gateway poll deferred",
                        extra={"fields": {"error": str(error)[:500], "retry_in_s": pause}},
                    )
                await wait_for_head(new_head, stop, pause)
        finally:
            heads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heads

    # --- reorgs -----------------------------------------------------------------------

    async def _hash_at(self, number: int) -> bytes | None:
        from web3.exceptions import BlockNotFound

        try:
            return bytes((await self._rpc(lambda: self.w3.eth.get_block(number)))["hash"])
        except BlockNotFound:
            return None

    async def _check_reorg(self) -> None:
        async with self.pool.acquire() as connection:
            window = await connection.fetch(
                """SELECT block_number, block_hash FROM gateway_blocks WHERE chain_id = $1
                   ORDER BY block_number DESC LIMIT $2""",
                self.chain_id,
                self.settings.gateway_reorg_window,
            )
        if not window:
            return
        keep = None
        for row in window:  # highest first
            if await self._hash_at(row["block_number"]) == bytes(row["block_hash"]):
                keep = row["block_number"]
                break
        if keep == window[0]["block_number"]:
            return
        if keep is None:
            keep = window[-1]["block_number"] - 1
        async with self.pool.acquire() as connection:
            await connection.execute(
                "DELETE FROM gateway_blocks WHERE chain_id = $1 AND block_number > $2",
                self.chain_id,
                keep,
            )
        self.counters.reorgs += 1
        log.warning(
            "gateway reorg",
            extra={"fields": {"kept": keep, "forgotten": window[0]["block_number"] - keep}},
        )

    # --- one block --------------------------------------------------------------------

    async def _process(self, number: int) -> None:
        block = await self._rpc(lambda: self.w3.eth.get_block(number))
        block_hash = bytes(block["hash"])
        logs = await self._rpc(
            lambda: self.w3.eth.get_logs(
                {"blockHash": block_hash, "address": [self.inputs.address, self.kms.address]}
            )
        )
        ordered = sorted(logs, key=lambda e: (e["transactionIndex"], e["logIndex"]))
        requests: list[proofs.ProofRequest] = []
        for entry in ordered:
            contract = self.inputs if entry["address"] == self.inputs.address else self.kms
            try:
                decoded = decode_logs(contract, [entry])
            except Exception as error:  # web3 raises several types on bad data
                self._skip(entry, f"cannot decode: {type(error).__name__}: {error}")
                continue
            if not decoded:
                continue  # events we do not act on (responses, consensus, ...)
            name, args = decoded[0]
            try:
                if name == "VerifyProofRequest":
                    requests.append(await self._request(args, block_hash))
                elif name == "ActivateKey":
                    await self._activate_key(args)
                elif name == "ActivateCrs":
                    await self._activate_crs(args)
            except _Skip as skipped:
                self._skip(entry, str(skipped))
        async with self.pool.acquire() as connection, connection.transaction():
            for request in requests:
                if await proofs.insert_request(connection, request):
                    self.counters.requests += 1
            await connection.execute(
                """INSERT INTO gateway_blocks (chain_id, block_number, block_hash)
                   VALUES ($1, $2, $3) ON CONFLICT (chain_id, block_number)
                   DO UPDATE SET block_hash = EXCLUDED.block_hash, processed_at = now()""",
                self.chain_id,
                number,
                block_hash,
            )
        self.counters.blocks += 1
        if requests:
            log.info(
                "gateway block",
                extra={"fields": {"number": number, "requests": len(requests)}},
            )

    async def _request(self, args: dict[str, Any], block_hash: bytes) -> proofs.ProofRequest:
        zk_proof_id, chain_id = int(args["zkProofId"]), int(args["contractChainId"])
        if not 0 < zk_proof_id <= MAX_ID:
            raise _Skip(f"zkProofId {zk_proof_id} does not fit this coprocessor's rows")
        if not 0 < chain_id <= MAX_ID:
            raise _Skip(f"request {zk_proof_id}: host chain id {chain_id} does not fit")
        acl = await self.acl_address(chain_id)
        return proofs.ProofRequest(
            zk_proof_id,
            chain_id,
            bytes.fromhex(Web3.to_checksum_address(args["contractAddress"])[2:]),
            bytes.fromhex(Web3.to_checksum_address(args["userAddress"])[2:]),
            bytes(args["ciphertextWithZKProof"]),
            acl_address=acl,
            extra_data=bytes(args["extraData"]),
            from_gateway=True,
            gateway_block_hash=block_hash,
        )

    async def _activate_key(self, args: dict[str, Any]) -> None:
        try:
            event = kms.ActivateKey(
                int(args["keyId"]),
                tuple(args["kmsNodeStorageUrls"]),
                {
                    kms.KeyType(int(_member(d, "keyType", 0))): bytes(_member(d, "digest", 1))
                    for d in args["keyDigests"]
                },
            )
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _Skip(f"ActivateKey {args.get('keyId')}: {error}") from None
        async with self.pool.acquire() as connection:
            if await kms_rows.key_applied(connection, event.key_id) is not None:
                return  # read again after a restart or reorg: already applied
        assert self.tenant_chain_id is not None
        try:
            keyset = await asyncio.to_thread(kms.fetch_keyset, event, "tfhe-rs", self.fetch)
            async with self.pool.acquire() as connection:
                tenant = await kms.apply_key(
                    connection, self.store, self.settings, event, keyset, self.tenant_chain_id
                )
        except ServiceUnavailable:
            self.counters.fetch_retries += 1
            raise
        except Irrecoverable as error:
            self.counters.refused_activations += 1
            log.error(
                "key activation refused",
                extra={"fields": {"key_id": hex(event.key_id), "error": str(error)[:500]}},
            )
            return
        self.counters.keys_activated += 1
        log.info(
            "key activated",
            extra={"fields": {"key_id": hex(event.key_id), "tenant": tenant.name}},
        )

    async def _activate_crs(self, args: dict[str, Any]) -> None:
        event = kms.ActivateCrs(
            int(args["crsId"]), tuple(args["kmsNodeStorageUrls"]), bytes(args["crsDigest"])
        )
        if len(event.digest) != 32:
            raise _Skip(f"ActivateCrs {event.crs_id:#x}: digest of {len(event.digest)} bytes")
        try:
            crs = await asyncio.to_thread(kms.fetch_crs, event, self.fetch)
        except ServiceUnavailable:
            self.counters.fetch_retries += 1
            raise
        except Irrecoverable as error:
            self.counters.refused_activations += 1
            log.error(
                "CRS activation refused",
                extra={"fields": {"crs_id": hex(event.crs_id), "error": str(error)[:500]}},
            )
            return
        async with self.pool.acquire() as connection:
            if await kms.apply_crs(connection, self.store, event, crs):
                self.counters.crs_activated += 1
                log.info("CRS activated", extra={"fields": {"crs_id": hex(event.crs_id)}})

    def _skip(self, entry: Any, reason: str) -> None:
        record_skip(self.counters, entry, reason, "gateway log skipped")
