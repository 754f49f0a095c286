"""The local Kubernetes control plane: etcd, kube-apiserver (RBAC on),
kube-controller-manager (Job controller, garbage collector, ...), kube-scheduler,
all built from their Go modules by scripts/build-k8s, plus our node agent
(devstack.node_agent) standing in for the kubelet.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from coprocessor.errors import UserError

from . import process
from .component import Info
from .pki import SERVICE_CLUSTER_IP_RANGE, ensure_pki, write_kubeconfig
from .versions import kubernetes_bin_dir, kubernetes_version

PROCESSES = ("etcd", "apiserver", "controller-manager", "scheduler", "node-agent")
EXPECT = {
    "etcd": "etcd",
    "apiserver": "kube-apiserver",
    "controller-manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
    "node-agent": "node_agent",
}


def _api_get(info: Info, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    pki = Path(info["pki"])
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{info['apiserver_port']}{path}", timeout=timeout, context=context
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.loads(response.read()).get("health") == "true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ready_nodes(info: Info) -> list[str]:
    status, body = _api_get(info, "/api/v1/nodes")
    if status != 200:
        return []
    ready = []
    for node in json.loads(body)["items"]:
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            ready.append(node["metadata"]["name"])
    return ready


class KubeControlPlane:
    name = "kube"

    def __init__(self, gpu_nodes: int = 1, gpus_per_node: int = 2, cpu_nodes: int = 1) -> None:
        self.gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self.cpu_nodes = cpu_nodes

    def up(self, state_dir: Path, previous: Info | None) -> Info:
        if previous and self.health(previous)["healthy"]:
            return previous
        if previous:
            self.down(previous)  # half-alive: restart every part, data stays in etcd
        bin_dir = kubernetes_bin_dir()
        missing = [
            b
            for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
            if not (bin_dir / b).exists()
        ]
        if missing:
            raise UserError(
                f"Kubernetes binaries {missing} are not built; run `make setup` (scripts/build-k8s)"
            )
        base = state_dir / "kube"
        pki = ensure_pki(base / "pki")
        ports = {
            key: process.free_port()
            for key in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler")
        }
        if previous:  # keep the API address stable so existing kubeconfigs still work
            for key in ports:
                old = previous.get(f"{key}_port")
                if old and not process.port_is_open(old):
                    ports[key] = old
        server = f"https://127.0.0.1:{ports['apiserver']}"
        kubeconfigs = {
            identity: write_kubeconfig(base / f"{identity}.kubeconfig", pki, identity, server)
            for identity in (
                "admin",
                "controller-manager",
                "scheduler",
                "node-agent",
                "fhe-operator",
            )
        }
        info: Info = {
            "pki": str(pki),
            "kubeconfig": str(kubeconfigs["admin"]),
            "operator_kubeconfig": str(kubeconfigs["fhe-operator"]),
            "version": kubernetes_version(),
            "pids": {},
            "logs": str(base / "logs"),
        }
        info.update({f"{key}_port": port for key, port in ports.items()})
        logs = base / "logs"

        def start(name: str, argv: list[str]) -> int:
            pid = process.spawn(argv, logs / f"{name}.log")
            info["pids"][name] = pid
            return pid

        pid = start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name",
                "fhe-dev",
                "--data-dir",
                str(base / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{ports['etcd']}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{ports['etcd']}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{ports['etcd_peer']}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{ports['etcd_peer']}",
                "--initial-cluster",
                f"fhe-dev=http://127.0.0.1:{ports['etcd_peer']}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        process.wait_until(
            lambda: _etcd_healthy(ports["etcd"]),
            timeout=60,
            service="kube/etcd",
            log_path=logs / "etcd.log",
            pid=pid,
        )

        pid = start(
            "apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                "--etcd-servers",
                f"http://127.0.0.1:{ports['etcd']}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(ports["apiserver"]),
                "--tls-cert-file",
                str(pki / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki / "apiserver.key"),
                "--client-ca-file",
                str(pki / "ca.crt"),
                "--service-account-key-file",
                str(pki / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range",
                SERVICE_CLUSTER_IP_RANGE,
                "--authorization-mode",
                "RBAC",
                "--allow-privileged=true",
                # A loopback advertise address is not a valid Endpoints IP; without this the
                # apiserver logs an error every 10 s.
                "--endpoint-reconciler-type=none",
                "--requestheader-client-ca-file",
                str(pki / "front-proxy-ca.crt"),
                "--requestheader-allowed-names",
                "front-proxy-client",
                "--requestheader-username-headers",
                "X-Remote-User",
                "--requestheader-group-headers",
                "X-Remote-Group",
                "--requestheader-extra-headers-prefix",
                "X-Remote-Extra-",
                "--proxy-client-cert-file",
                str(pki / "front-proxy-client.crt"),
                "--proxy-client-key-file",
                str(pki / "front-proxy-client.key"),
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--event-ttl",
                "1h",
            ],
        )
        process.wait_until(
            lambda: _api_get(info, "/readyz")[0] == 200,
            timeout=120,
            service="kube/apiserver",
            log_path=logs / "apiserver.log",
            pid=pid,
        )

        for name, binary, extra in (
            (
                "controller-manager",
                "kube-controller-manager",
                [
                    "--controllers",
                    "*",
                    "--use-service-account-credentials=true",
                    "--service-account-private-key-file",
                    str(pki / "sa.key"),
                    "--root-ca-file",
                    str(pki / "ca.crt"),
                    "--cluster-signing-cert-file",
                    str(pki / "ca.crt"),
                    "--cluster-signing-key-file",
                    str(pki / "ca.key"),
                    "--secure-port",
                    str(ports["controller_manager"]),
                ],
            ),
            ("scheduler", "kube-scheduler", ["--secure-port", str(ports["scheduler"])]),
        ):
            kubeconfig = str(kubeconfigs[name])
            start(
                name,
                [
                    str(bin_dir / binary),
                    "--kubeconfig",
                    kubeconfig,
                    "--authentication-kubeconfig",
                    kubeconfig,
                    "--authorization-kubeconfig",
                    kubeconfig,
                    "--bind-address",
                    "127.0.0.1",
                    "--leader-elect=false",
                    *extra,
                ],
            )

        venv_bin = str(Path(sys.executable).parent)
        start(
            "node-agent",
            [
                sys.executable,
                "-m",
                "devstack.node_agent",
                "--kubeconfig",
                str(kubeconfigs["node-agent"]),
                "--state-dir",
                str(base),
                "--gpu-nodes",
                str(self.gpu_nodes),
                "--gpus-per-node",
                str(self.gpus_per_node),
                "--cpu-nodes",
                str(self.cpu_nodes),
                "--path",
                f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            ],
        )
        expected = self.gpu_nodes + self.cpu_nodes
        process.wait_until(
            lambda: len(ready_nodes(info)) >= expected,
            timeout=120,
            service="kube/node-agent",
            log_path=logs / "node-agent.log",
            pid=info["pids"]["node-agent"],
        )
        return info

    def down(self, info: Info) -> None:
        for name in reversed(PROCESSES):
            process.stop(info.get("pids", {}).get(name), expect=EXPECT[name])

    def health(self, info: Info) -> Info:
        pids = info.get("pids", {})
        alive = {name: process.is_running(pids.get(name), EXPECT[name]) for name in PROCESSES}
        api_ready = alive["apiserver"] and _api_get(info, "/readyz")[0] == 200
        nodes = ready_nodes(info) if api_ready else []
        healthy = all(alive.values()) and api_ready and len(nodes) >= 1
        return {
            "healthy": healthy,
            "processes": alive,
            "api_ready": api_ready,
            "ready_nodes": nodes,
            "version": info.get("version"),
            "server": f"https://127.0.0.1:{info.get('apiserver_port')}",
            "kubeconfig": info.get("kubeconfig"),
        }

    def env(self, info: Info) -> dict[str, str]:
        return {"KUBECONFIG": info["kubeconfig"], "FHE_KUBECONFIG": info["kubeconfig"]}


def operator_kubeconfig(info: Info) -> Path:
    """A kubeconfig for the ``fhe-operator`` user (limited by config/operator-rbac.yaml);
    made on demand for a control plane started before this identity existed."""
    base = Path(info["kubeconfig"]).parent
    pki = ensure_pki(Path(info["pki"]))
    return write_kubeconfig(
        base / "fhe-operator.kubeconfig",
        pki,
        "fhe-operator",
        f"https://127.0.0.1:{info['apiserver_port']}",
    )
