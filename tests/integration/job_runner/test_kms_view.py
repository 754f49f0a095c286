"""What a KMS sees of our outputs, end to end on anvil, MinIO and PostgreSQL.

The KMS's MPC cannot run here, so ``KmsStandIn`` plays its part with the tenant's client
key (a test double, named as such). Everything it reads comes from where the real KMS
reads it, through Zama's ABIs: the gateway's MultichainACL says whether a handle may be
decrypted (and by whom), CiphertextCommits gives the key id and the ct128 digest the
coprocessors agreed on, GatewayConfig gives each agreeing coprocessor's bucket URL, and
the object is fetched by its digest and checked before anything is decrypted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from web3 import Web3

from coprocessor import outputs
from coprocessor.chain.contracts import funded_account
from coprocessor.db import acl, queries
from coprocessor.db.acl import AclCall
from coprocessor.fhe.engine import Client
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.types import FheType, Op
from devstack.gateway import bucket_url, deploy_gateway, host_chain
from job_runner.compute import run_compute
from job_runner.send import run_send
from job_runner.sns import run_sns

from .builder import CHAIN_ID

U8 = FheType.Uint8


class NotAllowed(Exception):
    """The gateway's check a KMS makes before decrypting refused the request."""


class KmsStandIn:
    """A test double of the KMS: gateway reads and S3 fetches as the KMS makes them; the
    threshold decryption replaced by the tenant's client key."""

    def __init__(self, w3: Web3, contracts, settings: Settings, client: Client, key_id: int):
        self.config, self.commits, self.acl = contracts.config, contracts.commits, contracts.acl
        self.settings = settings
        self.client = client
        self.key_id = key_id

    def user_decrypt(self, handle: bytes, user: str) -> int:
        if not self.acl.functions.isAccountAllowed(handle, user).call():
            raise NotAllowed(f"{user} may not decrypt 0x{handle.hex()}")
        return self._decrypt(handle)

    def public_decrypt(self, handle: bytes) -> int:
        if not self.acl.functions.isPublicDecryptAllowed(handle).call():
            raise NotAllowed(f"0x{handle.hex()} is not publicly decryptable")
        return self._decrypt(handle)

    def _decrypt(self, handle: bytes) -> int:
        ((_, key_id, digest, tx_senders),) = self.commits.functions.getSnsCiphertextMaterials(
            [handle]
        ).call()
        assert key_id == self.key_id  # the keyset the KMS holds shares for
        for tx_sender in tx_senders:  # any agreeing coprocessor's copy will do
            _, _, url = self.config.functions.getCoprocessor(tx_sender).call()
            parts = urlsplit(url)
            store = ObjectStore(
                self.settings.model_copy(
                    update={"s3_endpoint": f"{parts.scheme}://{parts.netloc}"}
                ),
                bucket=parts.path.strip("/"),
            )
            data = store.get(digest.hex())
            if outputs.digest(data) != digest:
                continue  # a tampered copy: try the next coprocessor's
            return self.client.decrypt_published(data, FheType(handle[30]), squashed=True)
        raise AssertionError(f"no copy of 0x{handle.hex()} matches its committed digest")


async def test_a_kms_decrypts_exactly_what_the_gateway_allows(
    graph, conn, compute_settings, tenant, dev_stack
):
    record, client = tenant
    w3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    tx_sender = funded_account(w3, 10**19)
    alice, mallory = w3.eth.accounts[5], w3.eth.accounts[6]
    contracts = deploy_gateway(
        w3,
        [(tx_sender.address, tx_sender.address, bucket_url(compute_settings))],
        [host_chain(CHAIN_ID)],
    )
    config, commits, gateway_acl = contracts.config, contracts.commits, contracts.acl
    settings = compute_settings.model_copy(
        update={
            "gateway_rpc_url": dev_stack["FHE_GATEWAY_RPC_URL"],
            "gateway_config_address": config.address,
            "gateway_commits_address": commits.address,
            "gateway_acl_address": gateway_acl.address,
            "sender_private_key": SecretStr("0x" + bytes(tx_sender.key).hex()),
        }
    )
    x, y = graph.input(200, U8), graph.input(77, U8)
    mine = graph.node(Op.Add, x, y)  # allowed to alice
    public = graph.node(Op.Mul, x, 2)  # publicly decryptable
    secret = graph.node(Op.Sub, x, y)  # published, allowed to nobody
    batch = await graph.admit(conn, outputs=[mine, public, secret])
    assert (await run_compute(settings, batch)).failed == 0
    assert (await run_sns(settings, batch)).completed == 3
    # The host ACL's events, as the host listener stores them.
    await acl.record_calls(
        conn,
        [
            AclCall(
                record.tenant_id,
                "allow_account",
                bytes(32),
                handle=mine,
                account_address=bytes.fromhex(alice[2:]),
            ),
            AclCall(record.tenant_id, "allow_public_decrypt", bytes(32), handle=public),
        ],
    )
    sent = await run_send(settings, batch)
    assert (sent.failed, sent.exit_code, sent.accepted, sent.acl_calls) == (0, 0, 3, 2), sent

    tenant_row = await queries.get_tenant(conn, record.name)
    assert tenant_row is not None and tenant_row.kms_key_id is not None
    kms = KmsStandIn(w3, contracts, settings, client, tenant_row.kms_key_id)
    assert kms.user_decrypt(mine, alice) == graph.expected[mine]
    assert kms.public_decrypt(public) == graph.expected[public]
    with pytest.raises(NotAllowed):
        kms.user_decrypt(mine, mallory)  # allowed to alice, not to anyone
    with pytest.raises(NotAllowed):
        kms.user_decrypt(secret, alice)  # committed, yet nobody was allowed
    with pytest.raises(NotAllowed):
        kms.public_decrypt(mine)
