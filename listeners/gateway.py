"""``fhe-listener gateway``: follow the gateway chain and take what it asks of us.

Zama's gw-listener, for this coprocessor. Events read, block by block up to
``head - FHE_GATEWAY_FINALITY_DEPTH`` (without a cursor: from FHE_GATEWAY_START_BLOCK,
default the head):

* ``InputVerification.VerifyProofRequest`` - a ``verify_proofs`` row (idempotent by
  zkProofId) carrying the host chain's ACL address from GatewayConfig's host chain
  registry (the proof and the input handles are bound to it), to be answered by the
  verify stage and sent back by the sender;
* ``KMSGeneration.ActivateKey`` / ``ActivateCrs`` - queued (``kms_activations``), then
  applied apart from the cursor: the objects are fetched from the KMS storage URLs
  (``FHE_KMS_STORAGE_URL_PREFIXES``, no redirects, size caps), each checked against its
  announced digest; the keyset becomes a tenant's (the tenant already holding it is
  activated under the KMS key id, else one is created for FHE_GATEWAY_TENANT_CHAIN_ID),
  the CRS is pinned. Storage that is down is retried with backoff while requests keep
  flowing; material that does not match, or conflicts with what is here, is refused
  (logged, counted) and nothing about it changes.

A block's requests, queued activations and cursor row are written in one transaction;
each block must extend the stored one (its parent hash), else the poll stops and the
next one finds the fork. A log that does not decode, a request whose ids do not fit, or
one for an unregistered host chain is skipped with a warning (the gateway itself
refuses requests for unregistered chains).

Reorgs: the stored window is compared with the chain on every poll; above the highest
block still canonical, blocks are forgotten and read again. A request read again with
other content (the gateway reused its id on the new branch) is queued anew, answered or
not; an activation is the same row whichever block carried it.

Metrics: ``fhe_listener_blocks_processed`` and ``fhe_listener_lag_blocks``
(``listener="gateway"``), ``coprocessor_worker_errors{worker="gateway-listener"}`` per
deferred poll; the heartbeat beats per block and per turn of the loop.
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

from coprocessor import kms, metrics
from coprocessor.chain.contracts import bound, decode_logs
from coprocessor.chain.rpc import host_web3
from coprocessor.db import kms as kms_rows
from coprocessor.db import proofs
from coprocessor.db.pool import classify
from coprocessor.errors import ConfigError, Irrecoverable, Recoverable, ServiceUnavailable
from coprocessor.observability import Heartbeat
from coprocessor.retry import backoff_delays
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore

from .abi_fields import raw_bytes, uint
from .heads import chain_call, follow_heads, wait_for_head, ws_url
from .skips import record_skip

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1  # zkProofId and chain ids are BIGINT rows
LISTENER = "gateway"  # the listener label of its series
WORKER = "gateway-listener"  # the worker label of its error count


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


KMS_BACKOFF_CAP_S = 300.0


def _label(activation: kms_rows.Activation) -> str:
    return f"{activation.kind} {activation.material_id:#x}"


def _activation(
    name: str, args: dict[str, Any]
) -> tuple[str, int, tuple[str, ...], dict[str, str]]:
    """(kind, id, storage URLs, {object directory: hex digest}) of an ActivateKey /
    ActivateCrs event; _Skip when it cannot be one."""
    try:
        urls = tuple(str(u) for u in args["kmsNodeStorageUrls"])
        if name == "ActivateCrs":
            crs_id, digest = uint(args["crsId"], 256), raw_bytes(args["crsDigest"])
            return "crs", crs_id, urls, {kms.CRS_DIR: digest.hex()}
        digests = {
            kms.OBJECT_DIRS[kms.KeyType(uint(_member(d, "keyType", 0), 256))]: raw_bytes(
                _member(d, "digest", 1)
            ).hex()
            for d in args["keyDigests"]
        }
        return "key", uint(args["keyId"], 256), urls, digests
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as error:
        raise _Skip(f"{name}: {type(error).__name__}: {error}") from None


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
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.stopping = asyncio.Event()  # run() replaces it with its stop event
        require_gateway_contracts(settings)
        self.settings = settings
        self.heartbeat = heartbeat
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
        return await chain_call(call, "gateway chain")

    async def start(self) -> None:
        self.chain_id = await self._rpc(lambda: self.w3.eth.chain_id)
        if self.tenant_chain_id is None:
            host = host_web3(self.settings)
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
        """One round: reorg check, new blocks, then the activations that are due.
        Returns the blocks processed."""
        if not self.chain_id:
            await self.start()
        head = await self._rpc(lambda: self.w3.eth.block_number)
        target = head - self.settings.gateway_finality_depth
        await self._check_reorg()
        async with self.pool.acquire() as connection:
            last = await connection.fetchrow(
                """SELECT block_number, block_hash FROM gateway_blocks WHERE chain_id = $1
                   ORDER BY block_number DESC LIMIT 1""",
                self.chain_id,
            )
        if last is not None:
            start, parent = last["block_number"] + 1, bytes(last["block_hash"])
        else:  # no cursor: from the setting, else from the head on
            start = self.settings.gateway_start_block
            start, parent = (target if start is None else start), None
        processed = 0
        for number in range(start, target + 1):
            if self.stopping.is_set():  # SIGTERM: each block is committed; stop between
                break
            parent = await self._process(number, parent)
            if parent is None:  # the chain moved under us: the next poll finds the fork
                break
            processed += 1
            metrics.LISTENER_BLOCKS_PROCESSED.labels(LISTENER).inc()
            self._beat()
        metrics.LISTENER_LAG_BLOCKS.labels(LISTENER).set(max(0, head - (start - 1 + processed)))
        if processed:
            await self._prune()
        await self.apply_activations()
        return processed

    async def run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
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
                    metrics.WORKER_ERRORS.labels(WORKER).inc()
                    pause = max(pause, next(self._delays, 60.0))
                    log.warning(
                        "gateway poll deferred",
                        extra={"fields": {"error": str(error)[:500], "retry_in_s": pause}},
                    )
                self._beat()
                await wait_for_head(new_head, stop, pause)
        finally:
            heads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heads

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

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

    async def _process(self, number: int, parent: bytes | None) -> bytes | None:
        """Record one block's requests and activations with the cursor, in one
        transaction; None (nothing written) when it does not extend the stored chain."""
        from web3.exceptions import BlockNotFound

        try:
            block = await self._rpc(lambda: self.w3.eth.get_block(number))
        except BlockNotFound:  # a reorg to a shorter chain since the head was read
            return None
        block_hash = bytes(block["hash"])
        if parent is not None and bytes(block["parentHash"]) != parent:
            log.warning("gateway parent mismatch", extra={"fields": {"number": number}})
            return None
        logs = await self._rpc(
            lambda: self.w3.eth.get_logs(
                {"blockHash": block_hash, "address": [self.inputs.address, self.kms.address]}
            )
        )
        ordered = sorted(logs, key=lambda e: (e["transactionIndex"], e["logIndex"]))
        requests: list[proofs.ProofRequest] = []
        activations: list[tuple[str, int, tuple[str, ...], dict[str, str]]] = []
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
                elif name in ("ActivateKey", "ActivateCrs"):
                    activations.append(_activation(name, args))
            except _Skip as skipped:
                self._skip(entry, str(skipped))
        async with self.pool.acquire() as connection, connection.transaction():
            for request in requests:
                if await proofs.insert_request(connection, request):
                    self.counters.requests += 1
            for kind, material_id, urls, digests in activations:
                await kms_rows.queue_activation(connection, kind, material_id, urls, digests)
            await connection.execute(
                """INSERT INTO gateway_blocks (chain_id, block_number, block_hash)
                   VALUES ($1, $2, $3) ON CONFLICT (chain_id, block_number)
                   DO UPDATE SET block_hash = EXCLUDED.block_hash, processed_at = now()""",
                self.chain_id,
                number,
                block_hash,
            )
        self.counters.blocks += 1
        if requests or activations:
            log.info(
                "gateway block",
                extra={
                    "fields": {
                        "number": number,
                        "requests": len(requests),
                        "activations": len(activations),
                    }
                },
            )
        return block_hash

    async def _prune(self) -> None:
        """Keep the cursor and the reorg window, no more."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                """DELETE FROM gateway_blocks WHERE chain_id = $1 AND block_number <
                   (SELECT max(block_number) FROM gateway_blocks WHERE chain_id = $1) - $2""",
                self.chain_id,
                self.settings.gateway_reorg_window,
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

    # --- KMS activations, apart from the cursor ----------------------------------------

    async def apply_activations(self) -> None:
        """Apply the queued activations that are due: fetched and digest-checked, then
        applied in one transaction, or refused (never retried), or - storage down - left
        for later with backoff. The cursor never waits on them."""
        async with self.pool.acquire() as connection:
            due = await kms_rows.due_activations(connection)
        for activation in due:
            try:
                what = await self._apply(activation)
            except ServiceUnavailable as error:
                self.counters.fetch_retries += 1
                delay = min(
                    self.settings.kms_fetch_backoff_s * 2**activation.attempts, KMS_BACKOFF_CAP_S
                )
                async with self.pool.acquire() as connection:
                    await kms_rows.retry_activation(
                        connection, activation.activation_id, str(error)[:2000], delay
                    )
                log.warning(
                    "KMS activation deferred",
                    extra={
                        "fields": {
                            "material": _label(activation),
                            "error": str(error)[:300],
                            "retry_in_s": delay,
                        }
                    },
                )
                continue
            except Irrecoverable as error:
                self.counters.refused_activations += 1
                async with self.pool.acquire() as connection:
                    await kms_rows.settle_activation(
                        connection, activation.activation_id, "refused", str(error)[:2000]
                    )
                log.error(
                    "KMS activation refused",
                    extra={"fields": {"material": _label(activation), "error": str(error)[:500]}},
                )
                continue
            async with self.pool.acquire() as connection:
                await kms_rows.settle_activation(connection, activation.activation_id, "applied")
            log.info("KMS activation applied", extra={"fields": {"material": what}})

    async def _apply(self, activation: kms_rows.Activation) -> str:
        allowed = self.settings.kms_storage_url_prefixes
        if activation.kind == "crs":
            crs_event = kms.ActivateCrs(
                activation.material_id,
                activation.storage_urls,
                bytes.fromhex(activation.digests[kms.CRS_DIR]),
            )
            crs = await asyncio.to_thread(kms.fetch_crs, crs_event, self.fetch, allowed)
            async with self.pool.acquire() as connection:
                if await kms.apply_crs(connection, self.store, crs_event, crs):
                    self.counters.crs_activated += 1
            return _label(activation)
        event = kms.ActivateKey(
            activation.material_id,
            activation.storage_urls,
            {
                t: bytes.fromhex(activation.digests[d])
                for t, d in kms.OBJECT_DIRS.items()
                if d in activation.digests
            },
        )
        async with self.pool.acquire() as connection:
            applied = await kms_rows.key_applied(connection, event.key_id)
            if applied is not None:
                known = await kms_rows.key_digests(connection, event.key_id)
                if known != activation.digests:
                    raise kms.KeysetConflict(
                        f"KMS key {event.key_id:#x} is activated again with other digests; "
                        "a key id names one keyset: the first one is kept"
                    )
                return _label(activation)
        assert self.tenant_chain_id is not None
        keyset = await asyncio.to_thread(kms.fetch_keyset, event, "tfhe-rs", self.fetch, allowed)
        async with self.pool.acquire() as connection:
            tenant = await kms.apply_key(
                connection, self.store, self.settings, event, keyset, self.tenant_chain_id
            )
        self.counters.keys_activated += 1
        return f"{_label(activation)} -> tenant {tenant.name}"

    def _skip(self, entry: Any, reason: str) -> None:
        record_skip(self.counters, entry, reason, "gateway log skipped")
