"""``fhe-job sns``: switch-and-squash a batch's outputs, upload them, record digests.

For every published handle (the reference's sns-worker, one batch at a time):

1. squash the computed ciphertext into its decryption-ready form (ct128) and compress
   it into the ct64 object on a thread pool - one thread is the reference's
   Sequential policy, several its RayonParallel;
2. upload both as the protocol lays them out (``coprocessor.outputs``: raw TFHE-rs
   bytes, the ct64 and ct128 buckets, key = hex keccak256 of the object, ``Ct-Format``
   on ct128) with bounded concurrency, retries with backoff and a circuit breaker; an
   object already there is never overwritten;
3. in the handle's own transaction, which has held its queue row
   (``FOR UPDATE SKIP LOCKED``) since step 1: store ct128, write the keccak256 digests
   of both objects to ``ciphertext_digest``, mark the row done, NOTIFY.

A crash anywhere loses only handles in flight: their transactions roll back and a
re-run re-squashes and re-compresses them (deterministic) and finds the objects
already in S3 under the same digests, so nothing is uploaded or recorded twice. Bad
bytes fail that handle with the reason and the others still publish (exit 3); S3
unreachable after the retries is recoverable (exit 75) and keeps what was done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg

from coprocessor import outputs
from coprocessor.api.summary import SnsSummary
from coprocessor.db import publish, queries
from coprocessor.db.pool import connect_settings, pool_of
from coprocessor.errors import (
    Irrecoverable,
    Recoverable,
)
from coprocessor.fhe.engine import Evaluator, SquashedFormat
from coprocessor.fhe.envelope import Envelope, Kind
from coprocessor.keycache import KeyCache
from coprocessor.retry import CircuitBreaker
from coprocessor.settings import Settings
from coprocessor.storage import ForeignObject, ObjectStore
from coprocessor.tenants import devices_for, load_evaluator, whole_key_is_cached
from coprocessor.types import FheType

from .compute import batch_tenant
from .executor import usable_cores
from .upload import CircuitOpen, Uploader

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Published:
    squashed: bool
    uploaded: int


@dataclass(frozen=True)
class _AlreadyDone:
    pass


@dataclass(frozen=True)
class _Failed:
    reason: str


class Publisher:
    """Publishes handles of one tenant; one instance per SNS pod."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        tenant: queries.Tenant,
        settings: Settings,
        uploader: Uploader,
        buckets: tuple[ObjectStore, ObjectStore],
        preloaded: Preload | None = None,
    ) -> None:
        self.pool = pool
        self._preloaded = preloaded
        self.tenant = tenant
        self.settings = settings
        self.uploader = uploader
        self.ct64_store, self.ct128_store = buckets
        self._evaluator: Evaluator | None = None
        self._evaluator_lock = asyncio.Lock()
        self._squash_pool = ThreadPoolExecutor(
            settings.sns_workers or usable_cores(), thread_name_prefix="squash"
        )
        self._upload_pool = ThreadPoolExecutor(
            settings.sns_upload_concurrency, thread_name_prefix="upload"
        )
        # A handle in flight holds a pooled connection (its transaction) throughout.
        self._in_flight = asyncio.Semaphore(max(1, settings.database_pool_size - 1))

    def close(self) -> None:
        self._squash_pool.shutdown(wait=True)
        self._upload_pool.shutdown(wait=True)

    async def evaluator(self) -> Evaluator:
        """Loaded on first need: a re-run with every handle squashed needs no key."""
        async with self._evaluator_lock:
            if self._evaluator is None and self._preloaded is not None:
                preloaded, self._preloaded = self._preloaded, None
                # Loading since the pod started; a failed one is loaded again below,
                # once, with its retries.
                self._evaluator = await preloaded.evaluator()
            if self._evaluator is None:
                self._evaluator = await asyncio.to_thread(
                    sns_evaluator, self.settings, self.uploader.store, self.tenant
                )
            return self._evaluator

    async def publish(self, handle: bytes) -> _Published | _AlreadyDone | _Failed:
        """Publish one handle; waits while another pod holds it."""
        async with self._in_flight:
            deadline = time.monotonic() + self.settings.compute_input_wait_s
            while True:
                outcome = await self._publish_once(handle)
                if outcome is not None:
                    return outcome
                if time.monotonic() > deadline:
                    raise _HeldElsewhere(handle)
                await asyncio.sleep(min(self.settings.notify_poll_interval_s, 1.0))

    async def _publish_once(self, handle: bytes) -> _Published | _AlreadyDone | _Failed | None:
        tenant_id = self.tenant.tenant_id
        async with self.pool.acquire() as connection, connection.transaction():
            state = await publish.lock_publication(connection, tenant_id, handle)
            if state is None:
                return None  # another pod holds it
            if state.is_completed:
                return _AlreadyDone()
            if state.is_error:
                return _Failed(state.error_message or "failed earlier")
            if self.uploader.breaker.is_open:  # S3 is gone: do not squash for nothing
                raise CircuitOpen("s3", "circuit open; handle left for a re-run")
            source = await publish.publication_source(connection, tenant_id, handle)
            # A missing or unloadable key is the pod's problem, not this handle's.
            evaluator = await self.evaluator() if source.ciphertext is not None else None
            try:
                squashed = await self._squash(source, evaluator)
            except Irrecoverable as error:
                await publish.fail_publication(connection, tenant_id, handle, str(error))
                log.warning(
                    "handle failed",
                    extra={"fields": {"handle": "0x" + handle.hex(), "error": str(error)}},
                )
                return _Failed(str(error))
            loop = asyncio.get_running_loop()
            ct64_object = squashed.ct64_object
            ct128_object = Envelope.from_bytes(squashed.ct128).payload
            uploads = [
                (self.ct64_store, ct64_object, None),
                (self.ct128_store, ct128_object, outputs.ct128_metadata(squashed.format)),
            ]
            try:
                uploaded = sum(
                    await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                self._upload_pool,
                                self.uploader.publish,
                                store,
                                outputs.object_key(data),
                                data,
                                metadata,
                            )
                            for store, data, metadata in uploads
                        )
                    )
                )
            except ForeignObject as error:
                await publish.fail_publication(connection, tenant_id, handle, str(error))
                return _Failed(str(error))
            await publish.complete_publication(
                connection,
                tenant_id,
                handle,
                squashed.ct128,
                publish.Digests(
                    self.tenant.key_id,
                    outputs.digest(ct64_object),
                    outputs.digest(ct128_object),
                    int(squashed.format),
                    self.ct64_store.bucket,
                    self.ct128_store.bucket,
                ),
            )
            log.info(
                "handle published",
                extra={
                    "fields": {
                        "handle": "0x" + handle.hex(),
                        "type": squashed.fhe_type.name,
                        "squashed": squashed.fresh,
                        "uploaded": uploaded,
                        "ct64_bytes": len(ct64_object),
                        "ct128_bytes": len(ct128_object),
                    }
                },
            )
            return _Published(squashed.fresh, uploaded)

    async def _squash(
        self, source: publish.PublicationSource, evaluator: Evaluator | None
    ) -> _Squashed:
        """The handle's two forms; Irrecoverable when there is nothing valid to publish."""
        if source.computation_error:
            raise _NotPublishable(f"its computation failed: {source.computation_error}")
        if source.ciphertext is None or source.ciphertext_type is None or evaluator is None:
            # Its computation may still run (an sns-only batch, another batch's node):
            # leave the queue row alone and let the Job retry the pod.
            raise _NotComputedYet("no ciphertext is stored for it yet (not computed)")
        declared = FheType(source.ciphertext_type)
        # The tenant's key id is the SHA-256 of its server key; envelopes carry 8 bytes.
        digest = self.tenant.key_id[:8]
        Envelope.from_bytes(source.ciphertext).expect(
            backend=self.tenant.backend, digest=digest, fhe_type=declared
        )
        loop = asyncio.get_running_loop()
        ct64_object = await loop.run_in_executor(
            self._squash_pool, evaluator.compress, source.ciphertext
        )
        if source.ciphertext128 is not None:  # squashed by an earlier run
            Envelope.from_bytes(source.ciphertext128).expect(
                backend=self.tenant.backend, digest=digest, fhe_type=declared, kind=Kind.SQUASHED
            )
            return _Squashed(
                ct64_object,
                source.ciphertext128,
                False,
                declared,
                SquashedFormat(source.ciphertext128_format or 0),
            )
        ct128 = await loop.run_in_executor(self._squash_pool, evaluator.squash, source.ciphertext)
        return _Squashed(ct64_object, ct128, True, declared, evaluator.squashed_format(declared))


