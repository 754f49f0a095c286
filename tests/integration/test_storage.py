"""coprocessor.storage against the real S3 server (MinIO)."""

import uuid

import pytest

from coprocessor.errors import ServiceUnavailable
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore


@pytest.fixture
def store(dev_stack):
    return ObjectStore(Settings())


def test_put_is_idempotent_and_get_returns_the_bytes(store):
    key = f"test/{uuid.uuid4().hex}"
    data = uuid.uuid4().bytes * 100
    assert store.put(key, data) is True
    assert store.put(key, data) is False  # same digest: not uploaded again
    assert store.get(key) == data
    assert store.put(key, data + b"!") is True  # changed bytes are uploaded
    assert store.get(key) == data + b"!"


def test_missing_object_is_a_key_error(store):
    with pytest.raises(KeyError):
        store.get(f"test/{uuid.uuid4().hex}")
    assert store.digest_of(f"test/{uuid.uuid4().hex}") is None


def test_unreachable_server_is_recoverable_and_names_it(dev_stack, monkeypatch):
    monkeypatch.setenv("FHE_S3_ENDPOINT", "http://127.0.0.1:9")
    store = ObjectStore(Settings(), connect_timeout=0.5, attempts=1)
    with pytest.raises(ServiceUnavailable, match=r"s3 is unavailable: http://127\.0\.0\.1:9"):
        store.check()
    with pytest.raises(ServiceUnavailable):
        store.put("x", b"y")


def test_missing_bucket_fails_the_health_check(dev_stack, monkeypatch):
    monkeypatch.setenv("FHE_S3_BUCKET", f"nope-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ServiceUnavailable, match="bucket nope-"):
        ObjectStore(Settings()).check()
