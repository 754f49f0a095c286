"""The node-local key cache on a real directory: hits, misses, refused files, atomic
writes, eviction and a cache that cannot be written.

The files here are small stand-ins whose digest is their SHA-256 (the product's are
expanded TFHE-rs keys hashed with BLAKE3 by the extension; tests/engine/test_key_cache.py
runs those): the cache's own rules do not depend on what the bytes are.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from coprocessor.keycache import STALE_TEMPORARY_S, KeyCache, cache_name
from coprocessor.settings import Settings


def saver(data: bytes):
    def save(path: Path) -> str:
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    return save


def load(path: Path, digest: str) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{path.name} does not hash to its digest")
    return data


def test_a_written_key_is_read_back_and_a_missing_one_is_a_miss(tmp_path):
    cache = KeyCache(tmp_path / "keys", 10**6, b"secret")
    assert cache.get("k", load) is None
    written = cache.put("k", saver(b"expanded"))
    digest = hashlib.sha256(b"expanded").hexdigest()
    assert written is not None and written.name.startswith(f"k.{digest}.")
    assert cache.get("k", load) == b"expanded"
    assert cache.get("other", load) is None
    assert not list((tmp_path / "keys").glob("*.tmp"))  # renamed into place


def test_a_file_that_does_not_hash_to_its_name_is_deleted_and_missed(tmp_path):
    cache = KeyCache(tmp_path, 10**6)
    written = cache.put("k", saver(b"expanded key"))
    assert written is not None
    written.write_bytes(b"expanded kez")  # a torn write, a bad disk, a meddler
    assert cache.get("k", load) is None
    assert not written.exists()
    assert cache.put("k", saver(b"expanded key")) is not None  # the next pod rewrites it
    assert cache.get("k", load) == b"expanded key"


def test_a_new_write_replaces_the_older_files_of_its_name(tmp_path):
    cache = KeyCache(tmp_path, 10**6)
    cache.put("k", saver(b"first"))
    cache.put("k", saver(b"second"))
    assert len(list(tmp_path.glob("k.*.key"))) == 1
    assert cache.get("k", load) == b"second"


def test_the_least_recently_used_files_go_first_and_the_new_one_stays(tmp_path):
    cache = KeyCache(tmp_path, 250)
    for name in ("a", "b", "c"):
        cache.put(name, saver(name.encode() * 100))
        time.sleep(0.01)  # distinct mtimes: the order the files were used in
    # 300 bytes over a 250-byte bound: the oldest, a, went when c arrived.
    assert cache.get("a", lambda p, d: p.read_bytes()) is None
    assert cache.get("b", load) == b"b" * 100  # b is now the most recently used
    time.sleep(0.01)
    cache.put("d", saver(b"d" * 100))
    names = sorted(p.name[0] for p in tmp_path.glob("*.key"))
    assert names == ["b", "d"]  # c, the least recently used, went; d, just written, stayed
    huge = KeyCache(tmp_path, 10)  # a bound below one key still keeps the key just written
    assert huge.put("e", saver(b"e" * 100)) is not None
    assert [p.name[0] for p in tmp_path.glob("*.key")] == ["e"]


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    cache = KeyCache(tmp_path, 10**6)
    stale, fresh = tmp_path / ".k.1.deadbeef.tmp", tmp_path / ".k.2.0badcafe.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - STALE_TEMPORARY_S - 10
    os.utime(stale, (old, old))
    cache.evict()
    assert not stale.exists() and fresh.exists()  # a live writer's file is left alone


def test_a_file_planted_without_the_secret_is_deleted_never_loaded(tmp_path):
    """The digest in a name proves nothing about who wrote the file; the HMAC does."""
    ours = KeyCache(tmp_path, 10**6, b"our secret")
    theirs = KeyCache(tmp_path, 10**6, b"another namespace's secret")
    planted = theirs.put("k", saver(b"a key of theirs"))
    assert planted is not None
    loaded = []
    assert ours.get("k", lambda p, d: loaded.append(p) or load(p, d)) is None
    assert loaded == [] and not planted.exists()  # never handed to the loader
    forged = tmp_path / f"k.{hashlib.sha256(b'x').hexdigest()}.{'0' * 32}.key"
    forged.write_bytes(b"x")
    assert ours.get("k", load) is None and not forged.exists()


def test_only_the_caches_own_files_are_ever_deleted(tmp_path):
    """A directory that also holds other files (a wrong hostPath, a TLS key) keeps them,
    however old and however far over the bound."""
    others = [tmp_path / "server.key", tmp_path / "notes.tmp", tmp_path / ".x.tmp"]
    old = time.time() - STALE_TEMPORARY_S - 10
    for other in others:
        other.write_bytes(b"not ours" * 100)
        os.utime(other, (old, old))
    cache = KeyCache(tmp_path, 1, b"s")
    assert cache.put("k", saver(b"ours")) is not None
    cache.evict()
    assert all(other.exists() for other in others)


def test_a_load_that_cannot_read_is_a_miss_and_keeps_the_file(tmp_path):
    """An I/O error (EIO, EACCES, a file replaced meanwhile) is not bad bytes: the file
    may be a fresh one another pod just renamed into place."""
    cache = KeyCache(tmp_path, 10**6, b"s")
    written = cache.put("k", saver(b"ours"))

    def unreadable(path: Path, digest: str) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    assert cache.get("k", unreadable) is None
    assert written is not None and written.exists()


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_caller(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    cache = KeyCache(blocker / "keys", 10**6)
    assert cache.put("k", saver(b"x")) is None
    assert cache.get("k", load) is None

    def failing(path: Path) -> str:
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    ok = KeyCache(tmp_path / "keys", 10**6)
    assert ok.put("k", failing) is None
    assert not list((tmp_path / "keys").iterdir())  # no partial file left


def test_a_saver_that_returns_no_digest_is_refused(tmp_path):
    cache = KeyCache(tmp_path, 10**6)
    assert cache.put("k", lambda path: path.write_bytes(b"x") and "not-hex") is None
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("purpose", ["compute", None])
def test_names_carry_the_key_id_the_purpose_and_the_tfhe_version(purpose):
    name = cache_name(b"\x01" * 32, purpose, "1.7.0")
    assert name == f"{'01' * 32}-{purpose or 'whole'}-1.7.0"


def test_the_cache_is_off_unless_configured(tmp_path):
    assert KeyCache.of(Settings()) is None
    cache = KeyCache.of(Settings(key_cache_dir=tmp_path, key_cache_max_bytes=5))
    assert cache is not None and (cache.directory, cache.max_bytes) == (tmp_path, 5)
    assert cache.secret  # derived from the S3 secret when FHE_KEY_CACHE_SECRET is unset
    other = KeyCache.of(Settings(key_cache_dir=tmp_path, s3_secret_key="another"))
    assert other is not None and other.secret != cache.secret
    chosen = KeyCache.of(Settings(key_cache_dir=tmp_path, key_cache_secret="chosen"))
    assert chosen is not None and chosen.secret == b"chosen"
