"""Kubernetes clients and a namespace per test on the real control plane."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config


@pytest.fixture(scope="session")
def kube_api(kube_cluster) -> client.ApiClient:
    return config.new_client_from_config(kube_cluster["KUBECONFIG"])


@pytest.fixture
def namespace(kube_api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_for(lambda: core.list_namespaced_service_account(name).items, timeout=30,
             what=f"default service account in {name}")
    yield name
    core.delete_namespace(name)


def wait_for(check: Callable[[], Any], *, timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll until ``check()`` is truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
