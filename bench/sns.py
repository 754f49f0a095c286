"""SNS benchmark: squash latency per type and backend, and S3 upload throughput.

    .venv/bin/python bench/sns.py [--types Bool,Uint8,...] [--repeat 3] [--objects 48]

* squash: median latency of ``Evaluator.squash`` per type, every squashed ciphertext
  decrypted and checked; on one thread (the Sequential policy) and on all cores;
* upload: real squashed ciphertexts put into the dev stack's MinIO through the SNS
  stage's ``Uploader`` with 1 and 8 uploads in flight (MB/s, objects/s); the objects
  are deleted afterwards.

Writes bench/results/sns.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from benchlib import dev_services, write_result

from coprocessor.fhe.engine import backend_names, get_backend
from coprocessor.retry import CircuitBreaker
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.types import FheType
from job_runner.upload import Uploader

DEFAULT_TYPES = "Bool,Uint8,Uint16,Uint32,Uint64,Uint128,Uint256"


def squash_latencies(backend_name: str, types: list[FheType], repeat: int) -> dict:
    backend = get_backend(backend_name)
    keyset = backend.generate_keyset()
    evaluator = backend.evaluator(keyset.server_key)
    client = backend.client(keyset.client_key, keyset.key_id)
    result: dict = {
        "latency_ms": {},
        "ct64_bytes": {},
        "ct128_bytes": {},
        "ct128_format": {},
        "server_key_bytes": len(keyset.server_key),
    }
    for fhe_type in types:
        samples = []
        for round_ in range(repeat):
            value = (fhe_type.max_value * (round_ + 1)) // (repeat + 1)
            ciphertext = client.encrypt(value, fhe_type)
            started = time.perf_counter()
            squashed = evaluator.squash(ciphertext)
            samples.append((time.perf_counter() - started) * 1000)
            if client.decrypt(squashed) != value:
                raise AssertionError(f"{backend_name} {fhe_type.name}: squash changed the value")
        result["latency_ms"][fhe_type.name] = round(statistics.median(samples), 1)
        result["ct64_bytes"][fhe_type.name] = len(ciphertext)
        result["ct128_bytes"][fhe_type.name] = len(squashed)
        result["ct128_format"][fhe_type.name] = evaluator.squashed_format(fhe_type).name
        print(
            f"squash {backend_name:8s} {fhe_type.name:8s} "
            f"{result['latency_ms'][fhe_type.name]:9.1f} ms  ct128 {len(squashed)} B "
            f"{result['ct128_format'][fhe_type.name]}",
            flush=True,
        )
    return result


def squash_in_child(backend_name: str, types: str, repeat: int, threads: int) -> dict:
    """Rayon reads its thread count once per process: one child per setting."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            backend_name,
            "--types",
            types,
            "--repeat",
            str(repeat),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sys.stderr.write(output.stdout)
    return json.loads(output.stdout.strip().splitlines()[-1])


def upload_throughput(settings: Settings, objects: list[bytes], concurrency: int) -> dict:
    store = ObjectStore(settings)
    uploader = Uploader(
        store, attempts=5, first_delay_s=0.2, max_delay_s=5.0, breaker=CircuitBreaker(10)
    )
    prefix = f"bench/{uuid.uuid4().hex}"
    keys = [f"{prefix}/{n}" for n in range(len(objects))]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(uploader.put, keys, objects))
    seconds = time.perf_counter() - started
    store.delete(keys)
    megabytes = sum(len(o) for o in objects) / 1e6
    figures = {
        "objects": len(objects),
        "megabytes": round(megabytes, 2),
        "seconds": round(seconds, 3),
        "mb_per_s": round(megabytes / seconds, 1),
        "objects_per_s": round(len(objects) / seconds, 1),
        "retries": uploader.retries,
    }
    print(f"upload x{concurrency}: {figures}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=DEFAULT_TYPES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--objects", type=int, default=48)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    types = [FheType.parse(name) for name in args.types.split(",")]
    if args.child:
        print(json.dumps(squash_latencies(args.child, types, args.repeat)))
        return
    cores = len(os.sched_getaffinity(0))
    result: dict = {"cpus": cores, "squash": {}, "upload": {}}
    for name in backend_names():
        result["squash"][name] = {
            "one_thread": squash_in_child(name, args.types, args.repeat, 1),
            f"{cores}_threads": squash_in_child(name, args.types, args.repeat, cores),
        }
    # Upload real squashed ciphertexts: Uint64's ct128, the SNS stage's common object.
    backend = get_backend(backend_names()[0])
    keyset = backend.generate_keyset()
    client = backend.client(keyset.client_key, keyset.key_id)
    squashed = backend.evaluator(keyset.server_key).squash(client.encrypt(1, FheType.Uint64))
    objects = [squashed[:-8] + n.to_bytes(8, "big") for n in range(args.objects)]
    with dev_services() as env:
        settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("FHE_S3_")})
        for concurrency in (1, 8):
            result["upload"][f"concurrency_{concurrency}"] = upload_throughput(
                settings, objects, concurrency
            )
    write_result("sns", result)


if __name__ == "__main__":
    main()
