"""Compute-stage benchmark: an ERC20-transfer-like graph through the real job runner.

    .venv/bin/python bench/graph.py [--transfers 40] [--accounts 8] [--type Uint64]

Each transfer is five nodes (Ge, Sub, Add and two IfThenElse), chained through the
accounts' balances, so the graph has real dependencies and real width. Figures:

* single-op times on one core (a child process with RAYON_NUM_THREADS=1) and with
  every core (TFHE-rs parallelises inside an operation);
* the graph's wall time in ``run_compute`` (PostgreSQL and S3 of the dev stack);
* parallel efficiency = sum of one-core op times / (cores x wall time);
* the same graph in bare TFHE-rs (bench/baseline, a Rust program: no Python, no
  database, every ready node at once on one rayon thread per core) and the ratio
  compute-stage wall / bare wall, measured in this run (#26's goal: <= 1.05).

Final balances are decrypted and checked against plain arithmetic (by both). Writes
bench/results/graph.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from coprocessor.db import migrate, queries
from coprocessor.db.rows import BatchAdmission, ComputationRow
from coprocessor.fhe.engine import OpRequest, get_backend
from coprocessor.settings import MIGRATIONS_DIR, Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import create_tenant, load_client
from coprocessor.types import FheType, Op, derive_handle
from devstack import stack
from devstack.settings import default_state_dir
from devstack.versions import REPO_ROOT
from job_runner.compute import run_compute
from job_runner.executor import usable_cores

RESULTS = REPO_ROOT / "bench" / "results"
CHAIN_ID = 12345
OPS = (Op.Ge, Op.Sub, Op.Add, Op.IfThenElse)


def time_ops(
    server_key: bytes, client_key: bytes, key_id: bytes, fhe_type: FheType, repeat: int
) -> dict[str, float]:
    """Median seconds of each op of a transfer, on whatever cores this process may use."""
    backend = get_backend("tfhe-rs")
    client = backend.client(client_key, key_id)
    evaluator = backend.evaluator(server_key)
    a, b = client.encrypt(200, fhe_type), client.encrypt(30, fhe_type)
    condition = evaluator.evaluate(OpRequest(Op.Ge, (a, b)))
    operands = {Op.Ge: (a, b), Op.Sub: (a, b), Op.Add: (a, b), Op.IfThenElse: (condition, a, b)}
    timings = {}
    for op in OPS:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            evaluator.evaluate(OpRequest(op, operands[op]))
            samples.append(time.perf_counter() - started)
        timings[op.event_name] = sorted(samples)[len(samples) // 2]
    return timings


def transfers_graph(
    tenant_id: int, client, fhe_type: FheType, accounts: int, transfers: int, seed: int
):
    """Inputs (balances, amounts), the rows, and the plaintext final balances."""
    rng = random.Random(seed)
    context = uuid.uuid4().bytes
    inputs: dict[bytes, bytes] = {}
    plain_inputs: list[int] = []
    counter = iter(range(1 << 30))

    def new_input(value: int) -> bytes:
        handle = derive_handle(
            Op.TrivialEncrypt,
            (value.to_bytes(32, "big"),),
            context + next(counter).to_bytes(4, "big"),
            CHAIN_ID,
            fhe_type,
            scalar=True,
        ).raw
        inputs[handle] = client.encrypt(value, fhe_type)
        plain_inputs.append(value)
        return handle

    rows: list[ComputationRow] = []

    def node(op: Op, *operands: bytes, result: FheType = fhe_type) -> bytes:
        handle = derive_handle(op, operands, context, CHAIN_ID, result, scalar=False).raw
        rows.append(ComputationRow(handle, int(result), int(op), operands))
        return handle

    cap = min(fhe_type.max_value // 2, 10_000)
    plain = [rng.randrange(0, cap) for _ in range(accounts)]
    balance = [new_input(v) for v in plain]
    for _ in range(transfers):
        source, target = rng.sample(range(accounts), 2)
        value = rng.randrange(0, cap // 2 + 1)
        amount = new_input(value)
        ok = node(Op.Ge, balance[source], amount, result=FheType.Bool)
        debited = node(Op.Sub, balance[source], amount)
        credited = node(Op.Add, balance[target], amount)
        balance[source] = node(Op.IfThenElse, ok, debited, balance[source])
        balance[target] = node(Op.IfThenElse, ok, credited, balance[target])
        if plain[source] >= value:
            plain[source] -= value
            plain[target] = (plain[target] + value) % (1 << fhe_type.bits)
    index = {h: i for i, h in enumerate(inputs)}
    for r in rows:
        index[r.output_handle] = len(index)
    portable = {  # the graph as bench/baseline reads it: operands by value index
        "inputs": plain_inputs,
        "nodes": [
            {"op": Op(r.fhe_operation).event_name, "args": [index[h] for h in r.dependencies]}
            for r in rows
        ],
        "outputs": [index[h] for h in balance],
        "expected": plain,
    }
    return inputs, rows, balance, plain, portable


async def run_graph(args, settings: Settings, keyset) -> dict:
    store = ObjectStore(settings)
    connection = await asyncpg.connect(settings.database_url)
    try:
        tenant = (
            await create_tenant(
                connection, store, settings, "bench", CHAIN_ID, "tfhe-rs", keyset=keyset
            )
        ).tenant
        client = load_client(settings, tenant)
        fhe_type = FheType.parse(args.type)
        inputs, rows, balances, plain, portable = transfers_graph(
            tenant.tenant_id, client, fhe_type, args.accounts, args.transfers, args.seed
        )
        for handle, ciphertext in inputs.items():
            await queries.insert_ciphertext(
                connection, tenant.tenant_id, handle, ciphertext, 0, int(fhe_type)
            )
        batch_id = "bench/transfers@1"
        await queries.admit_batch(
            connection,
            BatchAdmission(
                batch_id, tenant.tenant_id, "bench", "transfers", "1", None, tuple(rows)
            ),
        )
        started = time.perf_counter()
        summary = await run_compute(settings, batch_id)
        total = time.perf_counter() - started
        stored = await queries.get_ciphertexts(connection, tenant.tenant_id, balances)
        decrypted = [client.decrypt(stored[h].ciphertext) for h in balances]
    finally:
        await connection.close()
    if decrypted != plain or summary.failed:
        raise SystemExit(f"wrong results: {decrypted} != {plain} ({summary.as_dict()})")
    counts = {op.event_name: sum(1 for r in rows if r.fhe_operation == op) for op in OPS}
    return {
        "portable": portable,
        "nodes": len(rows),
        "op_counts": counts,
        "wall_s": round(summary.seconds, 2),
        "wall_with_key_load_s": round(total, 2),
    }


async def with_database(args, server_env: dict[str, str], keyset) -> dict:
    async with migrate.scratch_database(
        server_env["FHE_DATABASE_URL"], MIGRATIONS_DIR, "bench"
    ) as url:
        with tempfile.TemporaryDirectory(prefix="fhe-bench-cache-") as cache:
            os.environ.update(server_env)
            settings = Settings(
                database_url=url,
                cache_dir=Path(cache),
                termination_log=Path(cache) / "termination-log",
                compute_workers=args.workers,
                compute_strategy=args.strategy,
            )
            return await run_graph(args, settings, keyset)


def single_core_child(directory: Path, fhe_type: str, repeat: int) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--time-ops-in",
            str(directory),
            "--type",
            fhe_type,
            "--repeat",
            str(repeat),
        ],
        env={**os.environ, "RAYON_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"one-core timing failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


BASELINE = REPO_ROOT / "bench" / "baseline"


def bare_tfhe_rs(portable: dict, repeat: int) -> dict:
    """Build (cached in the shared cargo target dir) and run bench/baseline on the graph."""
    target = Path(
        os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/fhe-coprocessor/cargo-target")
    )
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "--locked",
            "--manifest-path",
            str(BASELINE / "Cargo.toml"),
        ],
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        check=True,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json") as graph_file:
        json.dump(portable, graph_file)
        graph_file.flush()
        print("the same graph in bare TFHE-rs (bench/baseline) ...", flush=True)
        result = subprocess.run(
            [str(target / "release" / "fhe-baseline"), graph_file.name, "--repeat", str(repeat)],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise SystemExit(f"bench/baseline failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=40, help="5 nodes each")
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--type", default="Uint64")
    parser.add_argument("--repeat", type=int, default=3, help="samples per single-op time")
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument(
        "--strategy", default="max_parallelism", choices=["max_parallelism", "max_locality"]
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-ops-in", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fhe_type = FheType.parse(args.type)
    if args.time_ops_in:  # the one-core child
        d = args.time_ops_in
        timings = time_ops(
            (d / "server_key").read_bytes(),
            (d / "client_key").read_bytes(),
            (d / "key_id").read_bytes(),
            fhe_type,
            args.repeat,
        )
        print(json.dumps(timings))
        return

    cores = usable_cores()
    print(f"generating a tfhe-rs keyset ({cores} cores) ...", flush=True)
    keyset = get_backend("tfhe-rs").generate_keyset()
    with tempfile.TemporaryDirectory(prefix="fhe-bench-keys-") as keys:
        directory = Path(keys)
        (directory / "server_key").write_bytes(keyset.server_key)
        (directory / "client_key").write_bytes(keyset.client_key)
        (directory / "key_id").write_bytes(keyset.key_id)
        one_core = single_core_child(directory, args.type, args.repeat)
    all_cores = time_ops(keyset.server_key, keyset.client_key, keyset.key_id, fhe_type, args.repeat)
    for op in OPS:
        name = op.event_name
        print(
            f"{name:16s} {args.type}: {one_core[name]:7.3f} s on one core, "
            f"{all_cores[name]:7.3f} s on {cores}",
            flush=True,
        )

    components = stack.service_components()
    with tempfile.TemporaryDirectory(prefix="fhe-bench-") as fallback:
        state_dir, started = stack.reuse_or_start(default_state_dir(), Path(fallback), components)
        try:
            graph = asyncio.run(with_database(args, stack.env(state_dir, components), keyset))
        finally:
            if started:
                stack.down(state_dir, components)
    bare = bare_tfhe_rs(graph.pop("portable"), args.repeat) if args.type == "Uint64" else None
    serial = sum(graph["op_counts"][name] * one_core[name] for name in one_core)
    efficiency = serial / (cores * graph["wall_s"])
    result = {
        **graph,
        "type": args.type,
        "cores": cores,
        "strategy": args.strategy,
        "workers": args.workers or cores,
        "single_op_one_core_s": one_core,
        "single_op_all_cores_s": all_cores,
        "sum_one_core_s": round(serial, 2),
        "parallel_efficiency": round(efficiency, 3),
        "ops_per_s": round(graph["nodes"] / graph["wall_s"], 3),
    }
    if bare is not None:
        result["bare_tfhe_rs"] = bare
        result["ratio_to_bare"] = round(graph["wall_s"] / bare["graph_wall_s"], 3)
        result["single_op_ratio_to_bare"] = {
            name: round(all_cores[name] / bare["single_op_s"][name], 3) for name in all_cores
        }
        print(
            f"bare TFHE-rs: the same graph in {bare['graph_wall_s']:.2f} s; compute stage / "
            f"bare = {result['ratio_to_bare']}; per op: {result['single_op_ratio_to_bare']}"
        )
    print(
        f"{graph['nodes']} nodes in {graph['wall_s']} s ({result['ops_per_s']} ops/s); "
        f"sum of one-core op times {serial:.1f} s; parallel efficiency {efficiency:.3f} "
        f"on {cores} cores"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'graph.json'}")


if __name__ == "__main__":
    main()