@dataclass(frozen=True)
class _Squashed:
    ct64_object: bytes  # raw, for S3 (the database keeps the enveloped ciphertext)
    ct128: bytes  # enveloped, for the database; its payload goes to S3
    fresh: bool  # squashed by this run
    fhe_type: FheType
    format: SquashedFormat


class _NotPublishable(Irrecoverable):
    pass


class _NotComputedYet(Recoverable):
    pass


class _HeldElsewhere(Recoverable):
    def __init__(self, handle: bytes) -> None:
        super().__init__(f"handle 0x{handle.hex()} is held by another pod")


def sns_evaluator(settings: Settings, store: ObjectStore, tenant: queries.Tenant) -> Evaluator:
    """The whole key (squashing and compression included); blocking: S3, the key's
    expansion and (on GPU nodes) CUDA's start, so it runs in a thread."""
    return load_evaluator(store, tenant, None, KeyCache.of(settings), devices_for(settings, tenant))


@dataclass
class Preload:
    """SNS's key (the whole one), loading from the start of a pod that computes first
    (``fhe-job compute,sns``). ``for_compute``: compute uses it too, instead of loading
    its own share; chosen where the node cache holds the whole key, so reading it takes
    seconds (1.9 s for 2 GB on 2 cores) and one key in memory serves both stages. On a
    node without it, compute starts on its share (1 s) while the whole key decompresses
    (13 s) beside it."""

    key: asyncio.Task[Evaluator]
    for_compute: bool

    async def evaluator(self) -> Evaluator | None:
        """The key, or None (logged) where its load failed: the stage loads its own."""
        try:
            return await self.key
        except Exception as error:
            log.warning(
                "the key preloaded for this pod failed; the stage loads its own",
                extra={"fields": {"error": str(error)[:300]}},
            )
            return None

    def cancel(self) -> None:
        self.key.cancel()  # a thread already loading finishes; its result is dropped


