"""The operator end to end: the real API server, Job controller, scheduler and garbage
collector, our node agent running `fhe-job compute` pods, real PostgreSQL and S3, real
TFHE-rs keys. The operator runs as the user `fhe-operator`, bound only by
config/operator-rbac.yaml.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import pytest
from eth_hash.auto import keccak
from kubernetes import client
from kubernetes.client.rest import ApiException

from coprocessor.db import queries
from coprocessor.fhe import reference
from coprocessor.fhe.envelope import Envelope
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import (
    create_tenant,
    input_handle,
    key_objects,
    load_client,
)
from coprocessor.types import FheType, Op
from devstack import process
from devstack.kube import operator_kubeconfig
from devstack.state import StackState
from tests.paths import REPO_ROOT
from tests.published import published_objects

from ..keysets import session_keyset
from .conftest import decrypt_output, store_input, wait_for

GROUP, VERSION, PLURAL = "fhe.coprocessor.dev", "v1alpha1", "fhebatches"
CHAIN_ID = 12345
KMS_KEY_ID = (4 << 248) + 7  # as Zama's KMSGeneration numbers keys


@pytest.fixture(scope="module")
def settings(dev_stack, database_url_module, tmp_path_factory) -> Settings:
    return Settings(
        database_url=database_url_module, cache_dir=tmp_path_factory.mktemp("operator-cache")
    )


@pytest.fixture(scope="module")
async def tenant(settings):
    connection = await asyncpg.connect(settings.database_url)
    try:
        created = await create_tenant(
            connection,
            ObjectStore(settings),
            settings,
            "ops",
            CHAIN_ID,
            "tfhe-rs",
            keyset=session_keyset("tfhe-rs"),
            kms_key_id=KMS_KEY_ID,
        )
    finally:
        await connection.close()
    yield created.tenant, load_client(settings, created.tenant)
    ObjectStore(settings).delete(key_objects(created.tenant))


class Operator:
    """The operator as a process, so tests can kill it and start it again."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.port = process.free_port()
        log = open(self.log_path, "a")  # noqa: SIM115 (kept for the process's life)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhe_operator",
                "--liveness",
                f"http://127.0.0.1:{self.port}/healthz",
            ],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.alive, timeout=60, what="the operator's liveness endpoint")

    def alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"operator exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def operator(kube_cluster, installed, settings, tenant, dev_stack, tmp_path_factory):
    info = StackState.load(Path(kube_cluster["STATE_DIR"])).components["kube"]
    env = {
        **os.environ,
        **dev_stack,
        "FHE_DATABASE_URL": settings.database_url,
        "FHE_KUBECONFIG": str(operator_kubeconfig(info)),
        "FHE_OPERATOR_RESYNC_S": "1",
        "FHE_LOG_FORMAT": "json",
        "FHE_MAX_RUNNING_BATCHES_CPU": "2",
    }
    env.pop("KUBECONFIG", None)
    running = Operator(env, tmp_path_factory.mktemp("operator") / "operator.log")
    running.start()
    yield running
    running.kill()


class Gateway:
    """The gateway contracts on the dev chain with one registered, funded tx sender
    (majority 1) and the host chains of this module's handles."""

    def __init__(self, rpc_url: str) -> None:
        from web3 import Web3

        from coprocessor.chain.contracts import funded_account
        from devstack.gateway import deploy_gateway, host_chain

        self.w3 = Web3(Web3.HTTPProvider(rpc_url))
        self.signer = funded_account(self.w3, 10**19)
        self.stranger = funded_account(self.w3, 10**19)  # never registered
        gateway = deploy_gateway(
            self.w3,
            [(self.signer.address, self.signer.address, "")],
            # This module's handles, and the dev chain's own (the host-chain test); the
            # dev stack's anvil may serve CHAIN_ID itself.
            [host_chain(c) for c in sorted({CHAIN_ID, self.w3.eth.chain_id})],
        )
        self.config, self.contract, self.acl = gateway.config, gateway.commits, gateway.acl

    def env(self) -> dict[str, str]:
        return {
            "FHE_GATEWAY_CONFIG_ADDRESS": self.config.address,
            "FHE_GATEWAY_COMMITS_ADDRESS": self.contract.address,
            "FHE_GATEWAY_ACL_ADDRESS": self.acl.address,
        }

    def submitted(self, handle_hex: str) -> bool:
        return self.contract.functions.isCiphertextMaterialAdded(
            bytes.fromhex(handle_hex[2:])
        ).call()


