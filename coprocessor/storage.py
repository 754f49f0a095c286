"""S3 object storage (boto3): tenant keys and the SNS stage's ciphertexts.

Every failure to reach the server is a ``ServiceUnavailable`` (recoverable); a missing
object is ``KeyError``. Writes are idempotent: an object already stored with the same
SHA-256 is not uploaded again. Published ciphertexts are *content-addressed* (the key is
the hex keccak256 of the bytes, as the protocol lays them out): they are written only
where nothing is, never overwritten.
"""

from __future__ import annotations

import hashlib

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from .errors import Irrecoverable, ServiceUnavailable
from .settings import Settings

DIGEST_METADATA = "sha256"
_MISSING = ("404", "NoSuchKey", "NotFound")


class ForeignObject(Irrecoverable):
    """A content-addressed key holds other bytes than its name says (never overwritten)."""


class ObjectStore:
    def __init__(
        self,
        settings: Settings,
        *,
        bucket: str | None = None,
        connect_timeout: float | None = None,
        attempts: int = 3,
    ) -> None:
        self.bucket = bucket or settings.s3_bucket
        self.endpoint = settings.s3_endpoint
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(
                connect_timeout=connect_timeout or settings.s3_connect_timeout_s,
                read_timeout=settings.s3_read_timeout_s,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )

    def _unavailable(self, error: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("s3", f"{self.endpoint} bucket {self.bucket}: {error}")

    def check(self) -> None:
        """The bucket exists and answers (used at start-up)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None

    def _head(self, key: str) -> dict | None:
        """The object's HEAD response; None when there is no object at ``key``."""
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING:
                return None
            raise self._unavailable(error) from None
        except (BotoCoreError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None

    def digest_of(self, key: str) -> str | None:
        head = self._head(key)
        return None if head is None else head.get("Metadata", {}).get(DIGEST_METADATA)

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> bool:
        """Store ``data`` at ``key`` unless an identical object is there; True if uploaded."""
        digest = hashlib.sha256(data).hexdigest()
        if self.digest_of(key) == digest:
            return False
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                Metadata={**(metadata or {}), DIGEST_METADATA: digest},
            )
        except (BotoCoreError, ClientError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
        return True

    def put_content_addressed(
        self, key: str, data: bytes, metadata: dict[str, str] | None = None
    ) -> bool:
        """Store a published object whose name is its digest; True if uploaded now.

        Already there with the same bytes (compared by content, not by metadata anyone
        can set): nothing to do (a re-run, another batch). There with other bytes:
        ForeignObject - someone wrote under a digest that is not theirs, and what may
        already be committed under that name is never overwritten."""
        for _ in range(2):
            if self.exists(key):
                if self.get(key) == data:
                    return False
                raise ForeignObject(
                    f"s3://{self.bucket}/{key} holds other bytes than the object named by "
                    "that digest; it is left as it is"
                )
            if self.put_if_absent(key, data, metadata):
                return True
            # Another writer created it between the two calls: look again.
        raise ForeignObject(f"s3://{self.bucket}/{key} keeps changing; it is left as it is")

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def metadata(self, key: str) -> dict[str, str]:
        """The object's user metadata (``Ct-Format`` of a ct128, our sha256); KeyError
        when absent."""
        head = self._head(key)
        if head is None:
            raise KeyError(key)
        return dict(head.get("Metadata", {}))

    def put_if_absent(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> bool:
        """Store ``data`` only if nothing is at ``key`` (S3 conditional write), so two
        writers racing to create one shared object agree on one; True if this call won."""
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                Metadata={**(metadata or {}), DIGEST_METADATA: hashlib.sha256(data).hexdigest()},
            )
        except ClientError as error:
            # 412: something is there; 409: a concurrent conditional write is in flight.
            if error.response["Error"]["Code"] in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "409",
            ):
                return False
            raise self._unavailable(error) from None
        except (BotoCoreError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
        return True

    def get(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING:
                raise KeyError(key) from None
            raise self._unavailable(error) from None
        except (BotoCoreError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted (for checks and tools, not hot paths)."""
        found: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found += [item["Key"] for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
        return sorted(found)

    def delete(self, keys: list[str]) -> None:
        """Remove objects (benchmarks clean up after themselves); missing keys are fine."""
        try:
            for start in range(0, len(keys), 1000):  # the API's limit per request
                self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]},
                )
        except (BotoCoreError, ClientError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
