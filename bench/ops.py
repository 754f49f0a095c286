"""FHE engine benchmark: latency per op x type, sizes, key generation, per backend.

    .venv/bin/python bench/ops.py [--backend tfhe-rs] [--types Uint8,Uint64]
                                  [--ops Add,Mul,Lt,IfThenElse] [--repeat 3]
                                  [--device gpu]

``--device gpu`` (tfhe-rs, a GPU build: ``make setup-gpu``): the GPU column, every op
placed on the machine's GPUs as the compute stage places it; written as
ops-tfhe-rs-gpu.json/.md, beside the whitepaper's GPU figure.

Every result is decrypted and checked against the plaintext reference, so a fast wrong
answer cannot pass as a figure. Writes bench/results/ops-<backend>.json and .md, with
the reference coprocessor's published CPU figures beside ours (whitepaper, 192 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

from benchlib import RESULTS

from coprocessor.fhe import reference as ref
from coprocessor.fhe.engine import OpRequest, backend_names, get_backend
from coprocessor.types import FheType, Op

DEFAULT_OPS = "Add,Sub,Mul,Lt,Eq,BitAnd,Shl,Min,IfThenElse"
DEFAULT_TYPES = "Uint8,Uint16,Uint32,Uint64"


def pbs_estimate(name: str, op: Op, fhe_type: FheType) -> int | None:
    """Bootstraps per op from the concrete backend's cost model (TFHE-rs does not say)."""
    if name != "concrete":
        return None
    from coprocessor.fhe.concrete_circuits import estimated_pbs

    return estimated_pbs(op, fhe_type)


# Zama's published CPU latencies (ms) for the reference, by op and bits.
PUBLISHED_MS = {
    "Add": {8: 54, 16: 60, 32: 82, 64: 109},
    "Mul": {8: 98, 16: 141, 32: 213, 64: 400},
    "Lt": {8: 37, 16: 55, 32: 77, 64: 99},
    "IfThenElse": {8: 30, 16: 32, 32: 33, 64: 36},
}


# Zama's published GPU latency (ms) for the reference: Uint64 add on 2 x H100.
PUBLISHED_GPU_MS = {"Add": {64: 20}}


def gpu_pool():
    """The GPUs of this machine as the compute stage would use them, or exit saying why."""
    import fhe_native

    from coprocessor import gpu

    if not fhe_native.HAS_GPU:
        raise SystemExit("--device gpu: the extension is a CPU build; run `make setup-gpu`")
    devices = gpu.discover()
    if not devices:
        raise SystemExit("--device gpu: no CUDA device is visible here")
    return gpu.DevicePool(devices, 0.1)


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, (time.perf_counter() - started) * 1000


def bench_backend(
    name: str, ops: list[Op], types: list[FheType], repeat: int, device: str = "cpu"
) -> dict:
    backend = get_backend(name)
    pool = gpu_pool() if device == "gpu" else None
    keyset, keygen_ms = timed(backend.generate_keyset)
    if pool is not None:
        evaluator, load_ms = timed(
            lambda: backend.evaluator(keyset.server_key, keyset.key_id, devices=pool)  # type: ignore[call-arg]
        )
    else:
        evaluator, load_ms = timed(lambda: backend.evaluator(keyset.server_key))
    client = backend.client(keyset.client_key, keyset.key_id)
    rng = random.Random(11)
    result: dict = {
        "backend": name,
        "device": device,
        "cpus": os.cpu_count(),
        "keygen_ms": round(keygen_ms),
        "server_key_load_ms": round(load_ms),
        "sizes_bytes": {
            "client_key": len(keyset.client_key),
            "server_key_compressed": len(keyset.server_key),
            "public_params": len(keyset.public_params),
        },
        # Ciphertext sizes include the 15-byte envelope header.
        "ciphertext_bytes": {},
        "squashed_bytes": {},
        "latency_ms": {},
        "pbs_count": "n/a",
        "failure_probability": backend.failure_probability,
        "first_call_ms": {},
        "unsupported": {},
        "pbs_estimate": {},
    }
    for fhe_type in types:
        sample = client.encrypt(1, fhe_type)
        result["ciphertext_bytes"][fhe_type.name] = len(sample)
        squashed = evaluator.squash(sample)
        result["squashed_bytes"][fhe_type.name] = len(squashed)
        assert client.decrypt(squashed) == 1
    for op in ops:
        row = result["latency_ms"].setdefault(op.name, {})
        for fhe_type in types:
            reason = backend.support(op, fhe_type)
            if reason:
                result["unsupported"].setdefault(op.name, {})[fhe_type.name] = reason
                print(f"{name:8s} {op.name:11s} {fhe_type.name:8s} unsupported: {reason}")
                continue
            pbs = pbs_estimate(name, op, fhe_type)
            if pbs is not None:
                result["pbs_estimate"].setdefault(op.name, {})[fhe_type.name] = pbs
            samples = []
            # One untimed-in-the-median first call: compiles (concrete) or warms caches.
            for attempt in range(repeat + 1):
                a, b = rng.randint(0, fhe_type.max_value), rng.randint(0, fhe_type.max_value)
                if op is Op.IfThenElse:
                    condition = rng.randint(0, 1)
                    operands = (
                        client.encrypt(condition, FheType.Bool),
                        client.encrypt(a, fhe_type),
                        client.encrypt(b, fhe_type),
                    )
                    expected = ref.if_then_else(condition, a, b)
                else:
                    operands = (client.encrypt(a, fhe_type), client.encrypt(b, fhe_type))
                    expected = ref.binary(op, a, b, fhe_type)
                request = OpRequest(op, operands)
                output, ms = timed(lambda r=request: evaluator.evaluate(r))
                got = client.decrypt(output)
                if got != expected:
                    raise AssertionError(f"{name} {op.name} {fhe_type.name}: {got} != {expected}")
                if attempt == 0:
                    result["first_call_ms"].setdefault(op.name, {})[fhe_type.name] = round(ms)
                else:
                    samples.append(ms)
            row[fhe_type.name] = round(statistics.median(samples), 1)
            print(
                f"{name:8s} {op.name:11s} {fhe_type.name:8s} {row[fhe_type.name]:10.1f} ms",
                flush=True,
            )
    return result