@pytest.fixture(scope="module")
def gateway(dev_stack) -> Gateway:
    return Gateway(dev_stack["FHE_GATEWAY_RPC_URL"])


def signer_secret(kube_api, namespace: str, account) -> None:
    """The chart's key Secret: the signer key reaches the send pods only through it."""
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "fhe-coprocessor-keys"},
            "stringData": {"FHE_SENDER_PRIVATE_KEY": "0x" + bytes(account.key).hex()},
        },
    )


@pytest.fixture
async def ns(namespace, kube_api, settings, dev_stack, gateway, tenant):
    """A namespace the tenant is bound to, whose pods get the database, S3 and gateway
    settings (the chart's ConfigMap) and the signer key (its Secret)."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        await queries.bind_namespaces(connection, tenant[0].tenant_id, [namespace])
    finally:
        await connection.close()
    secret_names = ("FHE_S3_ACCESS_KEY", "FHE_S3_SECRET_KEY")
    data = {
        key: value
        for key, value in dev_stack.items()
        if key.startswith("FHE_S3") and key not in secret_names
    }
    credentials = {key: dev_stack[key] for key in secret_names}
    credentials["FHE_DATABASE_URL"] = settings.database_url
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "fhe-coprocessor-secrets"}, "stringData": credentials}
    )
    data.update(
        {
            "FHE_LOG_FORMAT": "json",
            "FHE_COMPUTE_INPUT_WAIT_S": "30",
            "FHE_GATEWAY_RPC_URL": dev_stack["FHE_GATEWAY_RPC_URL"],
            **gateway.env(),
        }
    )
    client.CoreV1Api(kube_api).create_namespaced_config_map(
        namespace, {"metadata": {"name": "fhe-coprocessor-config"}, "data": data}
    )
    return namespace


def batch(name: str, graph: dict, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FheBatch",
        "metadata": {"name": name},
        "spec": {"tenant": "ops", "device": "cpu", "graph": graph, **spec},
    }


def custom(kube_api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def get(kube_api, ns: str, name: str) -> dict:
    return custom(kube_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def phase_in(kube_api, ns: str, name: str, *phases: str):
    def check():
        status = get(kube_api, ns, name).get("status") or {}
        return status if status.get("phase") in phases else None

    return check


def jobs_in(kube_api, ns: str) -> list:
    return client.BatchV1Api(kube_api).list_namespaced_job(ns).items


async def test_a_valid_graph_succeeds_and_its_outputs_decrypt(
    operator, ns, kube_api, settings, tenant, kube_cluster, gateway
):
    signer_secret(kube_api, ns, gateway.signer)
    a = await store_input(settings, tenant, 200, FheType.Uint8)
    b = await store_input(settings, tenant, 100, FheType.Uint8)
    graph = {
        "inputs": {"a": a, "b": b},
        "nodes": [
            {"name": "ok", "op": "FheGe", "args": ["a", "b"]},
            {"name": "dec", "op": "FheSub", "args": ["a", "b"]},
            {"name": "new", "op": "FheIfThenElse", "args": ["ok", "dec", "a"], "output": True},
            {"name": "c", "op": "FheAdd", "args": ["b", {"scalar": "0x2a"}], "output": True},
            {"name": "k", "op": "FheTrivialEncrypt", "args": [{"scalar": "7"}], "type": "Uint8"},
            {"name": "w", "op": "FheCast", "args": ["k"], "type": "Uint16", "output": True},
        ],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("transfer", graph, stages=["compute", "sns", "send"])
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "transfer", "Succeeded", "Failed"),
        timeout=300,
        what="batch transfer to finish",
    )
    assert status["phase"] == "Succeeded", status
    assert status["computations"] == {"total": 6, "completed": 6, "failed": 0}
    assert status["stages"]["compute"]["state"] == "Succeeded"
    assert status["stages"]["sns"]["state"] == "Succeeded"
    assert status["stages"]["sns"]["summary"]["completed"] == 3
    assert (
        "3/3 outputs published; 3/3 sent to the gateway in 3 transaction(s)" in (status["message"])
    )
    assert status["stages"]["send"]["summary"]["transactions"] == 3
    assert status["observedGeneration"] == 1
    expected = {
        "new": reference.binary(Op.Sub, 200, 100, FheType.Uint8),
        "c": 142,
        "w": reference.cast(7, FheType.Uint16),
    }
    assert set(status["outputs"]) == set(expected)
    record, client_ = tenant
    connection = await asyncpg.connect(settings.database_url)
    try:
        digests = {
            bytes(r["handle"]): r
            for r in await connection.fetch(
                "SELECT handle, key_id, ciphertext, ciphertext128 FROM ciphertext_digest "
                "WHERE tenant_id = $1",
                record.tenant_id,
            )
        }
    finally:
        await connection.close()
    for name, value in expected.items():
        assert await decrypt_output(settings, tenant, status["outputs"][name]) == value
        handle = bytes.fromhex(status["outputs"][name][2:])
        ct64, ct128 = published_objects(settings, digests[handle])  # by digest, checked
        fhe_type = FheType(handle[30])
        assert client_.decrypt_published(ct128, fhe_type, squashed=True) == value
        # What the gateway chain holds is the digest of what S3 holds, under the KMS key id.
        ((_, key_id, ct64_digest, agreed),) = gateway.contract.functions.getCiphertextMaterials(
            [handle]
        ).call()
        ((_, _, ct128_digest, _),) = gateway.contract.functions.getSnsCiphertextMaterials(
            [handle]
        ).call()
        assert (ct64_digest, ct128_digest) == (keccak(ct64), keccak(ct128))
        assert key_id == KMS_KEY_ID
        assert agreed == [gateway.signer.address]
    # One pod ran the three stages in turn (FHE_JOB_FUSE_STAGES, the default).
    (job,) = jobs_in(kube_api, ns)
    assert job.metadata.labels["fhe.coprocessor.dev/stage"] == "compute"
    assert job.metadata.labels["fhe.coprocessor.dev/stages"] == "compute.sns.send"
    assert {e["job"] for e in status["stages"].values()} == {job.metadata.name}
    assert status["stages"]["compute"]["summary"]["completed"] == 6  # its own summary
    assert job.metadata.owner_references[0].kind == "FheBatch"
    assert job.spec.pod_failure_policy.rules[0].on_exit_codes.values == [3]
    assert job.spec.ttl_seconds_after_finished and job.spec.active_deadline_seconds
    printed = subprocess.run(
        ["kubectl", "get", "fhebatches", "-n", ns],
        env={**os.environ, "KUBECONFIG": kube_cluster["KUBECONFIG"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    header, row = printed.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "PHASE", "DONE", "DEVICE", "AGE", "MESSAGE"]
    assert row.split()[:4] == ["transfer", "Succeeded", "6/6", "cpu"]
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    assert any(e.reason == "Succeeded" and e.involved_object.name == "transfer" for e in events)


async def test_a_finished_batch_stays_finished_without_its_jobs_or_its_tenant(
    operator, ns, kube_api, settings, tenant
):
    """Terminal is terminal: once Succeeded, losing the Jobs (their TTL) and the tenant
    row (an operator on another database) changes nothing. Before the fix the next
    resync (1 s here) re-created the compute Job or failed the batch."""
    a = await store_input(settings, tenant, 5, FheType.Uint8)
    graph = {
        "inputs": {"a": a},
        "nodes": [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": "1"}], "output": True}],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("settled", graph)
    )
    done = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "settled", "Succeeded", "Failed"),
        timeout=300,
        what="batch settled to finish",
    )
    assert done["phase"] == "Succeeded", done
    jobs = client.BatchV1Api(kube_api)
    for job in jobs_in(kube_api, ns):
        jobs.delete_namespaced_job(job.metadata.name, ns, propagation_policy="Background")
    record, _ = tenant
    connection = await asyncpg.connect(settings.database_url)
    try:
        await connection.execute(
            "UPDATE tenants SET name = name || '-elsewhere' WHERE tenant_id = $1",
            record.tenant_id,
        )
        try:
            # A watch event on the batch, then several resync periods.
            custom(kube_api).patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                PLURAL,
                "settled",
                {"metadata": {"annotations": {"example.com/touched": "1"}}},
            )
            deadline = time.monotonic() + 8  # the operator resyncs every 1 s here
            while time.monotonic() < deadline:
                status = get(kube_api, ns, "settled")["status"]
                assert status == done, "a finished batch changed"
                live = [j for j in jobs_in(kube_api, ns) if not j.metadata.deletion_timestamp]
                assert not live, "a Job was created for a finished batch"
                await asyncio.sleep(0.5)
        finally:
            await connection.execute(
                "UPDATE tenants SET name = $2 WHERE tenant_id = $1",
                record.tenant_id,
                record.name,
            )
    finally:
        await connection.close()


async def test_a_key_that_is_not_a_registered_signer_fails_the_batch(
    operator, ns, kube_api, settings, tenant, gateway
):
    signer_secret(kube_api, ns, gateway.stranger)
    a = await store_input(settings, tenant, 1, FheType.Bool)
    custom(kube_api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        batch(
            "stranger",
            {
                "inputs": {"a": a},
                "nodes": [{"name": "x", "op": "FheNot", "args": ["a"], "output": True}],
            },
            stages=["compute", "sns", "send"],
        ),
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "stranger", "Succeeded", "Failed"),
        timeout=300,
        what="batch stranger to finish",
    )
    assert status["phase"] == "Failed", status
    assert (
        f"stage send failed: {gateway.stranger.address} is not a registered coprocessor tx sender"
    ) in status["message"], status["message"]
    assert status["stages"]["sns"]["state"] == "Succeeded"
    assert status["stages"]["send"]["attempts"] == 1  # exit 3: not retried
    assert gateway.w3.eth.get_transaction_count(gateway.stranger.address) == 0


INVALID = [
    (
        "unknown-op",
        {"nodes": [{"name": "x", "op": "FheFrobnicate", "args": ["a", "a"]}]},
        "unknown op 'FheFrobnicate'",
    ),
    (
        "arity",
        {"nodes": [{"name": "x", "op": "FheAdd", "args": ["a"]}]},
        "node 'x' (FheAdd): takes 2 argument(s), got 1",
    ),
    (
        "mismatch",
        {"nodes": [{"name": "x", "op": "FheAdd", "args": ["a", "wide"]}]},
        "operands differ: Uint8 and Uint16",
    ),
    (
        "cycle",
        {
            "nodes": [
                {"name": "x", "op": "FheAdd", "args": ["a", "y"]},
                {"name": "y", "op": "FheAdd", "args": ["x", "a"]},
            ]
        },
        "cycle through nodes x, y",
    ),
    (
        "dangling",
        {"nodes": [{"name": "x", "op": "FheAdd", "args": ["a", "nope"]}]},
        "argument 'nope' names no input or node",
    ),
    ("no-type", {"nodes": [{"name": "x", "op": "FheCast", "args": ["a"]}]}, "needs `type`"),
    (
        "unsupported",
        {
            "nodes": [
                {"name": "x", "op": "FheRandBounded", "type": "Bool", "args": [{"scalar": "2"}]}
            ]
        },
        "not defined on Bool",
    ),
]


async def test_invalid_graphs_fail_with_a_message_and_no_job(
    operator, ns, kube_api, settings, tenant
):
    a = await store_input(settings, tenant, 1, FheType.Uint8)
    wide = await store_input(settings, tenant, 1, FheType.Uint16)
    cases = [
        (name, batch(name, {"inputs": {"a": a, "wide": wide}, **graph}), message)
        for name, graph, message in INVALID
    ]
    cases.append(
        (
            "tenant",
            {
                **batch(
                    "tenant",
                    {"inputs": {"a": a}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
                ),
                "spec": {
                    "tenant": "nobody",
                    "graph": {
                        "inputs": {"a": a},
                        "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}],
                    },
                },
            },
            "tenant 'nobody' does not exist",
        )
    )
    unknown = "0x" + (b"\x01" * 22 + CHAIN_ID.to_bytes(8, "big") + bytes([2, 0])).hex()
    cases.append(
        (
            "handle",
            batch(
                "handle",
                {"inputs": {"a": unknown}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
            ),
            "input 'a' (0x0101",
        )
    )
    cases.append(
        (
            "stage",
            batch(
                "stage",
                {
                    "inputs": {"a": a},
                    "nodes": [{"name": "x", "op": "FheNot", "args": ["a"], "output": True}],
                },
                stages=["compute", "send"],
            ),
            "list sns before send",
        )
    )
    cases.append(
        (
            "no-outputs",
            batch(
                "no-outputs",
                {"inputs": {"a": a}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
                stages=["compute", "sns"],
            ),
            "no node is marked output: true",
        )
    )
    # Too costly: 500 encrypted divisions on Uint256 (the figure and the limit named).
    wide = await store_input(settings, tenant, 12345, FheType.Uint256)
    divisions = [
        {"name": f"d{i}", "op": "FheDiv", "args": [f"d{i - 1}" if i else "w", "w"]}
        for i in range(500)
    ]
    divisions[-1]["output"] = True
    cases.append(
        (
            "over-cost",
            batch("over-cost", {"inputs": {"w": wide}, "nodes": divisions}),
            "PBS, over the limit of 2,000,000 (FHE_BATCH_MAX_COST); heaviest: FheDiv on "
            "Uint256 x 500",
        )
    )
    cases.append(
        (
            "priority",
            batch(
                "priority",
                {"inputs": {"a": a}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
                priority=900,
            ),
            "priority 900 is above 100, the highest allowed in namespace",
        )
    )
    for _, manifest, _ in cases:
        custom(kube_api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    for name, _, message in cases:
        status = await asyncio.to_thread(
            wait_for,
            phase_in(kube_api, ns, name, "Failed", "Succeeded", "Computing"),
            timeout=60,
            what=f"batch {name} to be judged",
        )
        assert status["phase"] == "Failed", (name, status)
        assert message in status["message"], (name, status["message"])
    assert jobs_in(kube_api, ns) == []
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    failed = {e.involved_object.name for e in events if e.reason == "Failed"}
    assert failed == {name for name, _, _ in cases}


async def test_a_tenant_not_bound_to_the_namespace_fails_the_batch_and_starts_nothing(
    operator, ns, kube_api, settings, tenant
):
    """Whoever may create FheBatches in some namespace cannot use another namespace's
    tenant: the batch fails at admission, naming the binding to ask for, and no Job runs."""
    a = await store_input(settings, tenant, 1, FheType.Uint8)
    other = f"t-{uuid.uuid4().hex[:8]}"  # a namespace the tenant is not bound to
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": other}})
    custom(kube_api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        other,
        PLURAL,
        batch(
            "intruder",
            {"inputs": {"a": a}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
        ),
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, other, "intruder", "Failed"),
        timeout=60,
        what="batch intruder to fail",
    )
    record, _ = tenant
    assert f"tenant {record.name!r} is not bound to namespace {other!r}" in status["message"], (
        status
    )
    assert f"fhectl tenant bind {record.name} --namespace {other}" in status["message"]
    assert jobs_in(kube_api, other) == []
    client.CoreV1Api(kube_api).delete_namespace(other)


@pytest.mark.parametrize(
    ("mutation", "fragment"),
    [
        ({"spec": {"tenant": "ops", "graph": {"nodes": []}, "color": "red"}}, "unknown field"),
        (
            {
                "spec": {
                    "tenant": "ops",
                    "device": "tpu",
                    "graph": {"nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
                }
            },
            "Unsupported value",
        ),
        (
            {
                "spec": {
                    "tenant": "ops",
                    "graph": {"nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
                    "source": {"transactions": ["0x" + "00" * 32]},
                }
            },
            "exactly one of spec.graph",
        ),
        (
            {
                "spec": {
                    "tenant": "ops",
                    "graph": {
                        "nodes": [
                            {"name": f"n{i}", "op": "FheNot", "args": ["a"]} for i in range(501)
                        ]
                    },
                }
            },
            "must have at most 500 items",
        ),
        (
            {
                "spec": {
                    "tenant": "ops",
                    "graph": {
                        "inputs": {"a": "0x12"},
                        "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}],
                    },
                }
            },
            "should match",
        ),
    ],
)
def test_the_api_server_rejects_structurally_wrong_batches(
    installed, kube_api, namespace, mutation, fragment
):
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FheBatch",
        "metadata": {"name": "wrong"},
        **mutation,
    }
    with pytest.raises(ApiException) as rejected:
        custom(kube_api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
        )
    assert rejected.value.status in (400, 422)
    assert fragment in rejected.value.body


async def test_bad_ciphertext_exit_3_fails_the_job_at_once(
    operator, ns, kube_api, settings, tenant
):
    record, client_ = tenant
    good = client_.encrypt(5, FheType.Uint8)
    envelope = Envelope.from_bytes(good)
    payload = bytearray(envelope.payload)
    payload[len(payload) // 2 : len(payload) // 2 + 64] = b"\xff" * 64
    broken = Envelope(
        envelope.backend, envelope.fhe_type, envelope.kind, envelope.key_digest, bytes(payload)
    ).to_bytes()
    handle = input_handle(broken, CHAIN_ID, int(FheType.Uint8))
    connection = await asyncpg.connect(settings.database_url)
    try:
        await queries.insert_ciphertext(connection, record.tenant_id, handle, broken, 0, 2)
    finally:
        await connection.close()
    graph = {
        "inputs": {"a": "0x" + handle.hex()},
        "nodes": [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": "1"}]}],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("corrupt", graph, retries={"backoffLimit": 3})
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "corrupt", "Failed", "Succeeded"),
        timeout=180,
        what="batch corrupt to finish",
    )
    assert status["phase"] == "Failed"
    assert "rejected by TFHE-rs" in status["message"], status["message"]
    assert status["stages"]["compute"]["attempts"] == 1  # exit 3: no retry
    assert status["computations"]["failed"] == 1


async def test_recoverable_exit_is_retried_then_succeeds(
    operator, ns, kube_api, settings, tenant, dev_stack
):
    core = client.CoreV1Api(kube_api)
    core.patch_namespaced_config_map(
        "fhe-coprocessor-config", ns, {"data": {"FHE_S3_ENDPOINT": "http://127.0.0.1:1"}}
    )  # S3 unreachable: exit 75
    a = await store_input(settings, tenant, 9, FheType.Uint8)
    graph = {
        "inputs": {"a": a},
        "nodes": [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": "1"}], "output": True}],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("retry", graph, retries={"backoffLimit": 3})
    )

    def first_attempt_waited():
        """A pod exited 75 (recoverable): the Job's failure policy ignores it, so it
        shows on the pod, not in the Job's failed count."""
        for pod in core.list_namespaced_pod(ns).items:
            for container in pod.status.container_statuses or []:
                terminated = container.state.terminated
                if terminated is not None and terminated.exit_code == 75:
                    return True
        return False

    await asyncio.to_thread(
        wait_for, first_attempt_waited, timeout=120, what="the first pod to exit recoverably"
    )
    assert not (jobs_in(kube_api, ns)[0].status.failed or 0)  # not counted against retries
    core.patch_namespaced_config_map(
        "fhe-coprocessor-config", ns, {"data": {"FHE_S3_ENDPOINT": dev_stack["FHE_S3_ENDPOINT"]}}
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "retry", "Failed", "Succeeded"),
        timeout=180,
        what="batch retry to finish",
    )
    assert status["phase"] == "Succeeded", status
    assert status["stages"]["compute"]["attempts"] >= 2
    assert await decrypt_output(settings, tenant, status["outputs"]["x"]) == 10


