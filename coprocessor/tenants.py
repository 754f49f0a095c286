"""Tenants and their keysets: creation, and loading the keys each role needs.

Where each key lives:
* the **client key** (secret) stays on the machine that created the tenant, under
  ``<cache>/keys/<tenant>/`` with mode 0600; the coprocessor never stores it;
* the **server key** (hundreds of MB for TFHE-rs) goes to S3 at
  ``keys/<tenant>/<key id>/server_key``, named on the tenant row (keys_location), and,
  where the backend splits it, the compute and verify stages' shares next to it
  (``compute_key``, ``verify_key``, named with their SHA-256 in ``key_parts``), so
  those pods fetch and expand a tenth of it;
* the **public parameters** (compact public key) are small and stay in the row.

Creation is restartable: the keyset is first written locally, so a run that dies after
key generation but before the database row reuses those keys instead of making new ones.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .db import queries
from .errors import UserError
from .fhe.engine import KEY_PURPOSES, Client, Keyset, get_backend
from .gpu import DevicePool, stage_devices
from .keycache import KeyCache, cache_name
from .settings import Settings
from .storage import ObjectStore

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(
            f"tenant name {name!r} must be lowercase letters, digits and '-', "
            "1-63 characters, starting and ending with a letter or digit"
        )
    return name


def check_namespace(namespace: str) -> str:
    """A Kubernetes namespace name (RFC 1123 label), or UserError."""
    if not isinstance(namespace, str) or not _NAME.fullmatch(namespace):
        raise UserError(
            f"namespace {namespace!r} is not a Kubernetes namespace name (lowercase letters, "
            "digits and '-', at most 63)"
        )
    return namespace


def key_dir(settings: Settings, name: str) -> Path:
    return settings.cache_dir / "keys" / check_name(name)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _local_keyset(directory: Path, backend: str) -> Keyset | None:
    files = [directory / n for n in ("client_key", "server_key", "public_params", "backend")]
    if not all(f.exists() for f in files):
        return None
    if files[3].read_text().strip() != backend:
        raise UserError(
            f"local keys in {directory} are for backend "
            f"{files[3].read_text().strip()!r}, not {backend!r}"
        )
    return Keyset(backend, files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes())


def _save_locally(directory: Path, keyset: Keyset, *, with_server_key: bool) -> None:
    """The ``backend`` file goes last: its presence says the keyset is complete. Files
    of an earlier, interrupted creation go first, so keys never mix."""
    for stale in ("backend", "server_key"):
        (directory / stale).unlink(missing_ok=True)
    if with_server_key:
        _write_private(directory / "server_key", keyset.server_key)
    _write_private(directory / "public_params", keyset.public_params)
    _write_private(directory / "client_key", keyset.client_key)
    _write_private(directory / "backend", keyset.backend.encode())


@dataclass(frozen=True)
class CreatedTenant:
    tenant: queries.Tenant
    created: bool


async def create_tenant(
    connection: asyncpg.Connection,
    store: ObjectStore,
    settings: Settings,
    name: str,
    chain_id: int,
    backend_name: str,
    keyset: Keyset | None = None,
    kms_key_id: int | None = None,
) -> CreatedTenant:
    """The tenant row, its server key in S3 and its client key on this machine.

    ``keyset`` is one made elsewhere (a key ceremony; tests sharing one session keyset,
    since generating one takes tens of seconds); by default a fresh one is generated.
    ``kms_key_id`` is the id the KMS activated the keyset under (``activate`` sets it
    later otherwise).
    """
    check_name(name)
    if kms_key_id is not None:
        check_kms_key_id(kms_key_id)
    if keyset is not None and keyset.backend != backend_name:
        raise UserError(f"the keyset given is for backend {keyset.backend!r}, not {backend_name!r}")
    if not 0 < chain_id < 2**63:
        raise UserError(f"chain id {chain_id} must be a positive 63-bit integer")
    existing = await queries.get_tenant(connection, name)
    if existing is not None:
        if keyset is not None and keyset.key_id != existing.key_id:
            raise UserError(
                f"tenant {name!r} exists with other keys (key id {existing.key_id.hex()[:16]}...)"
            )
        if kms_key_id is not None and existing.kms_key_id != kms_key_id:
            existing = await activate(connection, name, kms_key_id)
        return CreatedTenant(existing, created=False)
    backend = get_backend(backend_name)
    directory = key_dir(settings, name)
    if keyset is not None:
        if keyset.client_key:  # a keyset from the KMS has none: its nodes share it
            _save_locally(directory, keyset, with_server_key=False)
    else:
        keyset = _local_keyset(directory, backend_name)
    if keyset is None:
        keyset = backend.generate_keyset()
        _save_locally(directory, keyset, with_server_key=True)
    keys_location, key_parts = store_keyset(store, name, keyset)
    tenant = await queries.create_tenant(
        connection,
        name,
        chain_id,
        keyset.key_id,
        backend_name,
        keys_location=keys_location,
        public_params=keyset.public_params,
        kms_key_id=kms_key_id,
        key_parts=key_parts,
    )
    # The server key is in S3 now; the local copy was only there for restarts.
    (directory / "server_key").unlink(missing_ok=True)
    return CreatedTenant(tenant, created=True)


def store_keyset(
    store: ObjectStore, name: str, keyset: Keyset
) -> tuple[str, dict[str, dict[str, str]]]:
    """Put the server key and each stage's part of it in S3 (idempotent: same bytes, same
    keys); returns the keys' location and the parts with their digests, for the tenant
    row. Slow (a split and ~0.6 GB of uploads): async callers run it in a thread."""
    location = f"keys/{name}/{keyset.key_id.hex()}/server_key"
    store.put(location, keyset.server_key)
    key_parts = {}
    for purpose, part in get_backend(keyset.backend).key_parts(keyset.server_key).items():
        part_location = f"keys/{name}/{keyset.key_id.hex()}/{purpose}_key"
        store.put(part_location, part)
        key_parts[purpose] = {
            "object": part_location,
            "sha256": hashlib.sha256(part).hexdigest(),
        }
    return f"s3://{store.bucket}/{location}", key_parts


def parse_kms_key_id(text: str) -> int:
    """A KMS key id as people type it: decimal or 0x-hex, a uint256."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise UserError(f"KMS key id {text!r} is not a decimal or 0x-hex integer") from None
    return check_kms_key_id(value)


