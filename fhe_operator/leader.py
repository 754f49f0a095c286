"""One active operator among several replicas: a coordination.k8s.io Lease.

The scheme is client-go's leader election, which every Kubernetes controller uses:

* a replica that finds no Lease, or a Lease its holder has not renewed for
  ``lease duration``, takes it (writes itself as holder, with the resourceVersion it
  read, so of two replicas racing for it exactly one write succeeds);
* the holder renews every ``renew`` seconds; if it has not managed to renew for
  ``renew deadline`` (< lease duration) it stops reconciling, so by the time a standby
  may take over, the old holder has already stopped;
* on a clean stop (SIGTERM) the holder releases the Lease, so a standby takes over at
  its next try instead of after a whole lease duration.

Job creation stays idempotent on its own (deterministic names), so even a violated
timing assumption (a paused VM, a clock jump) creates no Job twice.

``decide`` is the pure rule; ``LeaseElector`` does the API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)


class Move(Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE_OVER = "take-over"  # expired or released
    WAIT = "wait"  # someone else holds it


@dataclass(frozen=True)
class LeaseRecord:
    """What matters of a Lease for the decision."""

    holder: str | None
    renewed: dt.datetime | None
    duration_s: float
    transitions: int = 0
    resource_version: str | None = None


def decide(record: LeaseRecord | None, me: str, unchanged_for_s: float) -> Move:
    """What this replica does with the Lease it just read (None: there is none).

    ``unchanged_for_s`` is how long, on this replica's own monotonic clock, the record
    has been seen without a change (client-go's observedTime): expiry never compares
    another node's renewTime with our wall clock, so clock skew cannot make a standby
    take over from a holder that keeps renewing."""
    if record is None:
        return Move.CREATE
    if record.holder == me:
        return Move.RENEW
    if not record.holder or unchanged_for_s >= record.duration_s:
        return Move.TAKE_OVER
    return Move.WAIT


def lease_body(
    name: str,
    namespace: str,
    me: str,
    now: dt.datetime,
    duration_s: float,
    previous: LeaseRecord | None,
    *,
    release: bool = False,
) -> dict[str, Any]:
    """The Lease object to write: ours (created, renewed, taken over) or released."""
    taking_over = previous is not None and previous.holder != me
    transitions = (previous.transitions if previous else 0) + (1 if taking_over else 0)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version:
        metadata["resourceVersion"] = previous.resource_version  # optimistic concurrency
    spec: dict[str, Any] = {
        "holderIdentity": "" if release else me,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "renewTime": _micro(now),
        "leaseTransitions": transitions,
    }
    if release:
        # An expired renewTime: the next replica to look takes it over at once.
        spec["renewTime"] = _micro(now - dt.timedelta(seconds=duration_s + 1))
    elif taking_over or previous is None:
        spec["acquireTime"] = _micro(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


def record_of(lease: Any) -> LeaseRecord:
    """A LeaseRecord from the kubernetes client's V1Lease."""
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or None,
        renewed=spec.renew_time,
        duration_s=float(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
        resource_version=lease.metadata.resource_version,
    )


def identity() -> str:
    """Unique per process: a restarted replica never believes it still holds the
    Lease its previous run held (client-go: hostname + a UUID)."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseElector:
    """Acquire, hold and release the operator's Lease. Blocking client calls run in
    threads so the event loop (kopf's too) never waits on the API server."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        name: str,
        *,
        duration_s: float,
        renew_s: float,
        renew_deadline_s: float,
        me: str | None = None,
    ) -> None:
        from kubernetes import client

        self.leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.duration_s = duration_s
        self.renew_s = renew_s
        self.renew_deadline_s = renew_deadline_s
        self.me = me or identity()
        self.is_leader = False
        self.last_renewed: float | None = None  # monotonic
        # The record as last read and since when (monotonic) it has looked like that.
        self._seen: tuple[object, float] | None = None

    async def try_once(self) -> bool:
        """One read-decide-write round; True when we hold the Lease afterwards."""
        from kubernetes.client.rest import ApiException

        try:
            lease = await asyncio.to_thread(
                self.leases.read_namespaced_lease, self.name, self.namespace, _request_timeout=5
            )
            record: LeaseRecord | None = record_of(lease)
        except ApiException as error:
            if error.status != 404:
                raise
            record = None
        now = _now()
        looked = time.monotonic()
        key = None if record is None else (record.holder, record.renewed, record.transitions)
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, looked)
        move = decide(record, self.me, looked - self._seen[1])
        if move is Move.WAIT:
            return False
        body = lease_body(self.name, self.namespace, self.me, now, self.duration_s, record)
        try:
            if move is Move.CREATE:
                await asyncio.to_thread(
                    self.leases.create_namespaced_lease, self.namespace, body, _request_timeout=5
                )
            else:
                await asyncio.to_thread(
                    self.leases.replace_namespaced_lease,
                    self.name,
                    self.namespace,
                    body,
                    _request_timeout=5,
                )
        except ApiException as error:
            if error.status in (409, 422):  # another replica wrote first
                return False
            raise
        if move is not Move.RENEW:
            log.info(
                "became the active operator",
                extra={"fields": {"lease": self.name, "identity": self.me, "move": move.value}},
            )
        self.is_leader = True
        self.last_renewed = looked
        self._seen = None  # our own write: the next read starts a fresh observation
        return True

    async def acquire(self, stop: asyncio.Event, beat: Any = None) -> bool:
        """Wait until we hold the Lease (True) or ``stop`` is set (False)."""
        logged = False
        while not stop.is_set():
            try:
                if await self.try_once():
                    return True
                if not logged:
                    log.info(
                        "standing by: another replica holds the lease",
                        extra={"fields": {"lease": self.name, "identity": self.me}},
                    )
                    logged = True
            except Exception as error:  # API server away: keep trying, say so
                log.warning("lease not readable", extra={"fields": {"error": str(error)}})
            if beat is not None:
                beat()
            await _sleep_or_stop(stop, self.renew_s)
        return False

    async def hold(self, lost: asyncio.Event, beat: Any = None) -> None:
        """Renew until ``lost`` is set by us (deadline passed, someone else holds it)
        or by the caller (stopping)."""
        while not lost.is_set():
            await _sleep_or_stop(lost, self.renew_s)
            if lost.is_set():
                return
            # Each try gets only what is left of the deadline, so a slow API server
            # cannot keep us leading past it.
            left = self.renew_deadline_s - (
                time.monotonic() - self.last_renewed if self.last_renewed else 0
            )
            try:
                renewed = await asyncio.wait_for(self.try_once(), max(0.1, left))
            except Exception as error:
                log.warning("lease renewal failed", extra={"fields": {"error": str(error)}})
                renewed = False
            if renewed:
                if beat is not None:
                    beat()
                continue
            since = time.monotonic() - self.last_renewed if self.last_renewed else 0
            if since >= self.renew_deadline_s or await self._held_by_other():
                self.is_leader = False
                log.error(
                    "lost the lease: stopping reconciliation",
                    extra={"fields": {"lease": self.name, "since_renewal_s": round(since, 1)}},
                )
                lost.set()

    async def _held_by_other(self) -> bool:
        try:
            lease = await asyncio.to_thread(
                self.leases.read_namespaced_lease, self.name, self.namespace, _request_timeout=5
            )
        except Exception:
            return False
        holder = lease.spec.holder_identity
        return bool(holder) and holder != self.me

    async def release(self) -> None:
        """Give the Lease up on a clean stop, if we still hold it."""
        if not self.is_leader:
            return
        try:
            lease = await asyncio.to_thread(
                self.leases.read_namespaced_lease, self.name, self.namespace, _request_timeout=5
            )
            record = record_of(lease)
            if record.holder != self.me:
                return
            body = lease_body(
                self.name, self.namespace, self.me, _now(), self.duration_s, record, release=True
            )
            await asyncio.to_thread(
                self.leases.replace_namespaced_lease,
                self.name,
                self.namespace,
                body,
                _request_timeout=5,
            )
            log.info("released the lease", extra={"fields": {"lease": self.name}})
        except Exception as error:  # it expires on its own
            log.warning("lease not released", extra={"fields": {"error": str(error)}})
        finally:
            self.is_leader = False


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
