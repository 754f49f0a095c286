"""One way to reach the Kubernetes API: the configured kubeconfig, else the in-cluster
service account, else the default kubeconfig (``~/.kube/config``, ``KUBECONFIG``).

The operator, the host listener and fhectl all go through ``api_client``, so a
deployment and a laptop resolve credentials the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def api_client(kubeconfig: Path | None) -> ApiClient:
    """A fresh ``ApiClient``; never touches the kubernetes package's global default.

    Raises ``ConfigError`` (fatal: the deployment is misconfigured) when no source of
    credentials works, naming what was tried."""
    from kubernetes import client, config

    try:
        if kubeconfig is not None:
            return config.new_client_from_config(str(kubeconfig))
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            return config.new_client_from_config()
    except (config.ConfigException, OSError) as error:
        where = str(kubeconfig) if kubeconfig else "in-cluster service account or ~/.kube/config"
        raise ConfigError(f"no usable Kubernetes credentials ({where}): {error}") from None