def chain_graph(a: str, length: int) -> dict:
    nodes = [{"name": "n0", "op": "FheMul", "args": ["a", {"scalar": "3"}]}]
    for i in range(1, length):
        nodes.append({"name": f"n{i}", "op": "FheMul", "args": [f"n{i - 1}", {"scalar": "3"}]})
    nodes[-1]["output"] = True
    return {"inputs": {"a": a}, "nodes": nodes}


async def test_operator_killed_mid_batch_converges_without_a_second_job(
    operator, ns, kube_api, settings, tenant
):
    a = await store_input(settings, tenant, 7, FheType.Uint16)
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("restart", chain_graph(a, 4))
    )
    await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "restart", "Computing"),
        timeout=60,
        what="batch restart to start computing",
    )
    (job,) = jobs_in(kube_api, ns)
    operator.kill()
    operator.start()
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "restart", "Succeeded", "Failed"),
        timeout=240,
        what="batch restart to finish",
    )
    assert status["phase"] == "Succeeded", status
    (again,) = jobs_in(kube_api, ns)
    assert again.metadata.uid == job.metadata.uid
    assert await decrypt_output(settings, tenant, status["outputs"]["n3"]) == (7 * 3**4) % 2**16


def job_processes(batch_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fhe-job" in b" ".join(cmdline) and batch_id.encode() in cmdline:
                found.append(int(entry.name))
    return found


async def test_deleting_a_batch_mid_run_stops_its_process(operator, ns, kube_api, settings, tenant):
    a = await store_input(settings, tenant, 5, FheType.Uint32)
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("doomed", chain_graph(a, 30))
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "doomed", "Computing"),
        timeout=60,
        what="batch doomed to start computing",
    )
    batch_id = status["batchId"]
    await asyncio.to_thread(
        wait_for, lambda: job_processes(batch_id), timeout=60, what="the compute process to start"
    )
    custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "doomed")
    await asyncio.to_thread(
        wait_for,
        lambda: not job_processes(batch_id),
        timeout=60,
        what="the compute process to stop",
    )
    await asyncio.to_thread(
        wait_for,
        lambda: not jobs_in(kube_api, ns),
        timeout=60,
        what="the Job to be garbage-collected",
    )

    def gone() -> bool:  # the finalizer (release in the database) has run
        try:
            get(kube_api, ns, "doomed")
        except ApiException as error:
            return error.status == 404
        return False

    await asyncio.to_thread(wait_for, gone, timeout=60, what="the finalizer to finish")
    connection = await asyncpg.connect(settings.database_url)
    try:
        released = await connection.fetchval(
            "SELECT released_at IS NOT NULL FROM batches WHERE batch_id = $1", batch_id
        )
    finally:
        await connection.close()
    assert released


