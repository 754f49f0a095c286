"""End to end: one confidential transfer, from its host block to its digests committed
on the gateway, against the FHE floor.

    .venv/bin/python bench/e2e.py [--transfers 3]

On the dev stack (PostgreSQL, MinIO, anvil, the Kubernetes control plane with its Job
controller, scheduler and node agent), with the operator as a process (non-admin, the
node-local key cache on) and the host listener in this process following anvil's
newHeads, exactly the path of a real deployment:

1. Zama's host contracts and a ConfidentialToken on anvil, the gateway contracts, a
   tenant; as warm-up a mint to alice (its batch fills the node's key cache; its time
   is reported as cold) and a transfer to bob of an amount encrypted by Zama's client
   SDK through this coprocessor's input path (scripts/demo_chain.py's): minted
   balances are trivial ciphertexts, on which TFHE-rs does no bootstrapping, and this
   makes both balances real encryptions, as a live token's are.
2. ``--transfers`` times ``transferTrivial(bob, 1)`` from alice: ``t0`` is its receipt
   (anvil mines on submit), ``t1`` the first moment CiphertextCommits reports the
   material of both new balances (polled every 50 ms). The balances are decrypted and
   checked; the batch's status gives each stage's Job time.
3. The floor: bench/baseline (bare TFHE-rs, no Python, no database, no pods) on the
   same graph as the token's ``_transfer`` (Le, IfThenElse, Sub, Add on Uint64; the
   amount and the zero trivially encrypted, as ``FHE.asEuint64`` makes them) and the
   noise squashing of the two new balances, on the same cores. Reported beside it, the
   protocol's floor: the squash plus the two compressed lists published per output
   (ct64, and the squashed ct128), which are FHE work the SNS stage cannot skip.

Needs a dev stack whose host chain trusts this stack's gateway (a fresh one, as
``make demo`` makes it); it says so otherwise.

Writes bench/results/e2e.json: the median block -> committed time, the floor, their
ratio (issue #26's goal: <= 1.3), and where the time went. The operator runs a batch's
stages in one pod (its default); ``--per-stage`` gives each its own Job, as before, and
writes e2e-per-stage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from benchlib import write_result
from orchestration import BIN, dev_env, exports, sh, start_operator
from profiles import run as run_baseline

from devstack.versions import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import demo_chain  # the demo's SDK input path, reused as it is

NAMESPACE, TENANT = "fhe-bench-e2e", "bench-e2e"
# Zama's KMSGeneration numbers key ids (4 << 248) + n; no KMS runs here.
KMS_KEY_ID = "0x04000000000000000000000000000000000000000000000000000000000000e2"
MINTED = 1_000_000
BASELINE = REPO_ROOT / "bench" / "baseline"


def stack_env() -> dict[str, str]:
    """The dev stack, its gateway contracts and this benchmark's tenant (idempotent)."""
    env = dev_env()
    env.update(exports(sh(str(BIN / "fhectl"), "dev", "gateway", "--env", env=env)))
    gateway = json.loads(sh(str(BIN / "fhectl"), "dev", "gateway", "-o", "json", env=env))
    env["E2E_SENDER_KEY_FILE"] = gateway["key_file"]
    sh(
        *(str(BIN / "fhectl"), "tenant", "create", TENANT),
        *("--kms-key-id", KMS_KEY_ID, "--namespace", NAMESPACE),
        env=env,
    )
    return env


