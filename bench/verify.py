"""Input-proof verification benchmark: what one proven list costs, and the verify
stage's throughput on the dev stack.

    .venv/bin/python bench/verify.py [--sizes 1,4,8,32] [--repeat 3] [--requests 16]

* crs: generating the deployment's CRS (2048 bits), natively;
* lists of N Uint64 values (64 N bits, 32 values = the 2048-bit limit), proven natively
  (the client's side; node-tfhe's WASM is slower), then ``Evaluator.verify_inputs``
  timed (median): verify + expand, and per input;
* stage: ``--requests`` queued lists of 4 Uint64 answered by ``run_verify`` on a scratch
  database, requests/s, every row checked verified.

Writes bench/results/verify.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
from benchlib import dev_services, write_result

from coprocessor.crs import ensure_crs
from coprocessor.db import migrate, proofs
from coprocessor.fhe.engine import get_backend, input_metadata
from coprocessor.fhe.tfhe_backend import _native
from coprocessor.settings import MIGRATIONS_DIR, Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import create_tenant, key_objects
from job_runner.verify import run_verify

CONTRACT, USER, CHAIN_ID = "0x" + "11" * 20, "0x" + "22" * 20, 31337
ACL = "0x" + "33" * 20  # the host chain's ACL: the proof and the handles are bound to it
CRS_BITS = 2048


def prove(keyset, crs: bytes, count: int) -> bytes:
    values = [(5, (1000 + i).to_bytes(32, "little")) for i in range(count)]
    return _native().prove_inputs(
        keyset.public_params, crs, input_metadata(CONTRACT, USER, ACL, CHAIN_ID), values
    )


def list_costs(keyset, crs: bytes, sizes: list[int], repeat: int) -> dict:
    evaluator = get_backend("tfhe-rs").evaluator(keyset.server_key)
    metadata = input_metadata(CONTRACT, USER, ACL, CHAIN_ID)
    result: dict = {}
    for count in sizes:
        started = time.perf_counter()
        proven = prove(keyset, crs, count)
        prove_s = time.perf_counter() - started
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            inputs = evaluator.verify_inputs(crs, keyset.public_params, proven, metadata)
            samples.append((time.perf_counter() - started) * 1000)
            if len(inputs) != count:
                raise SystemExit(f"{count} values proven, {len(inputs)} expanded")
        median = statistics.median(samples)
        result[f"{count}xUint64"] = {
            "bits": 64 * count,
            "list_bytes": len(proven),
            "prove_s": round(prove_s, 2),
            "verify_ms": round(median, 1),
            "verify_ms_per_input": round(median / count, 1),
        }
        print(
            f"{count:3d} x Uint64: list {len(proven):8d} B  prove {prove_s:6.2f} s  "
            f"verify {median:8.1f} ms ({median / count:.1f} ms per input)",
            flush=True,
        )
    return result


async def stage_throughput(server_env: dict[str, str], keyset, requests: int) -> dict:
    async with migrate.scratch_database(
        server_env["FHE_DATABASE_URL"], MIGRATIONS_DIR, "bench"
    ) as url:
        with tempfile.TemporaryDirectory(prefix="fhe-bench-cache-") as cache:
            os.environ.update(server_env)
            settings = Settings(database_url=url, cache_dir=Path(cache), crs_max_bits=CRS_BITS)
            store = ObjectStore(settings)
            connection = await asyncpg.connect(url)
            try:
                tenant = (
                    await create_tenant(
                        connection,
                        store,
                        settings,
                        "bench-verify",
                        CHAIN_ID,
                        "tfhe-rs",
                        keyset=keyset,
                    )
                ).tenant
                # The stage reads the deployment's CRS from S3 (the dev stack may have
                # one already): the lists must be proven against that one.
                proven = prove(keyset, ensure_crs(store, "tfhe-rs", CRS_BITS), 4)
                for index in range(requests):
                    await proofs.insert_request(
                        connection,
                        proofs.ProofRequest(
                            index,
                            CHAIN_ID,
                            bytes.fromhex(CONTRACT[2:]),
                            bytes.fromhex(USER[2:]),
                            proven,
                            acl_address=bytes.fromhex(ACL[2:]),
                        ),
                    )
                started = time.perf_counter()
                summary = await run_verify(settings)
                seconds = time.perf_counter() - started
                verified = await connection.fetchval(
                    "SELECT count(*) FROM verify_proofs WHERE verified"
                )
            finally:
                await connection.close()
                store.delete(key_objects(tenant))
    if verified != requests or summary.verified != requests:
        raise SystemExit(f"{verified} of {requests} verified ({summary.as_dict()})")
    return {
        "requests": requests,
        "inputs_per_request": 4,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 2),
        "note": "includes fetching the tenant's server key from S3 once",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,8,32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    keyset = get_backend("tfhe-rs").generate_keyset()
    started = time.perf_counter()
    crs = get_backend("tfhe-rs").generate_crs(CRS_BITS)
    crs_s = time.perf_counter() - started
    print(f"CRS {CRS_BITS} bits: {len(crs)} B in {crs_s:.1f} s", flush=True)
    result = {
        "cpus": os.cpu_count(),
        "crs": {"bits": CRS_BITS, "bytes": len(crs), "generate_s": round(crs_s, 1)},
        "lists": list_costs(keyset, crs, [int(s) for s in args.sizes.split(",")], args.repeat),
    }
    with dev_services() as server_env:
        result["stage"] = asyncio.run(stage_throughput(server_env, keyset, args.requests))
    write_result("verify", result)


if __name__ == "__main__":
    main()