async def test_a_suspended_batch_starts_no_job_until_resumed(
    operator, ns, kube_api, settings, tenant
):
    a = await store_input(settings, tenant, 41, FheType.Uint8)
    graph = {
        "inputs": {"a": a},
        "nodes": [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": "1"}], "output": True}],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("paused", graph, suspend=True, stages=["compute", "sns"])
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "paused", "Suspended"),
        timeout=60,
        what="batch paused to be suspended",
    )
    assert "suspended before stage compute" in status["message"]
    assert status["computations"]["total"] == 1  # admitted, not started
    assert jobs_in(kube_api, ns) == []
    custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "paused", {"spec": {"suspend": False}}
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "paused", "Succeeded", "Failed"),
        timeout=240,
        what="batch paused to finish after resuming",
    )
    assert status["phase"] == "Succeeded", status
    assert status["observedGeneration"] == 2
    (job,) = jobs_in(kube_api, ns)
    assert job.metadata.labels["fhe.coprocessor.dev/stages"] == "compute.sns"
    assert await decrypt_output(settings, tenant, status["outputs"]["x"]) == 42


async def test_a_compute_spread_over_pods_runs_alone_then_sns_in_its_own_job(
    operator, ns, kube_api, settings, tenant
):
    """parallelism 2: an Indexed compute Job of two pods, each computing its share; SNS
    runs once a batch, so it is not fused with them and gets a Job of its own."""
    a = await store_input(settings, tenant, 3, FheType.Uint8)
    graph = {
        "inputs": {"a": a},
        "nodes": [
            {"name": "x", "op": "FheAdd", "args": ["a", {"scalar": "1"}], "output": True},
            {"name": "y", "op": "FheAdd", "args": ["a", {"scalar": "2"}], "output": True},
        ],
    }
    custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("spread", graph, parallelism=2, stages=["compute", "sns"])
    )
    status = await asyncio.to_thread(
        wait_for,
        phase_in(kube_api, ns, "spread", "Succeeded", "Failed"),
        timeout=240,
        what="batch spread to finish",
    )
    assert status["phase"] == "Succeeded", status
    jobs = {j.metadata.labels["fhe.coprocessor.dev/stage"]: j for j in jobs_in(kube_api, ns)}
    assert set(jobs) == {"compute", "sns"}
    assert jobs["compute"].spec.completions == 2
    assert jobs["compute"].spec.completion_mode == "Indexed"
    assert "fhe.coprocessor.dev/stages" not in jobs["sns"].metadata.labels
    assert jobs["sns"].status.start_time >= jobs["compute"].status.completion_time
    assert await decrypt_output(settings, tenant, status["outputs"]["x"]) == 4
    assert await decrypt_output(settings, tenant, status["outputs"]["y"]) == 5


