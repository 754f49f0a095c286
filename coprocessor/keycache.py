"""A node-local cache of expanded server keys, shared by the stage pods of one node.

Every stage pod starts fresh, and TFHE-rs keeps keys compressed at rest: loading a
tenant's key means downloading it and decompressing it (seeded masks regenerated, the
bootstrapping keys moved to the Fourier domain), about a second for the compute share
and over ten seconds for the whole key SNS needs. The expanded form is larger but
loads at the speed of the disk. So the first pod on a node that expands a key writes
the expanded form here, and later pods on that node read it instead.

* **Keyed by what it is**: ``<key id>-<purpose>-<TFHE-rs version>``; a new keyset has
  a new key id, so nothing is ever invalidated in place.
* **Verified**: the file's BLAKE3 digest is in its name and the whole file is hashed
  when it is read: a torn, truncated or altered file is refused, deleted, and the key
  is loaded from S3 as if there were no cache.
* **Authenticated**: the name also carries an HMAC of (name, digest) under a secret the
  stage pods hold (``FHE_KEY_CACHE_SECRET``, else one derived from the S3 secret key),
  so a file planted by a pod without that secret (another namespace's pod with a
  hostPath on the same node) is refused and deleted, never loaded.
* **Written atomically**: into a temporary name in the same directory, synced, then
  renamed; a reader never sees a partial file, and two pods writing the same key at
  once both end with a complete file.
* **Bounded**: after each write, the least recently used files go until the directory
  holds at most ``max_bytes`` (the one just written stays). Only files named as the
  cache names them are ever deleted, whatever else the directory holds.
* **Best effort**: a full disk or an unwritable directory costs the cache, never the
  stage: the key in memory is used either way.

In a cluster the directory is a hostPath volume the stage Jobs mount
(``FHE_JOB_KEY_CACHE_HOST_PATH``): make it writable by the stage pods' user only. Anyone
who may create pods in a batch namespace can read that namespace's Secrets, so the
HMAC keeps out other namespaces, not those.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
_SUFFIX = ".key"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# What the cache writes, and so all it ever deletes: <name>.<digest>.<mac>.key, and
# .<name>.<pid>.<random>.tmp while it writes.
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.[0-9a-f]{64}\.[0-9a-f]{32}\.key$")
_TEMPORARY = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]*\.[0-9]+\.[0-9a-f]{8}\.tmp$")
STALE_TEMPORARY_S = 3600.0  # a writer that died mid-write left this behind


def cache_secret(settings: Settings) -> bytes:
    """The HMAC key of the cache's names: FHE_KEY_CACHE_SECRET, else derived from the S3
    secret key every stage pod already holds."""
    if settings.key_cache_secret is not None:
        return settings.key_cache_secret.get_secret_value().encode()
    return hashlib.sha256(b"fhe-key-cache\0" + settings.s3_secret_key.encode()).digest()


@dataclass(frozen=True)
class KeyCache:
    directory: Path
    max_bytes: int
    secret: bytes = b""

    @classmethod
    def of(cls, settings: Settings) -> KeyCache | None:
        """The configured cache, or None when FHE_KEY_CACHE_DIR is unset."""
        if settings.key_cache_dir is None:
            return None
        return cls(settings.key_cache_dir, settings.key_cache_max_bytes, cache_secret(settings))

    def _mac(self, name: str, digest: str) -> str:
        return hmac.new(self.secret, f"{name}.{digest}".encode(), hashlib.sha256).hexdigest()[:32]

    # --- reading ---------------------------------------------------------------------
    def _entries(self, name: str) -> list[tuple[Path, str]]:
        """(file, digest) of the complete files of ``name``, newest first. A file whose
        HMAC is wrong was not written by a holder of the secret: it is deleted."""
        found = []
        try:
            candidates = list(self.directory.glob(f"{name}.*{_SUFFIX}"))
        except OSError:
            return []
        for path in candidates:
            if not _FILE.match(path.name):
                continue
            digest, mac = path.name[len(name) + 1 : -len(_SUFFIX)].split(".")
            if not hmac.compare_digest(mac, self._mac(name, digest)):
                log.warning(
                    "a cached key not written by this deployment; deleting it",
                    extra={"fields": {"file": str(path)}},
                )
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            try:
                found.append((path.stat().st_mtime, path, digest))
            except OSError:
                continue  # evicted meanwhile
        return [(path, digest) for _, path, digest in sorted(found, reverse=True)]

    def holds(self, name: str) -> bool:
        """Whether a complete file of ``name`` is here (it may still be refused when
        read: ``get`` checks its digest)."""
        return bool(self._entries(name))

    def get(self, name: str, load: Callable[[Path, str], T]) -> T | None:
        """``load(path, digest)`` of the newest intact file of ``name``; None on a miss.
        ``load`` raises on a file that does not hash to its digest: that file is
        deleted and the next one, if any, is tried."""
        for path, digest in self._entries(name):
            started = time.monotonic()
            try:
                value = load(path, digest)
            except OSError as error:  # gone meanwhile, or the disk: a miss, the file stays
                log.info(
                    "cached key not readable",
                    extra={"fields": {"file": str(path), "error": str(error)[:300]}},
                )
                continue
            except Exception as error:  # bad bytes: a miss, never a stage failure
                log.warning(
                    "cached key refused; deleting it",
                    extra={"fields": {"file": str(path), "error": str(error)[:300]}},
                )
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used
            log.info(
                "key loaded from the node cache",
                extra={"fields": {"key": name, "seconds": round(time.monotonic() - started, 3)}},
            )
            return value
        return None

    # --- writing ---------------------------------------------------------------------
    def put(self, name: str, save: Callable[[Path], str]) -> Path | None:
        """Store what ``save(path) -> digest`` writes under ``name``; the file, or None
        when the cache could not take it (logged)."""
        temporary = self.directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = save(temporary)
            if not _DIGEST.match(digest):
                raise ValueError(f"not a BLAKE3 hex digest: {digest!r}")
            final = self.directory / f"{name}.{digest}.{self._mac(name, digest)}{_SUFFIX}"
            os.replace(temporary, final)
        except Exception as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            log.warning(
                "key not cached", extra={"fields": {"key": name, "error": str(error)[:300]}}
            )
            return None
        for older, _ in self._entries(name):
            if older != final:
                older.unlink(missing_ok=True)
        self.evict(keep=final)
        return final

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used files until at most ``max_bytes`` remain, and
        temporaries older than an hour; returns what was deleted."""
        deleted: list[Path] = []
        files = []
        try:
            listing = list(self.directory.iterdir())
        except OSError:
            return deleted
        now = time.time()
        for path in listing:
            try:
                stat = path.stat()
            except OSError:
                continue
            if _TEMPORARY.match(path.name):
                if now - stat.st_mtime > STALE_TEMPORARY_S:
                    path.unlink(missing_ok=True)
                    deleted.append(path)
            elif _FILE.match(path.name):
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            deleted.append(path)
            total -= size
        if deleted:
            log.info(
                "node key cache evicted",
                extra={"fields": {"files": [p.name for p in deleted], "bytes_left": total}},
            )
        return deleted


def cache_name(key_id: bytes, purpose: str | None, version: str) -> str:
    """The cache name of one keyset's key for one stage (None: the whole key)."""
    return f"{key_id.hex()}-{purpose or 'whole'}-{version}"
