"""The dev stack's KMS stand-in: publish a tenant's keyset and the deployment's CRS in the
KMS storage layout and activate them on the gateway's KMSGeneration.

A real KMS (an MPC network, which cannot run here) generates the keys, stores them in its
nodes' public buckets and announces them with ``ActivateKey`` / ``ActivateCrs``. Here a
keyset this deployment already has plays that part: ``fhectl dev kms activate --tenant
NAME`` writes its server and public keys and the CRS to the S3 bucket ``fhe-kms``
(anonymous read, as KMS nodes serve them) under ``ServerKey|PublicKey|CRS/<id as 64
hex>``, then activates them with their digests as the GatewayConfig owner. The gateway
listener then fetches them over HTTP, checks the digests, and activates the tenant.
Idempotent: the same bytes under the same ids, and an activation already on chain with
the same digests is not sent again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import boto3
from botocore.exceptions import ClientError
from web3 import Web3

from coprocessor.chain.contracts import bound
from coprocessor.errors import ConfigError, ServiceUnavailable
from coprocessor.kms import (
    CRS_DIR,
    CRS_SEPARATOR,
    KEY_SEPARATOR,
    OBJECT_DIRS,
    KeyType,
    material_digest,
    object_url,
)
from coprocessor.settings import Settings

KMS_BUCKET = "fhe-kms"
DEV_CRS_ID = (5 << 248) | 1  # Zama numbers CRSs (5 << 248) + n


@dataclass(frozen=True)
class Published:
    key_id: int
    crs_id: int
    storage_url: str
    key_digests: dict[str, str]
    crs_digest: str
    transactions: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "key_id": hex(self.key_id),
            "crs_id": hex(self.crs_id),
            "storage_url": self.storage_url,
            "key_digests": self.key_digests,
            "crs_digest": self.crs_digest,
            "transactions": list(self.transactions),
        }


def _public_bucket(settings: Settings) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )
    try:
        client.create_bucket(Bucket=KMS_BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise ServiceUnavailable("s3", f"bucket {KMS_BUCKET}: {error}") from None
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{KMS_BUCKET}/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=KMS_BUCKET, Policy=json.dumps(policy))


def _announced(read) -> list[tuple[int, bytes]]:
    """(key type, digest) pairs KMSGeneration holds for an id; none when never activated
    (its views revert KeyNotGenerated / CrsNotGenerated)."""
    from web3.exceptions import ContractLogicError

    try:
        return [(int(t), bytes(d)) for t, d in read()]
    except ContractLogicError:
        return []


def publish_and_activate(
    settings: Settings,
    w3: Web3,
    key_id: int,
    server_key: bytes,
    public_key: bytes,
    crs: bytes,
    crs_id: int = DEV_CRS_ID,
) -> Published:
    """Write the material in the KMS layout and activate it (idempotent)."""
    from coprocessor.storage import ObjectStore

    if settings.gateway_kms_generation_address is None:
        raise ConfigError(
            "setting FHE_GATEWAY_KMS_GENERATION_ADDRESS is not set "
            '(`eval "$(fhectl dev gateway --env)"`)'
        )
    _public_bucket(settings)
    store = ObjectStore(settings, bucket=KMS_BUCKET)
    storage_url = f"{settings.s3_endpoint.rstrip('/')}/{KMS_BUCKET}"
    material = {KeyType.SERVER: server_key, KeyType.PUBLIC: public_key}
    for key_type, data in material.items():
        store.put(object_url("", OBJECT_DIRS[key_type], key_id).lstrip("/"), data)
    store.put(object_url("", CRS_DIR, crs_id).lstrip("/"), crs)
    digests = {t: material_digest(KEY_SEPARATOR, d) for t, d in material.items()}
    crs_digest = material_digest(CRS_SEPARATOR, crs)

    kms = bound(w3, "KMSGeneration", settings.gateway_kms_generation_address)
    owner = w3.eth.accounts[0]  # the dev gateway's owner
    sent = []
    if _announced(lambda: kms.functions.getKeyMaterials(key_id).call()[1]) != [
        (int(t), d) for t, d in digests.items()
    ]:
        sent.append(
            kms.functions.activateKey(
                key_id, [storage_url], [(int(t), d) for t, d in digests.items()]
            ).transact({"from": owner})
        )
    if _announced(lambda: [(0, kms.functions.getCrsMaterials(crs_id).call()[1])]) != [
        (0, crs_digest)
    ]:
        sent.append(
            kms.functions.activateCrs(crs_id, [storage_url], crs_digest).transact({"from": owner})
        )
    for tx_hash in sent:
        if w3.eth.wait_for_transaction_receipt(tx_hash)["status"] != 1:
            raise ServiceUnavailable(
                "chain", f"KMSGeneration activation reverted ({tx_hash.hex()})"
            )
    return Published(
        key_id,
        crs_id,
        storage_url,
        {OBJECT_DIRS[t]: d.hex() for t, d in digests.items()},
        crs_digest.hex(),
        tuple("0x" + bytes(t).hex() for t in sent),
    )
