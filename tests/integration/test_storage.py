"""coprocessor.storage against the real S3 server (MinIO)."""

import uuid

import pytest

from coprocessor import outputs
from coprocessor.errors import ServiceUnavailable
from coprocessor.fhe.engine import SquashedFormat
from coprocessor.settings import Settings
from coprocessor.storage import ForeignObject, ObjectStore


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


def test_a_published_object_is_written_once_and_never_overwritten(dev_stack):
    """Content-addressed: the key is the object's keccak256. A re-run finds it; bytes
    that are not what the name says (someone else's upload) are refused, never replaced."""
    settings = Settings()
    store = ObjectStore(settings, bucket=settings.s3_bucket_ct128)
    data = uuid.uuid4().bytes * 50
    key = outputs.object_key(data)
    metadata = outputs.ct128_metadata(SquashedFormat.COMPRESSED_ON_CPU)
    assert store.put_content_addressed(key, data, metadata) is True
    assert store.put_content_addressed(key, data, metadata) is False
    assert store.metadata(key)["ct-format"] == "compressed_on_cpu"
    assert store.get(key) == data

    squatted = outputs.object_key(b"the real object")
    store.put(squatted, b"something else")  # bytes that do not hash to the name
    with pytest.raises(ForeignObject, match="holds other bytes"):
        store.put_content_addressed(squatted, b"the real object")
    assert store.get(squatted) == b"something else"  # left as it was
    store.delete([key, squatted])


def test_ct_format_names_are_zamas():
    assert outputs.ct_format_name(SquashedFormat.UNCOMPRESSED_ON_CPU) == "uncompressed_on_cpu"
    assert outputs.ct_format_name(SquashedFormat.COMPRESSED_ON_GPU) == "compressed_on_gpu"
    with pytest.raises(ValueError, match="no Ct-Format"):
        outputs.ct_format_name(SquashedFormat.UNKNOWN)
