"""S3 object storage (boto3): tenant keys and the SNS stage's ciphertexts.

Every failure to reach the server is a ``ServiceUnavailable`` (recoverable); a missing
object is ``KeyError``. Writes are idempotent: an object already stored with the same
SHA-256 is not uploaded again.
"""

from __future__ import annotations

import hashlib

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from .errors import ServiceUnavailable
from .settings import Settings

DIGEST_METADATA = "sha256"
_MISSING = ("404", "NoSuchKey", "NotFound")


class ObjectStore:
    def __init__(
        self, settings: Settings, *, connect_timeout: float = 5.0, attempts: int = 3
    ) -> None:
        self.bucket = settings.s3_bucket
        self.endpoint = settings.s3_endpoint
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=60,
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

    def digest_of(self, key: str) -> str | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING:
                return None
            raise self._unavailable(error) from None
        except (BotoCoreError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
        return head.get("Metadata", {}).get(DIGEST_METADATA)

    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` unless an identical object is there; True if uploaded."""
        digest = hashlib.sha256(data).hexdigest()
        if self.digest_of(key) == digest:
            return False
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, Metadata={DIGEST_METADATA: digest}
            )
        except (BotoCoreError, ClientError, EndpointConnectionError) as error:
            raise self._unavailable(error) from None
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if nothing is at ``key`` (S3 conditional write), so two
        writers racing to create one shared object agree on one; True if this call won."""
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                Metadata={DIGEST_METADATA: hashlib.sha256(data).hexdigest()},
            )
        except ClientError as error:
            if error.response["Error"]["Code"] in ("PreconditionFailed", "412"):
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