def markdown(result: dict, types: list[FheType]) -> str:
    lines = [
        f"### {result['backend']} ({result['cpus']} cores): median latency, ms "
        "(published reference on 192 cores in brackets)",
        "",
        "| op | " + " | ".join(t.name for t in types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for op, row in result["latency_ms"].items():
        cells = []
        for fhe_type in types:
            ours = row.get(fhe_type.name)
            theirs = PUBLISHED_MS.get(op, {}).get(fhe_type.bits)
            shown = "n/a" if ours is None else f"{ours}"
            cells.append(shown + (f" ({theirs})" if theirs else ""))
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    for op, row in result["unsupported"].items():
        for type_name, reason in row.items():
            lines.append(f"- {op} on {type_name}: unsupported ({reason})")
    lines += [
        "",
        f"failure probability {result['failure_probability']}; "
        f"first calls (compile included) {result['first_call_ms']}",
        f"estimated bootstraps {result['pbs_estimate'] or 'n/a'}",
        f"keygen {result['keygen_ms']} ms, server key load "
        f"{result['server_key_load_ms']} ms, sizes {result['sizes_bytes']}",
        f"ciphertext bytes {result['ciphertext_bytes']}",
        f"squashed bytes {result['squashed_bytes']}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=backend_names())
    parser.add_argument("--ops", default=DEFAULT_OPS)
    parser.add_argument("--types", default=DEFAULT_TYPES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    if args.device == "gpu":
        if args.backend not in (None, "tfhe-rs"):
            raise SystemExit("--device gpu: only the tfhe-rs backend computes on GPUs")
        args.backend = "tfhe-rs"
    ops = [Op.parse(name) for name in args.ops.split(",")]
    types = [FheType.parse(name) for name in args.types.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in [args.backend] if args.backend else backend_names():
        result = results[name] = bench_backend(name, ops, types, args.repeat, args.device)
        stem = f"ops-{name}" + ("-gpu" if args.device == "gpu" else "")
        if args.device == "gpu":
            result["published_gpu_ms"] = PUBLISHED_GPU_MS
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
        table = markdown(result, types)
        (RESULTS / f"{stem}.md").write_text(table)
        print(table)
    if {"concrete", "tfhe-rs"} <= set(results):
        table = ratios(results["concrete"], results["tfhe-rs"], types)
        (RESULTS / "ops-ratio.md").write_text(table)
        print(table)


def ratios(slow: dict, fast: dict, types: list[FheType]) -> str:
    """concrete / tfhe-rs median latency per op and type (blank where either is missing)."""
    lines = [
        "### latency ratio concrete / tfhe-rs (same machine, same run)",
        "",
        "| op | " + " | ".join(t.name for t in types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for op, row in slow["latency_ms"].items():
        cells = []
        for fhe_type in types:
            a, b = row.get(fhe_type.name), fast["latency_ms"].get(op, {}).get(fhe_type.name)
            cells.append(f"{a / b:.1f}x" if a and b else "")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
