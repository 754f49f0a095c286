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

import asyncio
import enum
import hashlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eth_hash.auto import keccak

from .crs import pinned_crs
from .db import kms as kms_rows
from .db import queries
from .errors import Irrecoverable, ServiceUnavailable
from .fhe.engine import Keyset
from .settings import Settings
from .storage import ObjectStore
from .tenants import store_keyset

log = logging.getLogger(__name__)

KEY_SEPARATOR = b"PDAT_KEY"
CRS_SEPARATOR = b"PDAT_CRS"
FETCH_DEADLINE_S = 600.0  # a whole object, however slowly a server sends it
READ_CHUNK = 1 << 20


class KeyType(enum.IntEnum):
    """``IKMSGeneration.KeyType``: the keyType of a KeyDigest."""

    SERVER = 0
    PUBLIC = 1


OBJECT_DIRS = {KeyType.SERVER: "ServerKey", KeyType.PUBLIC: "PublicKey"}
CRS_DIR = "CRS"
# The most a KMS node may send per object (a full server key is ~0.5 GB, a compact
# public key ~30 KB, a 2048-bit CRS ~5 MB): a hostile or broken server costs no more.
SIZE_LIMITS = {"ServerKey": 4 << 30, "PublicKey": 64 << 20, CRS_DIR: 256 << 20}


class MaterialRefused(Irrecoverable):
    """The activation cannot be applied, whatever is retried: refused, counted, logged."""


class DigestMismatch(MaterialRefused):
    """No storage URL served bytes matching the announced digest."""


class StorageRefused(MaterialRefused):
    """A storage URL this deployment does not fetch from, a redirect, an oversized body."""


class KeysetConflict(MaterialRefused):
    """The KMS key id, or the keyset, already belongs to another tenant here."""


def material_digest(separator: bytes, data: bytes) -> bytes:
    digest = hashlib.shake_256(separator)
    digest.update(data)  # no concatenated copy of a 0.5 GB key
    return digest.digest(32)


def object_url(storage_url: str, directory: str, material_id: int) -> str:
    return f"{storage_url.rstrip('/')}/{directory}/{material_id:064x}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise StorageRefused(f"GET {req.full_url}: redirected (HTTP {code}); not followed")


_OPENER = urllib.request.build_opener(_NoRedirects)


def check_storage_url(url: str, allowed_prefixes: Sequence[str] = ()) -> None:
    """Only http(s), and only under an allowed prefix when the deployment lists some
    (FHE_KMS_STORAGE_URL_PREFIXES): the URLs come from chain events anyone may read."""
    if not url.startswith(("http://", "https://")):
        raise StorageRefused(f"storage URL {url!r} is not http(s)")
    if allowed_prefixes and not any(url.startswith(p) for p in allowed_prefixes):
        raise StorageRefused(f"storage URL {url!r} is not under FHE_KMS_STORAGE_URL_PREFIXES")


