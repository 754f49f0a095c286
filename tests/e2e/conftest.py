"""Kubernetes clients and a namespace per test on the real control plane."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from coprocessor.api.crd import crd
from tests.paths import REPO_ROOT

GROUP, PLURAL = "fhe.coprocessor.dev", "fhebatches"


@pytest.fixture(scope="session")
def kube_api(kube_cluster) -> client.ApiClient:
    return config.new_client_from_config(kube_cluster["KUBECONFIG"])


@pytest.fixture
def namespace(kube_api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_for(
        lambda: core.list_namespaced_service_account(name).items,
        timeout=30,
        what=f"default service account in {name}",
    )
    yield name
    core.delete_namespace(name)


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``check()`` is truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def apply(kube_api, manifest: dict) -> None:
    kind = manifest["kind"]
    if kind == "CustomResourceDefinition":
        ext = client.ApiextensionsV1Api(kube_api)
        try:
            ext.create_custom_resource_definition(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            current = ext.read_custom_resource_definition(manifest["metadata"]["name"])
            manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(manifest["metadata"]["name"], manifest)
        return
    rbac = client.RbacAuthorizationV1Api(kube_api)
    create = {
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
    }[kind]
    try:
        create(manifest)
    except ApiException as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="session")
def installed(kube_api):
    """CRD and RBAC, as the chart would install them."""
    apply(kube_api, crd())
    for manifest in yaml.safe_load_all((REPO_ROOT / "config/operator-rbac.yaml").read_text()):
        apply(kube_api, manifest)
    ext = client.ApiextensionsV1Api(kube_api)

    def established():
        status = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}").status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_for(established, timeout=30, what="the FheBatch CRD to be established")
    return True


async def store_input(settings, tenant, value: int, fhe_type, chain_id: int = 12345) -> str:
    """Encrypt ``value`` with the tenant's client key and store it as an input
    ciphertext; returns its handle as 0x hex (what a graph's inputs name)."""
    import asyncpg

    from coprocessor.db import queries
    from coprocessor.tenants import input_handle

    record, client_ = tenant
    ciphertext = client_.encrypt(value, fhe_type)
    handle = input_handle(ciphertext, chain_id, int(fhe_type))
    connection = await asyncpg.connect(settings.database_url)
    try:
        await queries.insert_ciphertext(
            connection, record.tenant_id, handle, ciphertext, 0, int(fhe_type)
        )
    finally:
        await connection.close()
    return "0x" + handle.hex()


async def decrypt_output(settings, tenant, handle_hex: str) -> int:
    """The plaintext of a stored ciphertext, decrypted with the tenant's client key."""
    import asyncpg

    from coprocessor.db import queries

    record, client_ = tenant
    connection = await asyncpg.connect(settings.database_url)
    try:
        stored = await queries.get_ciphertexts(
            connection, record.tenant_id, [bytes.fromhex(handle_hex[2:])]
        )
    finally:
        await connection.close()
    return client_.decrypt(next(iter(stored.values())).ciphertext)
