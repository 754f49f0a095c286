"""Certificates and kubeconfigs for the local control plane, made with openssl.

One CA signs the API server's serving certificate and a client certificate per
identity. Everything is generated once per state directory and reused, so a restarted
stack keeps its credentials (and existing kubeconfigs keep working).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

from coprocessor.errors import Fatal

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
API_SERVICE_IP = "10.0.0.1"

# identity file name -> (common name, organisation)
CLIENTS = {
    "admin": ("kubernetes-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "node-agent": ("fhe-node-agent", "system:masters"),
    # The operator is NOT an admin: config/operator-rbac.yaml binds this user.
    "fhe-operator": ("fhe-operator", None),
}


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise Fatal(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def ensure_pki(directory: Path) -> Path:
    """Create the CA, serving and client certificates and the service-account key."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for ca, subject in (("ca", "/CN=fhe-dev-ca"), ("front-proxy-ca", "/CN=fhe-front-proxy-ca")):
        _ensure_ca(directory, ca, subject)
    # The aggregation layer's client: without it the controller-manager and scheduler
    # log "missing content for CA bundle ... requestheader-client-ca-file" forever.
    if not (directory / "front-proxy-client.crt").exists():
        _sign(
            directory,
            "front-proxy-client",
            "/CN=front-proxy-client",
            "extendedKeyUsage=clientAuth",
            ca="front-proxy-ca",
        )
    if not (directory / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    if not (directory / "apiserver.crt").exists():
        sans = (
            "subjectAltName=IP:127.0.0.1,IP:" + API_SERVICE_IP + ",DNS:localhost,"
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local"
        )
        _sign(directory, "apiserver", "/CN=kube-apiserver", sans)
    for name, (common_name, organisation) in CLIENTS.items():
        if not (directory / f"{name}.crt").exists():
            subject = f"/CN={common_name}" + (f"/O={organisation}" if organisation else "")
            _sign(directory, name, subject, "extendedKeyUsage=clientAuth")
    return directory


def _ensure_ca(directory: Path, ca: str, subject: str) -> None:
    if not (directory / f"{ca}.crt").exists():
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "3650",
            "-subj",
            subject,
            cwd=directory,
        )


def ensure_serving_cert(directory: Path, service: str, sans: str) -> tuple[Path, Path, Path]:
    """A CA of its own and a serving certificate for ``service`` signed by it (once per
    directory): (ca.crt, <service>.crt, <service>.key). Clients verify the server with
    ca.crt (libpq's sslrootcert)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _ensure_ca(directory, "ca", f"/CN=fhe-dev-{service}-ca")
    if not (directory / f"{service}.crt").exists():
        _sign(directory, service, f"/CN={service}", f"subjectAltName={sans}")
    return directory / "ca.crt", directory / f"{service}.crt", directory / f"{service}.key"


def _sign(directory: Path, name: str, subject: str, extension: str, ca: str = "ca") -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text(extension + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "3650",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


def write_kubeconfig(path: Path, pki: Path, identity: str, server: str) -> Path:
    def data(file: str) -> str:
        return base64.b64encode((pki / file).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fhe-dev",
        "clusters": [
            {
                "name": "fhe-dev",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": identity,
                "user": {
                    "client-certificate-data": data(f"{identity}.crt"),
                    "client-key-data": data(f"{identity}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "fhe-dev",
                "context": {"cluster": "fhe-dev", "user": identity, "namespace": "default"},
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