def fetch_url(url: str, limit: int, deadline_s: float = FETCH_DEADLINE_S) -> bytes:
    """One HTTP GET, no redirects, at most ``limit`` bytes within ``deadline_s``:
    ServiceUnavailable when the server cannot be reached or answers an error (retried
    later), StorageRefused for what no retry fixes."""
    started = time.monotonic()
    try:
        with _OPENER.open(url, timeout=min(60.0, deadline_s)) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise StorageRefused(f"GET {url}: {declared} bytes, more than {limit}")
            chunks, size = [], 0
            while chunk := response.read(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise StorageRefused(f"GET {url}: more than {limit} bytes")
                if time.monotonic() - started > deadline_s:
                    raise ServiceUnavailable("kms storage", f"GET {url}: over {deadline_s:g} s")
                chunks.append(chunk)
    except urllib.error.HTTPError as error:
        raise ServiceUnavailable("kms storage", f"GET {url}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServiceUnavailable("kms storage", f"GET {url}: {error}") from None
    return b"".join(chunks)


def fetch_verified(
    storage_urls: Sequence[str],
    directory: str,
    material_id: int,
    separator: bytes,
    digest: bytes,
    fetch=fetch_url,
    allowed_prefixes: Sequence[str] = (),
) -> bytes:
    """The object from the first KMS node whose copy matches ``digest``.

    DigestMismatch when every node served other bytes or was refused (and none was
    down); ServiceUnavailable when none matched and at least one could not be reached
    (it may serve the right bytes later)."""
    if not storage_urls:
        raise DigestMismatch(f"{directory}/{material_id:#x}: the activation lists no storage URL")
    unreachable: list[str] = []
    refused: list[str] = []
    for storage_url in storage_urls:
        url = object_url(storage_url, directory, material_id)
        try:
            check_storage_url(url, allowed_prefixes)
            data = fetch(url, SIZE_LIMITS.get(directory, SIZE_LIMITS["ServerKey"]))
        except ServiceUnavailable as error:
            unreachable.append(str(error))
            continue
        except MaterialRefused as error:
            refused.append(str(error))
            continue
        if material_digest(separator, data) == digest:
            return data
        refused.append(f"{url}: digest {material_digest(separator, data).hex()}")
    if unreachable:
        raise ServiceUnavailable(
            "kms storage", f"{directory}/{material_id:#x}: " + "; ".join(unreachable)
        )
    raise DigestMismatch(
        f"{directory}/{material_id:#x}: no storage URL served bytes with the announced "
        f"digest {digest.hex()} ({'; '.join(refused)})"
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


def fetch_keyset(
    event: ActivateKey, backend: str = "tfhe-rs", fetch=fetch_url, allowed_prefixes=()
) -> Keyset:
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
            allowed_prefixes,
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
    ``chain_id`` (bound to FHE_NAMESPACE, where the host listener creates its batches).
    KeysetConflict when the id or the keyset is another tenant's."""
    applied = await kms_rows.key_applied(connection, event.key_id)
    if applied is not None:
        tenant = await queries.get_tenant_by_id(connection, applied)
        assert tenant is not None
        return tenant
    holder = await connection.fetchval(
        "SELECT name FROM tenants WHERE key_id = $1 ORDER BY tenant_id LIMIT 1", keyset.key_id
    )
    name = holder or kms_tenant_name(event.key_id)
    location, parts = None, None
    if holder is None:  # the slow part (split, uploads) off the loop, before the transaction
        location, parts = await asyncio.to_thread(store_keyset, store, name, keyset)
    try:
        async with connection.transaction():
            if holder is not None:
                if not await queries.activate_tenant(connection, holder, event.key_id):
                    raise KeysetConflict(
                        f"ActivateKey {event.key_id:#x}: tenant {holder!r} holds this keyset "
                        "under another KMS key id"
                    )
            else:
                await queries.create_tenant(
                    connection,
                    name,
                    chain_id,
                    keyset.key_id,
                    keyset.backend,
                    keys_location=location,
                    public_params=keyset.public_params,
                    kms_key_id=event.key_id,
                    key_parts=parts,
                )
            tenant = await queries.get_tenant(connection, name)
            assert tenant is not None
            if tenant.key_id != keyset.key_id or tenant.kms_key_id != event.key_id:
                raise KeysetConflict(
                    f"ActivateKey {event.key_id:#x}: tenant {name!r} exists with other keys"
                )
            if holder is None:
                await queries.bind_namespaces(connection, tenant.tenant_id, [settings.namespace])
            await kms_rows.record_key(
                connection,
                event.key_id,
                tenant.tenant_id,
                {OBJECT_DIRS[t]: d.hex() for t, d in event.digests.items()},
                event.storage_urls,
            )
    except asyncpg.UniqueViolationError:
        raise KeysetConflict(
            f"ActivateKey {event.key_id:#x}: KMS key id already belongs to another tenant"
        ) from None
    return tenant


def crs_object_key(crs_id: int) -> str:
    return f"crs/kms-{crs_id:064x}"


def fetch_crs(event: ActivateCrs, fetch=fetch_url, allowed_prefixes=()) -> bytes:
    return fetch_verified(
        event.storage_urls,
        CRS_DIR,
        event.crs_id,
        CRS_SEPARATOR,
        event.digest,
        fetch,
        allowed_prefixes,
    )


async def apply_crs(
    connection: asyncpg.Connection, store: ObjectStore, event: ActivateCrs, crs: bytes
) -> bool:
    """Pin the CRS (kept in this deployment's bucket, so stages never depend on the KMS
    being up); True if this call pinned it."""
    key = crs_object_key(event.crs_id)
    await asyncio.to_thread(store.put, key, crs)
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


async def deployment_crs(
    connection: asyncpg.Connection, store: ObjectStore, backend: str, max_bits: int
) -> bytes:
    """The CRS clients prove against and the verify stage checks with: the one the KMS
    activated last, else (no KMS, the dev stack) the deployment's generated one."""
    active = await kms_rows.active_crs(connection) if backend == "tfhe-rs" else None
    if active is not None:
        return await asyncio.to_thread(load_crs, store, active)
    return await pinned_crs(connection, store, backend, max_bits)