async def test_over_the_limit_batches_wait_in_admitted_and_start_by_priority(
    operator, ns, kube_api, settings, tenant
):
    """The operator under test allows 2 CPU batches at once (FHE_MAX_RUNNING_BATCHES_CPU)."""
    a = await store_input(settings, tenant, 3, FheType.Uint16)
    api = custom(kube_api)
    api.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("short", chain_graph(a, 2))
    )
    api.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("long", chain_graph(a, 24))
    )
    for name in ("short", "long"):
        await asyncio.to_thread(
            wait_for,
            phase_in(kube_api, ns, name, "Computing"),
            timeout=60,
            what=f"batch {name} to start computing",
        )
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, batch("low", chain_graph(a, 1)))
    api.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, batch("high", chain_graph(a, 1), priority=5)
    )
    for name in ("low", "high"):
        status = await asyncio.to_thread(
            wait_for,
            phase_in(kube_api, ns, name, "Admitted"),
            timeout=60,
            what=f"batch {name} to wait",
        )
        assert "waiting for capacity: 2 of 2 cpu batches running" in status["message"]

    def started(name: str) -> bool:
        return any(
            j.metadata.labels["fhe.coprocessor.dev/batch"] == name for j in jobs_in(kube_api, ns)
        )

    await asyncio.to_thread(
        wait_for,
        lambda: started("high"),
        timeout=240,
        what="the high-priority batch to start when short finishes",
    )
    assert get(kube_api, ns, "long")["status"]["phase"] == "Computing"
    low = get(kube_api, ns, "low")["status"]
    assert low["phase"] == "Admitted" and not started("low"), low
    for name in ("short", "long", "low", "high"):
        status = await asyncio.to_thread(
            wait_for,
            phase_in(kube_api, ns, name, "Succeeded", "Failed"),
            timeout=300,
            what=f"batch {name} to finish",
        )
        assert status["phase"] == "Succeeded", (name, status)