def check_kms_key_id(value: int) -> int:
    if not 0 <= value < 2**256:
        raise UserError(f"KMS key id {value} does not fit a uint256")
    return value


async def activate(connection: asyncpg.Connection, name: str, kms_key_id: int) -> queries.Tenant:
    """Record the KMS key id the tenant's keyset was activated under (what the gateway
    listener does on ``ActivateKey``; by hand where no KMS stand-in runs). Idempotent;
    a tenant activated under another id is refused: a keyset's id never changes."""
    check_kms_key_id(kms_key_id)
    tenant = await queries.get_tenant(connection, name)
    if tenant is None:
        raise UserError(f"tenant {name!r} does not exist; create it with `fhectl tenant create`")
    try:
        activated_now = await queries.activate_tenant(connection, name, kms_key_id)
    except asyncpg.UniqueViolationError:
        raise UserError(f"KMS key id {kms_key_id:#x} belongs to another tenant") from None
    if not activated_now:
        raise UserError(
            f"tenant {name!r} is already activated under KMS key id {tenant.kms_key_id:#x}"
        )
    activated = await queries.get_tenant(connection, name)
    assert activated is not None
    return activated


def load_client(settings: Settings, tenant: queries.Tenant) -> Client:
    path = key_dir(settings, tenant.name) / "client_key"
    if not path.exists():
        raise UserError(
            f"no client key for tenant {tenant.name!r} on this machine "
            f"(expected {path}); decrypt where the tenant was created"
        )
    return get_backend(tenant.backend).client(path.read_bytes(), tenant.key_id)


def server_key_object(tenant: queries.Tenant) -> str:
    """The S3 key (within the bucket) of the tenant's server key."""
    if not tenant.keys_location or not tenant.keys_location.startswith("s3://"):
        raise UserError(f"tenant {tenant.name!r} has no server key location")
    return tenant.keys_location.split("/", 3)[3]


def key_objects(tenant: queries.Tenant) -> list[str]:
    """Every S3 key (within the bucket) holding the tenant's server key or a part of it."""
    return [server_key_object(tenant), *(p["object"] for p in tenant.key_parts.values())]


def load_server_key(store: ObjectStore, tenant: queries.Tenant) -> bytes:
    data = store.get(server_key_object(tenant))
    if hashlib.sha256(data).digest() != tenant.key_id:
        raise UserError(
            f"server key at {tenant.keys_location} does not match tenant {tenant.name!r}'s key id"
        )
    return data


def input_handle(ciphertext: bytes, chain_id: int, fhe_type: int) -> bytes:
    """A handle for a ciphertext given directly by a person (`fhectl encrypt`): keccak of
    the bytes as the prehandle, input index 0, the tenant's chain id, type, version 0."""
    from eth_hash.auto import keccak

    from .types import FheType, make_handle

    return make_handle(keccak(b"fhectl-input" + ciphertext), 0, chain_id, FheType(fhe_type)).raw


