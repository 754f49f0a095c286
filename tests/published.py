"""Reading back what the SNS stage published, the way a KMS does: by the digests on the
``ciphertext_digest`` row (the same the gateway holds), from the two buckets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coprocessor import outputs
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore


def buckets(settings: Settings) -> tuple[ObjectStore, ObjectStore]:
    return (
        ObjectStore(settings, bucket=settings.s3_bucket_ct64),
        ObjectStore(settings, bucket=settings.s3_bucket_ct128),
    )


def published_objects(settings: Settings, row: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(ct64, ct128) objects of a digest row, each checked against its name."""
    found = []
    for store, column in zip(buckets(settings), ("ciphertext", "ciphertext128"), strict=True):
        digest = bytes(row[column])
        data = store.get(digest.hex())
        assert outputs.digest(data) == digest, f"{store.bucket}/{digest.hex()} is not its digest"
        found.append(data)
    return found[0], found[1]