async def test_host_chain_transfer_to_decrypted_balances(
    operator, ns, kube_api, settings, tenant, dev_stack, gateway
):
    """The whole path: Zama's host contracts on anvil and a dapp on @fhevm/solidity ->
    host listener -> FheBatches -> operator -> compute, SNS and send Jobs -> balances that
    decrypt to the plaintext transfer, whose digests are committed on the gateway chain.
    The amount is an encrypted input (FHE.fromExternal) the dev coprocessor signer
    signed, so the real InputVerifier accepts it."""
    from pathlib import Path

    from web3 import Web3

    from coprocessor.db.pool import create_pool
    from devstack.host_chain import ensure_host_chain
    from listeners.host import HostListener
    from tests.hostchain import deploy_dapp, signed_input_proof

    w3 = Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))
    owner, alice, bob = w3.eth.accounts[:3]
    host = ensure_host_chain(w3, Path(dev_stack["FHE_STATE_DIR"]))
    token = deploy_dapp(w3, host, "ConfidentialToken")
    record, _ = tenant
    listener_settings = settings.model_copy(
        update={
            "host_tenant": record.name,
            "host_executor_address": host.executor,
            "host_acl_address": host.acl,
            "host_start_block": w3.eth.block_number + 1,
            "namespace": ns,
            "host_batch_stages": ["compute", "sns", "send"],
        }
    )
    signer_secret(kube_api, ns, gateway.signer)
    amount = bytes.fromhex((await store_input(settings, tenant, 300, FheType.Uint64))[2:])
    proof = signed_input_proof(host, [amount], alice, token.address)
    for call, sender in (
        (token.functions.mint(alice, 1000), owner),
        (token.functions.transfer(bob, amount, proof), alice),
    ):
        assert w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))["status"] == 1
    pool = await create_pool(listener_settings.database_url, size=2)
    try:
        listener = HostListener(listener_settings, w3, pool, custom(kube_api))
        await listener.start()
        await listener.poll()
    finally:
        await pool.close()
    names = [
        item["metadata"]["name"]
        for item in custom(kube_api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)[
            "items"
        ]
    ]
    assert len(names) == 2  # the mint block and the transfer block
    for name in names:
        status = await asyncio.to_thread(
            wait_for,
            phase_in(kube_api, ns, name, "Succeeded", "Failed"),
            timeout=300,
            what=f"batch {name} to finish",
        )
        assert status["phase"] == "Succeeded", (name, status)
    balances = {who: "0x" + token.functions.balanceOf(who).call().hex() for who in (alice, bob)}
    assert await decrypt_output(settings, tenant, balances[alice]) == 700
    assert await decrypt_output(settings, tenant, balances[bob]) == 300
    # The token allows the balances (FHE.allow): they were published and committed, and
    # the send stage relayed the allow to the gateway's MultichainACL.
    for who in (alice, bob):
        assert gateway.submitted(balances[who]), who
        handle = bytes.fromhex(balances[who][2:])
        assert gateway.acl.functions.isAccountAllowed(handle, who).call(), who