def load_key_part(store: ObjectStore, tenant: queries.Tenant, purpose: str) -> bytes | None:
    """The stage's share of the tenant's server key, checked against the SHA-256 on the
    tenant row; None when the tenant has no such part (it has the whole key only)."""
    if purpose not in KEY_PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}; known: {KEY_PURPOSES}")
    part = tenant.key_parts.get(purpose)
    if not part:
        return None
    data = store.get(part["object"])
    if hashlib.sha256(data).hexdigest() != part["sha256"]:
        raise UserError(
            f"the {purpose} key of tenant {tenant.name!r} at {part['object']} does not match "
            "the digest on the tenant row"
        )
    return data


def devices_for(settings: Settings, tenant: queries.Tenant) -> DevicePool | None:
    """The GPUs a stage pod computes this tenant's work on, or None for the CPU.

    ``coprocessor.gpu.stage_devices`` asks CUDA (cupy's import and the driver's start:
    0.7 s of CPU in every pod), so it is asked only where the tenant's backend, as built
    here, can compute on a GPU. A CPU build on a GPU node says so once and computes on
    the CPU without the probe: on the dev stack, whose nodes advertise GPUs, that probe
    was 40% of a one-node batch's CPU (bench/orchestration.py)."""
    if settings.compute_device != "gpu":
        return None
    if not getattr(get_backend(tenant.backend), "runs_on_gpu", False):
        _warn_cpu_build(tenant.backend)
        return None
    return stage_devices(settings)


@functools.cache
def _warn_cpu_build(backend: str) -> None:
    log.warning(
        "FHE_COMPUTE_DEVICE=gpu but this build of the backend cannot compute on GPUs "
        "(make setup-gpu builds one that can): computing on CPU",
        extra={"fields": {"backend": backend}},
    )


def load_evaluator(
    store: ObjectStore,
    tenant: queries.Tenant,
    purpose: str | None = None,
    cache: KeyCache | None = None,
    devices: DevicePool | None = None,
):
    """The tenant's evaluator for one stage (``purpose``: only that share of the key is
    fetched and expanded) or, without one or where there are no parts, the whole key.
    The backend keeps an LRU, so once per process; with ``cache`` (the node-local cache
    of expanded keys, for backends that can save theirs), once per node: a hit is read
    from disk, a miss is loaded from S3 and then written to the cache.

    ``devices`` (a GPU pod's, ``coprocessor.gpu.stage_devices``), for a backend that
    computes on GPUs: the key is expanded onto them from its compressed form in S3 (the
    node cache holds CPU keys only: TFHE-rs makes a GPU key from the compressed one)."""
    backend = get_backend(tenant.backend)
    purpose = purpose if purpose and tenant.key_parts.get(purpose) else None
    if devices is not None and getattr(backend, "runs_on_gpu", False):
        return _load_from_s3(backend, store, tenant, purpose, devices)
    load_expanded = getattr(backend, "load_expanded", None)
    if cache is None or load_expanded is None:
        return _load_from_s3(backend, store, tenant, purpose)
    name = _node_cache_name(backend, tenant, purpose)
    named = backend.named_evaluators  # type: ignore[attr-defined]

    def from_node_then_s3():
        hit = cache.get(name, lambda path, digest: load_expanded(path, digest, tenant.key_id))
        if hit is not None:
            return hit
        evaluator = _load_from_s3(backend, store, tenant, purpose)
        cache.put(name, evaluator.save_expanded)
        return evaluator

    return named.get_or_load(name, from_node_then_s3)


def whole_key_is_cached(tenant: queries.Tenant, cache: KeyCache | None) -> bool:
    """Whether this node's cache holds the tenant's whole expanded key: reading it is a
    matter of seconds, where decompressing it takes ten times as long."""
    backend = get_backend(tenant.backend)
    if cache is None or getattr(backend, "load_expanded", None) is None:
        return False
    return cache.holds(_node_cache_name(backend, tenant, None))


def _node_cache_name(backend, tenant: queries.Tenant, purpose: str | None) -> str:
    """One name for a key in the node cache, for both its readers and its writers."""
    return cache_name(tenant.key_id, purpose, getattr(backend, "version", "0"))


def _load_from_s3(
    backend,
    store: ObjectStore,
    tenant: queries.Tenant,
    purpose: str | None,
    devices: DevicePool | None = None,
):
    on_gpu = {"devices": devices} if devices is not None else {}
    if purpose is not None:
        part = load_key_part(store, tenant, purpose)
        assert part is not None  # purpose is kept only where the tenant has that part
        return backend.evaluator(part, key_id=tenant.key_id, **on_gpu)
    return backend.evaluator(load_server_key(store, tenant), **on_gpu)