async def start_preload(settings: Settings, batch_id: str) -> Preload | None:
    """SNS's key, loading in the background from now on, or None (SNS loads its key
    when it starts): where the batch's outputs are all published already (a re-run: SNS
    needs no key), where the tenant has no compute share (compute loads the whole key
    itself, and SNS reuses it from the process's EvaluatorCache), and where the pod
    computes on GPUs (two keys expanding onto the same devices at once would each count
    their memory as free, coprocessor.gpu.DevicePool). A GPU node whose CUDA sees no
    device computes on the CPU, and preloads."""
    connection = await connect_settings(settings)  # two queries: one connection, no pool
    try:
        tenant = await batch_tenant(connection, batch_id)
        publications = await publish.batch_publications(connection, batch_id)
    finally:
        await connection.close()
    if await asyncio.to_thread(devices_for, settings, tenant) is not None:
        return None
    if publications and all(p.is_completed or p.is_error for p in publications):
        return None
    if not tenant.key_parts.get("compute"):
        return None
    warm = await asyncio.to_thread(whole_key_is_cached, tenant, KeyCache.of(settings))
    loading = asyncio.create_task(
        asyncio.to_thread(sns_evaluator, settings, ObjectStore(settings), tenant)
    )
    return Preload(loading, for_compute=warm)


async def run_sns(
    settings: Settings, batch_id: str, preloaded: Preload | None = None
) -> SnsSummary:
    """``preloaded``: the key, loading since before this stage (``start_preload``)."""
    started = time.monotonic()
    pool = await pool_of(settings)
    try:
        async with pool.acquire() as connection:
            tenant = await batch_tenant(connection, batch_id)
            async with connection.transaction():
                queued = await publish.enqueue_batch_outputs(connection, batch_id)
            publications = await publish.batch_publications(connection, batch_id)
        store = ObjectStore(settings, connect_timeout=HEALTH_TIMEOUT_S, attempts=1)
        buckets = (
            ObjectStore(settings, bucket=settings.s3_bucket_ct64),
            ObjectStore(settings, bucket=settings.s3_bucket_ct128),
        )
        for bucket in (store, *buckets):  # every bucket answers, or exit 75 now
            await asyncio.to_thread(bucket.check)
        pending = [p.handle for p in publications if not (p.is_completed or p.is_error)]
        log.info(
            "sns started",
            extra={
                "fields": {
                    "batch": batch_id,
                    "tenant": tenant.name,
                    "handles": len(publications),
                    "queued_now": queued,
                    "pending": len(pending),
                    "workers": settings.sns_workers or usable_cores(),
                    "uploads": settings.sns_upload_concurrency,
                }
            },
        )
        uploader = Uploader(
            store,
            attempts=settings.sns_upload_attempts,
            first_delay_s=settings.sns_backoff_s,
            max_delay_s=settings.sns_backoff_cap_s,
            breaker=CircuitBreaker(settings.sns_breaker_threshold),
        )
        publisher = Publisher(pool, tenant, settings, uploader, buckets, preloaded)
        try:
            outcomes = await asyncio.gather(
                *(publisher.publish(h) for h in pending), return_exceptions=True
            )
        finally:
            publisher.close()
        return _summarize(
            publications,
            dict(zip(pending, outcomes, strict=True)),
            uploader,
            time.monotonic() - started,
        )
    finally:
        await pool.close()


def _summarize(
    publications: list[publish.Publication],
    outcomes: dict[bytes, object],
    uploader: Uploader,
    seconds: float,
) -> SnsSummary:
    summary = SnsSummary(
        total=len(publications),
        retries=uploader.retries,
        megabytes=uploader.uploaded_bytes / 1e6,
        seconds=seconds,
    )
    for item in publications:
        label = "0x" + item.handle.hex()
        outcome = outcomes.get(item.handle)
        if item.is_completed or isinstance(outcome, _AlreadyDone):
            summary.completed += 1
        elif item.is_error or isinstance(outcome, _Failed):
            summary.failed += 1
            reason = item.error_message if item.is_error else outcome.reason  # type: ignore
            summary.failures[label] = reason or "failed"
        elif isinstance(outcome, _Published):
            summary.completed += 1
            summary.squashed += outcome.squashed
            summary.uploaded += outcome.uploaded
            summary.reused += 2 - outcome.uploaded
        elif isinstance(outcome, Recoverable):
            summary.error = summary.error or str(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome  # a bug or a fatal error: exit 1 with the traceback
    if summary.error:
        summary.error = (
            f"{summary.error} ({summary.completed}/{summary.total} published; a re-run continues)"
        )
    return summary
