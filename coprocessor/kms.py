"""Key material from the KMS: fetched from its storage URLs, checked against the digests
the gateway's ``KMSGeneration`` announced, then applied once.

``ActivateKey(keyId, urls, [(keyType, digest)...])`` names a keyset the KMS made;
``ActivateCrs(crsId, urls, digest)`` a CRS. Each KMS node serves the objects over HTTP
at ``<url>/ServerKey/<keyId as 64 hex>``, ``/PublicKey/<keyId>`` and ``/CRS/<crsId>``;
a digest is SHAKE-256 of an 8-byte domain separator and the bytes, 32 bytes out
(``PDAT_KEY`` for keys, ``PDAT_CRS`` for the CRS), as Zama's gateway listener checks it.
The digests are on chain, so an object that does not match is refused whoever serves it
(a forged or damaged key never becomes a tenant's), and an unreachable URL is retried
without anything being half-applied.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eth_hash.auto import keccak

from .db import kms as kms_rows
from .db import queries
from .errors import Irrecoverable, ServiceUnavailable
from .fhe.engine import Keyset
from .settings import Settings
from .storage import ObjectStore
from .tenants import create_tenant

log = logging.getLogger(__name__)

KEY_SEPARATOR = b"PDAT_KEY"
CRS_SEPARATOR = b"PDAT_CRS"
MAX_OBJECT_BYTES = 4 << 30  # a full server key is ~0.5 GB; bounds a hostile server
FETCH_TIMEOUT_S = 60.0


class KeyType(enum.IntEnum):
    """``IKMSGeneration.KeyType``: the keyType of a KeyDigest."""

    SERVER = 0
    PUBLIC = 1


OBJECT_DIRS = {KeyType.SERVER: "ServerKey", KeyType.PUBLIC: "PublicKey"}
CRS_DIR = "CRS"


class DigestMismatch(Irrecoverable):
    """No storage URL served bytes matching the announced digest: refused, not retried."""


def material_digest(separator: bytes, data: bytes) -> bytes:
    return hashlib.shake_256(separator + data).digest(32)


def object_url(storage_url: str, directory: str, material_id: int) -> str:
    return f"{storage_url.rstrip('/')}/{directory}/{material_id:064x}"


def fetch_url(url: str, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """One HTTP GET; ServiceUnavailable when the server cannot be reached or answers an
    error (retried later), the body otherwise (at most MAX_OBJECT_BYTES)."""
    if not url.startswith(("http://", "https://")):
        raise DigestMismatch(f"storage URL {url!r} is not http(s)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(MAX_OBJECT_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ServiceUnavailable("kms storage", f"GET {url}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServiceUnavailable("kms storage", f"GET {url}: {error}") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise DigestMismatch(f"GET {url}: more than {MAX_OBJECT_BYTES} bytes")
    return data


def fetch_verified(
    storage_urls: Sequence[str],
    directory: str,
    material_id: int,
    separator: bytes,
    digest: bytes,
    fetch=fetch_url,
) -> bytes:
    """The object from the first KMS node whose copy matches ``digest``.

    DigestMismatch when every reachable node served other bytes (and none was down);
    ServiceUnavailable when none matched and at least one could not be reached (it may
    serve the right bytes later)."""
    if not storage_urls:
        raise DigestMismatch(f"{directory}/{material_id:#x}: the activation lists no storage URL")
    unreachable: list[str] = []
    mismatched: list[str] = []
    for storage_url in storage_urls:
        url = object_url(storage_url, directory, material_id)
        try:
            data = fetch(url)
        except ServiceUnavailable as error:
            unreachable.append(str(error))
            continue
        except DigestMismatch as error:
            mismatched.append(str(error))
            continue
        if material_digest(separator, data) == digest:
            return data
        mismatched.append(f"{url}: digest {material_digest(separator, data).hex()}")
    if unreachable:
        raise ServiceUnavailable(
            "kms storage", f"{directory}/{material_id:#x}: " + "; ".join(unreachable)
        )
    raise DigestMismatch(
        f"{directory}/{material_id:#x}: no storage URL served bytes with the announced "
        f"digest {digest.hex()} ({'; '.join(mismatched)})"
    )


@dataclass(frozen=True)
class ActivateKey:
    key_id: int
    storage_urls: tuple[str, ...]
    digests: dict[KeyType, bytes]


@dataclass(frozen=True)
class ActivateCrs:
    crs_id: int
    storage_urls: tuple[str, ...]
    digest: bytes


def kms_tenant_name(key_id: int) -> str:
    """A tenant name for a keyset the KMS made that no tenant here has yet."""
    return "kms-" + keccak(key_id.to_bytes(32, "big")).hex()[:12]


def fetch_keyset(event: ActivateKey, backend: str = "tfhe-rs", fetch=fetch_url) -> Keyset:
    """The server and public keys of an activation, each matched to its digest."""
    missing = [t.name for t in OBJECT_DIRS if t not in event.digests]
    if missing:
        raise DigestMismatch(f"ActivateKey {event.key_id:#x} has no digest for {missing}")
    material = {
        key_type: fetch_verified(
            event.storage_urls,
            OBJECT_DIRS[key_type],
            event.key_id,
            KEY_SEPARATOR,
            event.digests[key_type],
            fetch,
        )
        for key_type in OBJECT_DIRS
    }
    # The client key stays with the KMS (its MPC nodes share it): none here.
    return Keyset(backend, b"", material[KeyType.SERVER], material[KeyType.PUBLIC])


async def apply_key(
    connection: asyncpg.Connection,
    store: ObjectStore,
    settings: Settings,
    event: ActivateKey,
    keyset: Keyset,
    chain_id: int,
) -> queries.Tenant:
    """Make the activated keyset a tenant's, once: the tenant already holding that exact
    server key is activated under the KMS's id; otherwise a tenant is created for
    ``chain_id`` (bound to FHE_NAMESPACE, where the host listener creates its batches)."""
    async with connection.transaction():
        applied = await kms_rows.key_applied(connection, event.key_id)
        if applied is not None:
            tenant = await queries.get_tenant_by_id(connection, applied)
            assert tenant is not None
            return tenant
        existing = await connection.fetchval(
            "SELECT name FROM tenants WHERE key_id = $1 ORDER BY tenant_id LIMIT 1",
            keyset.key_id,
        )
        if existing is not None:
            if not await queries.activate_tenant(connection, existing, event.key_id):
                raise DigestMismatch(
                    f"ActivateKey {event.key_id:#x}: tenant {existing!r} holds this keyset "
                    "under another KMS key id"
                )
            tenant = await queries.get_tenant(connection, existing)
        else:
            created = await create_tenant(
                connection,
                store,
                settings,
                kms_tenant_name(event.key_id),
                chain_id,
                keyset.backend,
                keyset=keyset,
                kms_key_id=event.key_id,
            )
            tenant = created.tenant
            await queries.bind_namespaces(connection, tenant.tenant_id, [settings.namespace])
        assert tenant is not None
        await kms_rows.record_key(
            connection,
            event.key_id,
            tenant.tenant_id,
            {OBJECT_DIRS[t]: d.hex() for t, d in event.digests.items()},
            event.storage_urls,
        )
    return tenant


def crs_object_key(crs_id: int) -> str:
    return f"crs/kms-{crs_id:064x}"


def fetch_crs(event: ActivateCrs, fetch=fetch_url) -> bytes:
    return fetch_verified(
        event.storage_urls, CRS_DIR, event.crs_id, CRS_SEPARATOR, event.digest, fetch
    )


async def apply_crs(
    connection: asyncpg.Connection, store: ObjectStore, event: ActivateCrs, crs: bytes
) -> bool:
    """Pin the CRS (kept in this deployment's bucket, so stages never depend on the KMS
    being up); True if this call pinned it."""
    key = crs_object_key(event.crs_id)
    store.put(key, crs)
    return await kms_rows.record_crs(
        connection, event.crs_id, key, event.digest, event.storage_urls
    )


def load_crs(store: ObjectStore, active: kms_rows.KmsCrs) -> bytes:
    """The pinned CRS, checked against the digest the KMS announced."""
    data = store.get(active.object_key)
    if material_digest(CRS_SEPARATOR, data) != active.digest:
        raise Irrecoverable(
            f"the CRS at {active.object_key} does not match the digest KMSGeneration "
            f"announced for CRS {active.crs_id:#x}"
        )
    return data
