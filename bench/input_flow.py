"""The gateway input flow, timed on the dev stack: key activation, then proof requests
answered.

    .venv/bin/python bench/input_flow.py [--sizes 1,4,8] [--latency-rounds 3] [--burst 8]

One coprocessor (ours, majority 1) runs its real long-running pieces - gateway
listener, verify worker, sender - on a scratch database, against our gateway contracts
freshly deployed on the stack's anvil:

* activation: the KMS stand-in publishes a full keyset (server key ~0.5 GB, public key)
  and a 2048-bit CRS over HTTP and activates them (KMSGeneration); timed from the
  activation transactions to the tenant and the pinned CRS being in place (fetch,
  digest checks, tenant creation with its key parts in S3);
* latency: for lists of N Uint64 (proven natively against that CRS, 92-byte metadata),
  one request at a time: verifyProofRequest mined -> VerifyProofResponse on the gateway,
  median of ``--latency-rounds``;
* throughput: ``--burst`` requests of 4 Uint64 sent at once; answered per second.

Writes bench/results/input_flow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
from benchlib import dev_services, write_result
from eth_account import Account
from pydantic import SecretStr
from web3 import Web3

from coprocessor.chain.contracts import funded_account
from coprocessor.db import migrate, queries
from coprocessor.fhe.engine import get_backend, input_metadata
from coprocessor.fhe.tfhe_backend import _native
from coprocessor.kms import CRS_SEPARATOR, KEY_SEPARATOR, KeyType, material_digest, object_url
from coprocessor.settings import MIGRATIONS_DIR, Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import key_objects
from devstack.gateway import deploy_gateway, host_chain
from devstack.input_path import run_input_path

CONTRACT, USER, ACL = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
CRS_BITS = 2048
KEY_ID, CRS_ID = (4 << 248) | 0xBE, (5 << 248) | 0xBE


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/kms"


def _publish(root: Path, url: str, directory: str, material_id: int, data: bytes) -> None:
    path = root / object_url(url, directory, material_id).split("/", 3)[3]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _transact(w3: Web3, function) -> dict:
    receipt = w3.eth.wait_for_transaction_receipt(function.transact({"from": w3.eth.accounts[0]}))
    if receipt["status"] != 1:
        raise SystemExit(f"{function.fn_name} reverted")
    return receipt


async def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run(env: dict[str, str], sizes: list[int], rounds: int, burst: int) -> dict:
    os.environ.update(env)  # S3 and the other services, as Settings reads them
    w3 = Web3(Web3.HTTPProvider(env["FHE_GATEWAY_RPC_URL"]))
    chain_id = w3.eth.chain_id
    tx_sender, signer = funded_account(w3, 10**19), Account.create()
    gateway = deploy_gateway(
        w3, [(tx_sender.address, signer.address, "")], [host_chain(chain_id, acl=ACL)]
    )
    backend = get_backend("tfhe-rs")
    started = time.perf_counter()
    keyset = backend.generate_keyset()
    crs = backend.generate_crs(CRS_BITS)
    print(f"keyset and CRS generated in {time.perf_counter() - started:.1f} s", flush=True)
    result: dict = {"cpus": os.cpu_count(), "server_key_bytes": len(keyset.server_key)}
    async with migrate.scratch_database(env["FHE_DATABASE_URL"], MIGRATIONS_DIR, "bench") as url:
        with tempfile.TemporaryDirectory(prefix="fhe-bench-") as scratch:
            root = Path(scratch) / "kms"
            server, storage = _serve(root)
            settings = Settings(
                database_url=url,
                cache_dir=Path(scratch) / "cache",
                crs_max_bits=CRS_BITS,
                gateway_rpc_url=env["FHE_GATEWAY_RPC_URL"],
                gateway_ws_url="off",
                gateway_poll_interval_s=0.1,
                gateway_start_block=w3.eth.block_number,
                **gateway.settings(),
                gateway_tenant_chain_id=chain_id,
                sender_private_key=SecretStr("0x" + bytes(tx_sender.key).hex()),
                signer_private_key=SecretStr("0x" + bytes(signer.key).hex()),
            )
            pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(run_input_path(settings, w3, chain_id, stop))]
            try:
                result["activation"] = await _activation(
                    w3, gateway, pool, root, storage, keyset, crs
                )
                result["latency"] = await _latency(w3, gateway, keyset, crs, sizes, rounds)
                result["throughput"] = await _throughput(w3, gateway, keyset, crs, burst)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                async with pool.acquire() as connection:
                    tenant_id = await connection.fetchval("SELECT tenant_id FROM kms_keys")
                    tenant = tenant_id and await queries.get_tenant_by_id(connection, tenant_id)
                if tenant:
                    ObjectStore(settings).delete(key_objects(tenant))
                await pool.close()
                server.shutdown()
    return result


async def _activation(w3, gateway, pool, root, storage, keyset, crs) -> dict:
    _publish(root, storage, "ServerKey", KEY_ID, keyset.server_key)
    _publish(root, storage, "PublicKey", KEY_ID, keyset.public_params)
    _publish(root, storage, "CRS", CRS_ID, crs)
    kms = gateway.kms_generation.functions
    started = time.perf_counter()
    _transact(
        w3,
        kms.activateKey(
            KEY_ID,
            [storage],
            [
                (int(KeyType.SERVER), material_digest(KEY_SEPARATOR, keyset.server_key)),
                (int(KeyType.PUBLIC), material_digest(KEY_SEPARATOR, keyset.public_params)),
            ],
        ),
    )

    async def applied(table: str) -> bool:
        async with pool.acquire() as connection:
            return bool(await connection.fetchval(f"SELECT count(*) FROM {table}"))

    await _wait(lambda: applied("kms_keys"), 600, "the key activation")
    key_s = time.perf_counter() - started
    started = time.perf_counter()
    _transact(w3, kms.activateCrs(CRS_ID, [storage], material_digest(CRS_SEPARATOR, crs)))
    await _wait(lambda: applied("kms_crs"), 120, "the CRS activation")
    crs_s = time.perf_counter() - started
    print(f"activation: keyset {key_s:.1f} s, CRS {crs_s:.2f} s", flush=True)
    return {"keyset_s": round(key_s, 2), "crs_s": round(crs_s, 2)}


def _prove(keyset, crs: bytes, chain_id: int, count: int, salt: int) -> bytes:
    values = [(5, (salt * 1000 + i).to_bytes(32, "little")) for i in range(count)]
    metadata = input_metadata(CONTRACT, USER, ACL, chain_id)
    return _native().prove_inputs(keyset.public_params, crs, metadata, values)


def _request(w3, gateway, chain_id: int, proven: bytes) -> int:
    receipt = _transact(
        w3,
        gateway.input_verification.functions.verifyProofRequest(
            chain_id, CONTRACT, USER, proven, b"\x00"
        ),
    )
    (event,) = gateway.input_verification.events.VerifyProofRequest().process_receipt(receipt)
    return int(event["args"]["zkProofId"])


async def _answered(gateway, ids: list[int], timeout: float) -> None:
    verified = gateway.input_verification.functions.isProofVerified

    async def done() -> bool:
        return all(await asyncio.to_thread(lambda: [verified(i).call() for i in ids]))

    await _wait(done, timeout, f"verdicts on {len(ids)} request(s)")


async def _latency(w3, gateway, keyset, crs, sizes: list[int], rounds: int) -> dict:
    chain_id = w3.eth.chain_id
    out: dict = {}
    for count in sizes:
        samples = []
        for round_ in range(rounds):
            proven = _prove(keyset, crs, chain_id, count, round_)
            started = time.perf_counter()
            zk_proof_id = _request(w3, gateway, chain_id, proven)
            await _answered(gateway, [zk_proof_id], 300)
            samples.append(time.perf_counter() - started)
        median = statistics.median(samples)
        out[f"{count}xUint64"] = {
            "request_to_response_s": round(median, 2),
            "list_bytes": len(proven),
        }
        print(
            f"{count} x Uint64: request -> response {median:.2f} s (median of {rounds})", flush=True
        )
    return out


async def _throughput(w3, gateway, keyset, crs, burst: int) -> dict:
    chain_id = w3.eth.chain_id
    lists = [_prove(keyset, crs, chain_id, 4, 100 + i) for i in range(burst)]
    started = time.perf_counter()
    ids = [_request(w3, gateway, chain_id, proven) for proven in lists]
    await _answered(gateway, ids, 600)
    seconds = time.perf_counter() - started
    print(f"{burst} requests of 4 x Uint64: {burst / seconds:.2f} answered/s", flush=True)
    return {
        "requests": burst,
        "seconds": round(seconds, 2),
        "answered_per_s": round(burst / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=8)
    args = parser.parse_args()
    with dev_services() as env:
        result = asyncio.run(
            run(env, [int(s) for s in args.sizes.split(",")], args.latency_rounds, args.burst)
        )
    write_result("input_flow", result)


if __name__ == "__main__":
    main()
