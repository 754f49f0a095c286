"""The real services of the dev stack answer as their clients expect."""

import asyncio
import uuid

import asyncpg
import boto3
from web3 import Web3

from devstack.chain import DEV_CHAIN_ID


async def test_postgres_listen_notify_round_trip(database_url):
    listener = await asyncpg.connect(database_url)
    sender = await asyncpg.connect(database_url)
    received: asyncio.Queue = asyncio.Queue()
    try:
        await listener.add_listener("work_available", lambda *args: received.put_nowait(args))
        async with sender.transaction():
            await sender.execute("SELECT pg_notify('work_available', 'batch-1')")
            # Not delivered before commit.
            await asyncio.sleep(0)
            assert received.empty()
        _conn, _pid, channel, payload = await asyncio.wait_for(received.get(), timeout=10)
        assert (channel, payload) == ("work_available", "batch-1")
    finally:
        await listener.close()
        await sender.close()


def _s3(env):
    return boto3.client(
        "s3",
        endpoint_url=env["FHE_S3_ENDPOINT"],
        aws_access_key_id=env["FHE_S3_ACCESS_KEY"],
        aws_secret_access_key=env["FHE_S3_SECRET_KEY"],
        region_name="us-east-1",
    )


def test_s3_object_written_and_read_back(dev_stack):
    client = _s3(dev_stack)
    bucket = dev_stack["FHE_S3_BUCKET"]
    key = f"test/{uuid.uuid4().hex}"
    body = uuid.uuid4().bytes * 1000
    client.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        listed = client.list_objects_v2(Bucket=bucket, Prefix=key)
        assert [o["Key"] for o in listed["Contents"]] == [key]
    finally:
        client.delete_object(Bucket=bucket, Key=key)
    assert client.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 0


def test_anvil_chain_id_and_value_transfer(dev_stack):
    w3 = Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))
    assert w3.eth.chain_id == DEV_CHAIN_ID
    sender, receiver = w3.eth.accounts[0], w3.eth.accounts[1]
    before = w3.eth.get_balance(receiver)
    value = Web3.to_wei(1, "ether") + uuid.uuid4().int % 1000
    tx = w3.eth.send_transaction({"from": sender, "to": receiver, "value": value})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt["status"] == 1
    assert w3.eth.get_balance(receiver) - before == value