def install(env: dict[str, str]) -> None:
    """CRD, RBAC, the namespace, the pods' settings and Secrets (as scripts/demo)."""
    kubectl = ["kubectl", "apply", "--server-side", "--force-conflicts"]
    crds = ("-f", str(REPO_ROOT / "crds/fhebatch.yaml"))
    sh(*kubectl, *crds, "-f", str(REPO_ROOT / "config/operator-rbac.yaml"), env=env)
    sh("kubectl", "wait", "--for=condition=Established", "crd/fhebatches.fhe.coprocessor.dev",
       "--timeout=60s", env=env)  # fmt: skip
    settings = [
        "FHE_S3_ENDPOINT",
        "FHE_S3_BUCKET",
        "FHE_GATEWAY_RPC_URL",
        "FHE_GATEWAY_CONFIG_ADDRESS",
        "FHE_GATEWAY_COMMITS_ADDRESS",
        "FHE_GATEWAY_ACL_ADDRESS",
    ]
    secrets = ["FHE_DATABASE_URL", "FHE_S3_ACCESS_KEY", "FHE_S3_SECRET_KEY"]
    sender_key = Path(env["E2E_SENDER_KEY_FILE"]).read_text().strip()

    def meta(name: str) -> dict:
        return {"name": name, "namespace": NAMESPACE}

    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("fhe-coprocessor-config"),
         "data": {k: env[k] for k in settings}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("fhe-coprocessor-secrets"),
         "stringData": {k: env[k] for k in secrets}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("fhe-coprocessor-keys"),
         "stringData": {"FHE_SENDER_PRIVATE_KEY": sender_key}},
    ]  # fmt: skip
    subprocess.run(
        [*kubectl, "-f", "-"],
        input=yaml.safe_dump_all(objects),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def timeline(status: dict, mined_at: float) -> dict[str, list[float]]:
    """[start, end] of each Job in seconds after the block was mined (the status's
    timestamps have one-second resolution), by Job name."""
    return {
        e["job"]: [
            round(_at(e["startedAt"]) - mined_at, 1),
            round(_at(e["finishedAt"]) - mined_at, 1),
        ]
        for e in (status.get("stages") or {}).values()
        if e.get("job") and e.get("startedAt") and e.get("finishedAt")
    }


async def measure(env: dict[str, str], transfers: int) -> dict:
    """The warm-up mint and ``transfers`` transfers through the whole path."""
    os.environ.update(env)
    from kubernetes import client, config
    from web3 import Web3

    from coprocessor.api.batch import GROUP, PLURAL, VERSION
    from coprocessor.chain.contracts import bound
    from coprocessor.db import queries
    from coprocessor.db.pool import create_pool
    from coprocessor.settings import load_settings
    from coprocessor.tenants import load_client
    from devstack.gateway import ensure_dev_gateway
    from devstack.host_chain import deploy_dapp
    from devstack.settings import default_state_dir
    from listeners.host import HostListener, batch_name

    settings = load_settings()
    w3 = Web3(Web3.HTTPProvider(settings.host_rpc_url))
    owner, alice, bob = w3.eth.accounts[:3]
    gateway = ensure_dev_gateway(default_state_dir(), settings)
    host, inputs_ok = demo_chain.host_for_inputs(w3, settings, gateway)
    if not inputs_ok:
        raise SystemExit(
            "bench/e2e needs a host chain that trusts this stack's gateway: start a fresh "
            "dev stack (fhectl dev down, then remove ~/.cache/fhe-coprocessor/dev)"
        )
    token = deploy_dapp(w3, host, "ConfidentialToken")
    assert settings.gateway_commits_address
    commits = bound(w3, "CiphertextCommits", settings.gateway_commits_address)
    config.load_kube_config(config_file=env["KUBECONFIG"])
    api = client.CustomObjectsApi()
    pool = await create_pool(settings.database_url, size=4)
    async with pool.acquire() as connection:
        tenant = await queries.get_tenant(connection, TENANT)
    assert tenant is not None
    tenant_client = load_client(settings, tenant)
    listener = HostListener(
        settings.model_copy(
            update={
                "host_tenant": TENANT,
                "host_executor_address": host.executor,
                "host_acl_address": host.acl,
                "host_start_block": w3.eth.block_number + 1,
                "namespace": NAMESPACE,
                "host_batch_stages": ["compute", "sns", "send"],
            }
        ),
        w3,
        pool,
        api,
    )
    stop = asyncio.Event()
    following = asyncio.create_task(listener.run(stop))

    async def through(call, sender: str, expected: dict[str, int]) -> dict:
        """Send one transaction; wait until the new balances are committed; check them."""
        receipt = await asyncio.to_thread(
            lambda: w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
        )
        t0 = time.perf_counter()
        mined_at = time.time()
        if receipt["status"] != 1:
            raise SystemExit(f"transaction {receipt['transactionHash'].hex()} reverted")
        handles = {
            name: bytes(token.functions.balanceOf(account).call())
            for name, account in (("alice", alice), ("bob", bob))
            if name in expected
        }
        pending = set(handles.values())
        deadline = t0 + 600
        while pending:
            if following.done():
                following.result()  # the listener died: say why
            pending = {
                h for h in pending if not commits.functions.isCiphertextMaterialAdded(h).call()
            }
            if time.perf_counter() > deadline:
                raise SystemExit(f"not committed in 600 s: {[h.hex() for h in pending]}")
            await asyncio.sleep(0.05)
        committed_s = time.perf_counter() - t0
        async with pool.acquire() as connection:
            stored = await queries.get_ciphertexts(
                connection, tenant.tenant_id, list(handles.values())
            )
        for name, handle in handles.items():
            value = tenant_client.decrypt(stored[handle].ciphertext)
            if value != expected[name]:
                raise SystemExit(f"{name}'s balance decrypted to {value}, not {expected[name]}")
        block = w3.eth.get_block(receipt["blockNumber"])
        name = batch_name(host.chain_id, block["number"], bytes(block["hash"]))
        status: dict = {}
        for _ in range(600):  # the send Job ends after the commit it sent is mined
            batch = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
            status = batch.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(0.2)
        if status.get("phase") != "Succeeded":
            raise SystemExit(f"batch {name}: {status.get('phase')} {status.get('message')}")
        return {
            "block": block["number"],
            "batch": name,
            "committed_s": committed_s,
            "jobs_s": demo_chain.job_seconds(status),
            "work_s": demo_chain.work_seconds(status),
            "timeline_s": timeline(status, mined_at),
            "status": {"stages": status.get("stages") or {}},
            "summary": {
                stage: (entry.get("summary") or {})
                for stage, entry in (status.get("stages") or {}).items()
            },
        }

    try:
        print("warm-up: mint to alice (fills the node's key cache) ...", flush=True)
        cold = await through(token.functions.mint(alice, MINTED), owner, {"alice": MINTED})
        print(f"  cold: {cold['committed_s']:.1f} s, {demo_chain.stage_times(cold['status'])}")
        print("warm-up: an SDK-encrypted transfer (real ciphertexts from here on) ...")
        async with pool.acquire() as connection:
            public_key = await queries.get_public_params(connection, tenant.tenant_id)
        handle, proof = await demo_chain.encrypt_amount(
            settings, pool, w3, host, gateway, tenant, token, alice, public_key
        )
        sent = demo_chain.ENCRYPTED_AMOUNT
        encrypted = await through(
            token.functions.transfer(bob, handle, proof),
            alice,
            {"alice": MINTED - sent, "bob": sent},
        )
        print(f"  encrypted amount: {encrypted['committed_s']:.1f} s", flush=True)
        runs = []
        for i in range(1, transfers + 1):
            expected = {"alice": MINTED - sent - i, "bob": sent + i}
            run = await through(token.functions.transferTrivial(bob, 1), alice, expected)
            print(f"  transfer {i}: {run['committed_s']:.1f} s, "
                  f"{demo_chain.stage_times(run['status'])}", flush=True)  # fmt: skip
            runs.append(run)
    finally:
        stop.set()
        await asyncio.wait_for(following, 60)
        await pool.close()
    return {"cold": cold, "encrypted_amount": encrypted, "transfers": runs}


# The token's _transfer (contracts/dapps/ConfidentialToken.sol) as bench/baseline reads it:
# values 0..3 are alice's and bob's balances, the amount and the zero it selects instead.
TRANSFER_GRAPH = {
    "inputs": [MINTED - 250, 250, 1, 0],
    "trivial": [2, 3],
    "nodes": [
        {"op": "FheLe", "args": [2, 0]},  # 4: enough = amount <= balance
        {"op": "FheIfThenElse", "args": [4, 2, 3]},  # 5: moved = enough ? amount : 0
        {"op": "FheSub", "args": [0, 5]},  # 6: alice's new balance
        {"op": "FheAdd", "args": [1, 5]},  # 7: bob's new balance
    ],
    "outputs": [6, 7],
    "expected": [MINTED - 251, 251],
}


def floor(repeat: int) -> dict:
    """bench/baseline on the transfer's graph and the squash of its outputs (median)."""
    target = Path(
        os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/fhe-coprocessor/cargo-target")
    )
    print("building bench/baseline ...", flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--target-dir", str(target)],
        cwd=BASELINE,
        check=True,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json") as graph:
        json.dump(TRANSFER_GRAPH, graph)
        graph.flush()
        binary = target / "release" / "fhe-baseline"
        runs = [run_baseline(binary, Path(graph.name), 0, "--squash") for _ in range(repeat)]
    compute = statistics.median(r["graph_wall_s"] for r in runs)
    squash = statistics.median(r["squash_wall_s"] for r in runs)
    publish = statistics.median(r["publish_wall_s"] for r in runs)
    return {
        "compute_s": compute,
        "squash_s": squash,
        "floor_s": compute + squash,  # the floor: compute + squash of the outputs
        # What the protocol publishes of each output is FHE work too: the ct64 list and
        # the squashed form's compressed list, as the KMS reads them from S3.
        "publish_s": publish,
        "protocol_floor_s": compute + publish,
        "threads": runs[0]["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=3)
    parser.add_argument("--floor-repeat", type=int, default=3)
    parser.add_argument(
        "--per-stage",
        action="store_true",
        help="one Job per stage (FHE_JOB_FUSE_STAGES=false), as before issue #26's fusing",
    )
    args = parser.parse_args()

    env = stack_env()
    install(env)
    state = Path(env["FHE_STATE_DIR"])
    log = state / "bench-e2e-operator.log"
    fusing = {"FHE_JOB_FUSE_STAGES": "false" if args.per_stage else "true"}
    operator = start_operator({**env, **fusing}, log, limit=None, key_cache=state / "key-cache")
    try:
        measured = asyncio.run(measure(env, args.transfers))
    finally:
        operator.terminate()
        operator.wait(30)
    bare = floor(args.floor_repeat)
    committed = statistics.median(r["committed_s"] for r in measured["transfers"])
    result = {
        "machine_cores": os.cpu_count(),
        "transfers": args.transfers,
        "pods": "one per stage" if args.per_stage else "one per batch (stages fused)",
        "block_to_committed_s": committed,
        "cold_block_to_committed_s": measured["cold"]["committed_s"],
        "floor": bare,
        "ratio_to_floor": committed / bare["floor_s"],
        "ratio_to_protocol_floor": committed / bare["protocol_floor_s"],
        "goal_ratio": 1.3,
        "runs": measured["transfers"],
        "cold": measured["cold"],
        "encrypted_amount": measured["encrypted_amount"],
    }
    write_result("e2e-per-stage" if args.per_stage else "e2e", result)
    print(
        f"block -> committed {committed:.1f} s (median of {args.transfers}), FHE floor "
        f"{bare['floor_s']:.1f} s (compute {bare['compute_s']:.1f} + squash "
        f"{bare['squash_s']:.1f}): ratio {result['ratio_to_floor']:.2f} (goal <= 1.3); "
        f"with the compressed ct64 and ct128 the protocol publishes "
        f"{bare['protocol_floor_s']:.1f} s: ratio {result['ratio_to_protocol_floor']:.2f}"
    )


if __name__ == "__main__":
    main()
