"""A node agent for the local control plane: it stands in for the kubelet and the
container runtime, and for nothing else.

The API server, the scheduler and the Job, ReplicaSet and Deployment controllers are
the real ones; this agent registers Nodes (GPU nodes with ``nvidia.com/gpu`` capacity,
label and NoSchedule taint, and CPU nodes), keeps them Ready with Lease heartbeats, and
runs every pod bound to them as a local process:

* the first container's ``command`` + ``args`` (with ``$(VAR)`` expansion) is run with
  the container's ``env``/``envFrom`` (plain values, ``secretKeyRef``,
  ``configMapKeyRef`` and ``fieldRef``) on top of a minimal base environment (PATH,
  HOME, LANG, HOSTNAME) and the API server's service variables
  (``KUBERNETES_SERVICE_HOST``/``_PORT``/``_PORT_HTTPS``, ``KUBERNETES_PORT*``), which
  name the API server's real address (127.0.0.1 and its secure port);
* every pod gets its own address on loopback, ``127.<block>.x.y`` (the block is one
  /16 per agent, claimed with a lock file under /tmp/fhe-node-agent so two stacks on
  one machine never hand out the same address), reported as ``status.podIP``/
  ``podIPs`` and by the ``status.podIP`` fieldRef, released when the pod is removed;
  ``hostIP`` is 127.0.0.1, and so is the pod IP of a ``hostNetwork`` pod. Two replicas
  can thus listen on the same port, each on its own pod IP;
* the pod's ServiceAccount token is projected as the kubelet does it: unless
  ``automountServiceAccountToken`` is false (on the pod, else on its ServiceAccount),
  a token bound to the pod (TokenRequest API, API server audience, 1 h, renewed at 80 %
  of its life) is written with the cluster CA (``ca.crt``) and ``namespace`` into a
  per-pod directory, mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount,
  so ``load_incluster_config()`` and kopf's in-cluster login work. A pod whose
  ServiceAccount does not exist yet stays Pending (ContainerCreating) and is retried;
* ``readinessProbe``, ``livenessProbe`` and ``startupProbe`` of type ``httpGet``
  (numbered or named port, path, headers, host default the pod IP, HTTP or HTTPS
  without verification) and ``tcpSocket`` run in one thread per probing container
  with the Kubernetes defaults and thresholds (so a server is probed on its pod IP: it
  must listen there or on 0.0.0.0, not on 127.0.0.1): readiness drives the ``Ready``/
  ``ContainersReady`` conditions and ``containerStatuses[0].ready`` (a pod with a
  readiness probe starts not ready), a failed liveness or startup probe restarts the
  process (SIGTERM, grace, SIGKILL) as ``restartPolicy`` says; status is patched only
  when it changes;
* the pod goes Running, then Succeeded or Failed with the exit code and the
  termination message the process wrote at ``terminationMessagePath``;
* ``restartPolicy`` OnFailure/Always restarts the process in place (restartCount + 1,
  ``lastState``, CrashLoopBackOff while it waits);
* GPUs of a node are handed out per pod as ``CUDA_VISIBLE_DEVICES``/
  ``NVIDIA_VISIBLE_DEVICES`` indices, as a device plugin would;
* a deleted pod's process gets SIGTERM, then SIGKILL after the grace period, and the
  pod is then removed (the kubelet's final delete);
* each pod's output goes to ``<state>/pods/<namespace>_<name>_<uid>.log``.

When the agent runs as root, each process gets a private mount namespace in which the
per-pod termination message file is bind-mounted at ``terminationMessagePath`` (pods
never share /dev/termination-log) and the token directory (or, with automount off, an
empty directory) at the ServiceAccount path. Not as root there is no such namespace:
the files are still written under the pod's directory but not mounted.

What it does NOT do: pull or run images (the command must exist on this machine),
enforce resource limits or isolation beyond the mount namespace (pod IPs are addresses
on the host's loopback: any process can reach any port on any of them, and a pod that
binds 127.0.0.1 shares it with every other), Services (no kube-proxy: a ClusterIP
routes nowhere, and the API server refuses loopback addresses in Endpoints and
EndpointSlices, so a Service's slices stay empty and the controller-manager logs
FailedToUpdateEndpointSlices), cluster DNS (``kubernetes.default.svc`` does not
resolve: use ``KUBERNETES_SERVICE_HOST``/``_PORT``), ``exec`` and ``grpc`` probes
(logged once and counted as successes),
init or sidecar containers, volumes other than the ServiceAccount token,
``kubectl logs``/``exec`` (no kubelet API), or re-adopt processes after its own
restart: when it stops it ends its pods' processes, and an agent started later marks
pods it finds Running Failed, reason NodeAgentRestarted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import http.client
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("node-agent")

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_S = 10.0
RESYNC_S = 5.0
MESSAGE_LIMIT = 4096
AGENT_VERSION = "v0.1.0-fhe-node-agent"
HOST_IP = "127.0.0.1"
# One /16 of 127.0.0.0/8 per agent; the lock files make two agents on one machine
# (the dev stack and a test session's own) take different ones.
POD_IP_LOCK_DIR = Path("/tmp/fhe-node-agent")
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3600
TOKEN_CHECK_S = 30.0
RESTART_BACKOFF_MAX_S = 30
SHUTDOWN_GRACE_S = 5  # per pod when the agent stops; the stack gives the agent 15 s


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(moment: dt.datetime | None = None) -> str:
    return (moment or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- nodes (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int = 0
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"

    @property
    def capacity(self) -> dict[str, str]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
        return capacity


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "fhe.coprocessor.dev/node-agent": "true",
        "fhe.coprocessor.dev/device": "gpu" if spec.gpus else "cpu",
    }
    node_spec: dict[str, Any] = {}
    if spec.gpus:
        labels["nvidia.com/gpu.present"] = "true"
        node_spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": node_spec,
    }


def node_status(spec: NodeSpec, moment: dt.datetime) -> dict[str, Any]:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "NodeAgentReady",
        "message": "fhe node agent is posting ready status",
        "lastHeartbeatTime": stamp(moment),
        "lastTransitionTime": stamp(moment),
    }
    pressure = [
        {
            "type": kind,
            "status": "False",
            "reason": "NodeAgentHasNo" + kind,
            "lastHeartbeatTime": stamp(moment),
            "lastTransitionTime": stamp(moment),
        }
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    return {
        "status": {
            "capacity": spec.capacity,
            "allocatable": spec.capacity,
            "conditions": [ready, *pressure],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "nodeInfo": {
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": AGENT_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://fhe-node-agent",
                "osImage": "host",
                "kernelVersion": os.uname().release,
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": spec.name,
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }
    }


# --- pod addresses (pure) --------------------------------------------------------------


def claim_ip_block(lock_dir: Path, wanted: int = 0) -> tuple[int, int]:
    """The second octet of this agent's /16 in 127.0.0.0/8 and the open file descriptor
    of its lock, held for the agent's life (the kernel drops it when the agent dies).
    ``wanted`` 0 takes the first block no other live agent holds."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        lock_dir.chmod(0o1777)  # agents of other users take their blocks here too
    for block in [wanted] if wanted else range(1, 255):
        descriptor = os.open(lock_dir / f"127.{block}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            continue
        return block, descriptor
    raise RuntimeError(f"no free pod address block 127.N.0.0/16 (locks in {lock_dir})")


class PodIPs:
    """The addresses ``127.<block>.x.y`` (y from 1 to 254) of the agent's live pods.
    Addresses are handed out round-robin, so a removed pod's address is the last to be
    given again (a stale client does not reach a new pod at once)."""

    PER_ROW = 254
    CAPACITY = 256 * PER_ROW

    def __init__(self, block: int) -> None:
        if not 1 <= block <= 254:
            raise ValueError(f"pod address block must be 1..254, not {block}")
        self.block = block
        self.by_uid: dict[str, str] = {}
        self.next = 0

    def address(self, index: int) -> str:
        row, column = divmod(index, self.PER_ROW)
        return f"127.{self.block}.{row}.{column + 1}"

    def allocate(self, uid: str) -> str:
        if uid in self.by_uid:
            return self.by_uid[uid]
        used = set(self.by_uid.values())
        for step in range(self.CAPACITY):
            index = (self.next + step) % self.CAPACITY
            candidate = self.address(index)
            if candidate not in used:
                self.next = (index + 1) % self.CAPACITY
                self.by_uid[uid] = candidate
                return candidate
        raise RuntimeError(f"all {self.CAPACITY} pod addresses of 127.{self.block}/16 in use")

    def release(self, uid: str) -> None:
        self.by_uid.pop(uid, None)


# --- pods (pure) -----------------------------------------------------------------------

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown names stay as written, ``$$`` escapes."""
    parts = text.split("$$")
    expanded = [_VAR.sub(lambda m: env.get(m[1], m[0]), part) for part in parts]
    return "$".join(expanded)


def field_value(pod: dict[str, Any], path: str, pod_ip: str | None = None) -> str:
    """A ``fieldRef``; ``pod_ip`` is the address the agent gave the pod (its status
    may not say so yet when the process starts)."""
    metadata = pod.get("metadata", {})
    ip = pod_ip or (pod.get("status") or {}).get("podIP") or HOST_IP
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
        "status.podIP": ip,
        "status.podIPs": ip,
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match[1]) or {}).get(match[2], ""))
    raise ValueError(f"unsupported fieldRef {path!r}")


class EnvError(Exception):
    """The pod's env cannot be built (missing secret key...); the pod cannot start."""


def build_env(
    pod: dict[str, Any], container: dict[str, Any], lookup, pod_ip: str | None = None
) -> dict[str, str]:
    """The container's environment. ``lookup(kind, namespace, name)`` returns a
    Secret's or ConfigMap's data as str -> str, or None if it does not exist."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref:
                data = lookup(kind, namespace, ref["name"])
                if data is None and not ref.get("optional"):
                    raise EnvError(f"{kind} {ref['name']} not found")
                prefix = source.get("prefix", "")
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(item.get("value") or "", env)
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
            continue
        for kind, ref_key in (("secretKeyRef", "secretRef"), ("configMapKeyRef", "configMapRef")):
            ref = source.get(kind)
            if ref:
                data = lookup(ref_key, namespace, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    raise EnvError(f"{kind} {ref['name']}/{ref['key']} not found for {name}")
                env[name] = data[ref["key"]]
                break
        else:
            if source:
                raise EnvError(f"unsupported valueFrom for {name}: {sorted(source)}")
    return env


def api_address(server: str) -> tuple[str, int]:
    """Host and port of the API server URL in a kubeconfig."""
    parts = urllib.parse.urlsplit(server)
    if not parts.hostname:
        raise ValueError(f"no host in API server address {server!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def api_service_env(host: str, port: int) -> dict[str, str]:
    """The variables the kubelet gives every container for the ``kubernetes`` Service,
    here naming the API server itself (there is no Service IP to route)."""
    url = f"tcp://{host}:{port}"
    prefix = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        prefix: url,
        f"{prefix}_PROTO": "tcp",
        f"{prefix}_PORT": str(port),
        f"{prefix}_ADDR": host,
    }


def process_env(
    *,
    base_path: str,
    home: str,
    hostname: str,
    container_env: dict[str, str],
    api: tuple[str, int] | None = None,
    gpus: list[int] | None = None,
) -> dict[str, str]:
    """The whole environment of a pod's process: base, then the API server's service
    variables, then the container's own env (which wins, as on a kubelet), then the
    GPUs handed out."""
    env = {"PATH": base_path, "HOME": home, "LANG": "C.UTF-8", "HOSTNAME": hostname}
    if api is not None:
        env.update(api_service_env(*api))
    env.update(container_env)
    if gpus:
        visible = ",".join(str(g) for g in gpus)
        env.update(CUDA_VISIBLE_DEVICES=visible, NVIDIA_VISIBLE_DEVICES=visible)
    return env


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    command = container.get("command") or []
    if not command:
        raise EnvError("the container has no command; images are not run by this agent")
    return [expand(part, env) for part in [*command, *(container.get("args") or [])]]


_MOUNT_SCRIPT = (
    "set -e; "
    'while [ "$1" != -- ]; do '
    'mount --bind "$2" "$3"; '
    'if [ "$1" = ro ]; then mount -o remount,bind,ro "$3"; fi; '
    "shift 3; "
    "done; "
    'shift; exec "$@"'
)


def private_mounts_argv(argv: list[str], mounts: list[tuple[str, str, bool]]) -> list[str]:
    """``argv`` run in a private mount namespace after bind-mounting each
    ``(source, target, read_only)``; the targets must exist."""
    spec: list[str] = []
    for source, target, read_only in mounts:
        spec += ["ro" if read_only else "rw", source, target]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        _MOUNT_SCRIPT,
        "sh",
        *spec,
        "--",
        *argv,
    ]


def gpu_request(container: dict[str, Any]) -> int:
    resources = container.get("resources") or {}
    value = (
        (resources.get("limits") or {}).get(GPU_RESOURCE)
        or (resources.get("requests") or {}).get(GPU_RESOURCE)
        or 0
    )
    return int(value)


# --- service account tokens (pure) -----------------------------------------------------


def service_account_name(pod: dict[str, Any]) -> str:
    spec = pod.get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def automounts_token(pod_setting: bool | None, account_setting: bool | None) -> bool:
    """The pod's ``automountServiceAccountToken`` wins; else its ServiceAccount's; else
    the token is mounted."""
    if pod_setting is not None:
        return pod_setting
    return account_setting is not False


def token_request(pod: dict[str, Any], seconds: int = TOKEN_SECONDS) -> dict[str, Any]:
    """A TokenRequest for the pod's ServiceAccount, bound to the pod (the token dies with
    it), for the API server's own audience (empty audiences: the server's default)."""
    metadata = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [],
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        },
    }


def refresh_delay(issued: dt.datetime, expires: dt.datetime) -> float:
    """Seconds until a token is renewed: at 80 % of its life, as the kubelet does,
    and at least daily."""
    life = max((expires - issued).total_seconds(), 0.0)
    return min(0.8 * life, 24 * 3600.0)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o644)
    os.replace(temporary, path)


def write_service_account(directory: Path, token: str, ca: bytes, namespace: str) -> Path:
    """The projected ``kube-api-access`` volume's files. Each one is replaced
    atomically, so a reader never sees half a renewed token."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    _write_atomically(directory / "ca.crt", ca)
    _write_atomically(directory / "namespace", namespace.encode())
    _write_atomically(directory / "token", token.encode())
    return directory


# --- probes (pure, but for running one) ------------------------------------------------

PROBE_KINDS = {
    "startup": "startupProbe",
    "readiness": "readinessProbe",
    "liveness": "livenessProbe",
}


@dataclass(frozen=True)
class Probe:
    """One container probe with the Kubernetes defaults filled in."""

    kind: str  # startup | readiness | liveness
    action: str  # httpGet | tcpSocket | exec | grpc
    port: int | None = None
    host: str | None = None  # None: the pod IP
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    grace: int | None = None  # the probe's terminationGracePeriodSeconds
    error: str | None = None  # why it can never succeed (a named port not declared)


def resolve_port(port: Any, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for declared in container.get("ports") or []:
        if declared.get("name") == text:
            return int(declared["containerPort"])
    raise ValueError(f"port {text!r} is not a named port of container {container.get('name')}")


def parse_probe(kind: str, raw: dict[str, Any], container: dict[str, Any]) -> Probe:
    action = next((a for a in ("httpGet", "tcpSocket", "exec", "grpc") if raw.get(a)), "exec")
    handler = raw.get(action) or {}
    port: int | None = None
    error = None
    if action in ("httpGet", "tcpSocket", "grpc"):
        try:
            port = resolve_port(handler.get("port"), container)
        except (ValueError, TypeError) as problem:
            error = str(problem)
    successes = int(raw.get("successThreshold") or 1)
    grace = raw.get("terminationGracePeriodSeconds")
    return Probe(
        kind=kind,
        action=action,
        port=port,
        host=handler.get("host") or None,
        path=handler.get("path") or "/",
        scheme=(handler.get("scheme") or "HTTP").upper(),
        headers=tuple((h["name"], h.get("value", "")) for h in handler.get("httpHeaders") or []),
        initial_delay=float(raw.get("initialDelaySeconds") or 0),
        period=float(raw.get("periodSeconds") or 10),
        timeout=float(raw.get("timeoutSeconds") or 1),
        # Liveness and startup probes must have successThreshold 1 (API validation).
        success_threshold=successes if kind == "readiness" else 1,
        failure_threshold=int(raw.get("failureThreshold") or 3),
        grace=None if grace is None else int(grace),
        error=error,
    )


def container_probes(container: dict[str, Any]) -> dict[str, Probe]:
    return {
        kind: parse_probe(kind, container[key], container)
        for kind, key in PROBE_KINDS.items()
        if container.get(key)
    }


@dataclass
class ProbeTracker:
    """A probe's thresholds, as the kubelet's prober worker counts them."""

    success_threshold: int
    failure_threshold: int
    last: bool | None = None
    run: int = 0

    def observe(self, ok: bool) -> bool | None:
        """The probe's settled result after this outcome, or None while the
        consecutive outcomes have not reached their threshold yet."""
        if ok == self.last:
            self.run += 1
        else:
            self.last, self.run = ok, 1
        needed = self.success_threshold if ok else self.failure_threshold
        return ok if self.run >= needed else None


def run_probe(probe: Probe, pod_ip: str) -> tuple[bool, str]:
    """Probe once: (success, what was seen)."""
    if probe.error:
        return False, probe.error
    if probe.action in ("exec", "grpc"):
        return True, f"{probe.action} probes are not run by this agent"
    host = probe.host or pod_ip
    assert probe.port is not None
    try:
        if probe.action == "tcpSocket":
            try:
                with socket.create_connection((host, probe.port), timeout=probe.timeout):
                    return True, f"connected to {host}:{probe.port}"
            except OSError as error:
                return False, f"connect {host}:{probe.port}: {error}"
        connection: http.client.HTTPConnection
        if probe.scheme == "HTTPS":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify either
            connection = http.client.HTTPSConnection(
                host, probe.port, timeout=probe.timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, probe.port, timeout=probe.timeout)
        try:
            headers = {"User-Agent": "kube-probe/fhe-node-agent", "Accept": "*/*"}
            headers.update(dict(probe.headers))
            connection.request("GET", probe.path, headers=headers)
            response = connection.getresponse()
            response.read(10 * 1024)
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as error:
        return False, f"{probe.scheme} GET {host}:{probe.port}{probe.path}: {error}"
    # As the kubelet: 2xx and 3xx succeed (a redirect is not followed).
    return 200 <= response.status < 400, f"HTTP {response.status}"


# --- pod status bodies (pure) ----------------------------------------------------------


def _readiness_conditions(ready: bool, moment: dt.datetime, name: str) -> list[dict[str, Any]]:
    conditions = []
    for kind in ("Ready", "ContainersReady"):
        condition: dict[str, Any] = {
            "type": kind,
            "status": "True" if ready else "False",
            "lastTransitionTime": stamp(moment),
        }
        if not ready:
            condition["reason"] = "ContainersNotReady"
            condition["message"] = f"containers with unready status: [{name}]"
        conditions.append(condition)
    return conditions


def _container_status(
    container: dict[str, Any],
    state: dict[str, Any],
    *,
    ready: bool,
    started: bool,
    restarts: int,
    last_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": started,
        "restartCount": restarts,
        "state": state,
    }
    if last_state:
        status["lastState"] = last_state
    return status


def _addresses(pod_ip: str) -> dict[str, Any]:
    return {
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
    }


def running_status(
    pod: dict[str, Any],
    started: dt.datetime,
    restarts: int,
    *,
    pod_ip: str = HOST_IP,
    ready: bool = True,
    ready_changed: dt.datetime | None = None,
    started_probe: bool = True,
    last_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A running container; ``ready`` as its readiness probe says (True without one),
    ``started_probe`` as its startup probe says, ``ready_changed`` when that last
    changed (default: the container's start)."""
    container = pod["spec"]["containers"][0]
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": stamp(started)}
        for kind in ("Initialized", "PodScheduled")
    ]
    conditions += _readiness_conditions(ready, ready_changed or started, container["name"])
    return {
        "status": {
            "phase": "Running",
            **_addresses(pod_ip),
            "startTime": stamp(started),
            "conditions": conditions,
            "containerStatuses": [
                _container_status(
                    container,
                    {"running": {"startedAt": stamp(started)}},
                    ready=ready,
                    started=started_probe,
                    restarts=restarts,
                    last_state=last_state,
                )
            ],
        }
    }


def waiting_status(
    pod: dict[str, Any],
    reason: str,
    message: str,
    moment: dt.datetime,
    *,
    phase: str,
    restarts: int = 0,
    pod_ip: str | None = None,
    last_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A container not running: not created yet (Pending, ContainerCreating) or
    waiting to be restarted (Running, CrashLoopBackOff)."""
    container = pod["spec"]["containers"][0]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": _readiness_conditions(False, moment, container["name"]),
        "containerStatuses": [
            _container_status(
                container,
                {"waiting": {"reason": reason, "message": message[:MESSAGE_LIMIT]}},
                ready=False,
                started=False,
                restarts=restarts,
                last_state=last_state,
            )
        ],
    }
    if pod_ip:
        status.update(_addresses(pod_ip))
    return {"status": status}


def terminated_state(
    exit_code: int,
    message: str,
    started: dt.datetime,
    finished: dt.datetime,
    reason: str | None = None,
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": stamp(started),
        "finishedAt": stamp(finished),
    }
    if message:
        terminated["message"] = message[:MESSAGE_LIMIT]
    return {"terminated": terminated}


def terminated_status(
    pod: dict[str, Any],
    exit_code: int,
    message: str,
    started: dt.datetime,
    finished: dt.datetime,
    restarts: int,
    reason: str | None = None,
    last_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    phase = "Succeeded" if exit_code == 0 else "Failed"
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": "PodCompleted" if exit_code == 0 else "PodFailed",
            "lastTransitionTime": stamp(finished),
        }
        for kind in ("Ready", "ContainersReady")
    ]
    return {
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [
                _container_status(
                    container,
                    terminated_state(exit_code, message, started, finished, reason),
                    ready=False,
                    started=False,
                    restarts=restarts,
                    last_state=last_state,
                )
            ],
        }
    }


# --- the agent -------------------------------------------------------------------------


class PodWaiting(Exception):
    """The pod cannot start yet (its ServiceAccount is missing...); retried on resync."""


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    node: str
    process: subprocess.Popen | None = None
    started: dt.datetime = field(default_factory=now)
    restarts: int = 0
    gpus: list[int] = field(default_factory=list)
    deleting: bool = False
    finished: bool = False
    pod_ip: str = HOST_IP
    account: str = "default"
    token_dir: Path | None = None
    token_renew_at: float | None = None  # time.monotonic()
    # One per start of the process: the prober of an older start must not write status.
    generation: int = 0
    ended: threading.Event = field(default_factory=threading.Event)
    ready: bool = False
    ready_changed: dt.datetime | None = None
    started_probe: bool = False
    killed_by_probe: bool = False
    last_state: dict[str, Any] | None = None
    status_lock: threading.Lock = field(default_factory=threading.Lock)
    said: set[str] = field(default_factory=set)  # what was logged once already


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # as a runtime reports it


def _stop_process(process: subprocess.Popen, grace: int) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=max(grace, 0))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class NodeAgent:
    def __init__(
        self,
        nodes: list[NodeSpec],
        state_dir: Path,
        base_path: str,
        *,
        api: tuple[str, int] | None = None,
        ca: bytes = b"",
        pod_ips: PodIPs | None = None,
    ) -> None:
        self.nodes = {spec.name: spec for spec in nodes}
        self.state_dir = state_dir
        self.base_path = base_path
        self.api = api
        self.ca = ca
        self.pod_ips = pod_ips or PodIPs(1)
        self.core = client.CoreV1Api()
        self.coordination = client.CoordinationV1Api()
        self.pods: dict[str, RunningPod] = {}
        self.waiting: dict[str, str] = {}  # uid -> why it cannot start yet
        self.gpu_free = {spec.name: list(range(spec.gpus)) for spec in nodes}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.started_at = now()
        self.empty_dir = state_dir / "pods" / "empty"

    # nodes
    def register(self) -> None:
        for spec in self.nodes.values():
            try:
                self.core.create_node(node_manifest(spec))
            except ApiException as error:
                if error.status != 409:
                    raise
                self.core.patch_node(spec.name, node_manifest(spec))
            self.core.patch_node_status(spec.name, node_status(spec, now()))
            self._renew_lease(spec.name)
            log.info("node registered %s (gpus=%d)", spec.name, spec.gpus)

    def _renew_lease(self, name: str) -> None:
        body = {
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, body)
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body)

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S):
            for spec in self.nodes.values():
                try:
                    self._renew_lease(spec.name)
                    self.core.patch_node_status(spec.name, node_status(spec, now()))
                except (ApiException, OSError) as error:
                    log.warning("heartbeat failed for %s: %s", spec.name, error)

    # pods
    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        import base64

        try:
            if kind == "secretRef":
                secret = self.core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def sync_all(self) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False
            )
            for pod in json.loads(pods.data)["items"]:
                seen.add(pod["metadata"]["uid"])
                self.sync_pod(pod)
        # Housekeeping, as the kubelet's: a process whose pod no longer exists (force
        # deleted, or its DELETED event missed) is stopped.
        with self.lock:
            orphans = [(uid, e) for uid, e in self.pods.items() if uid not in seen]
        for uid, entry in orphans:
            self.pod_gone(
                {"metadata": {"uid": uid, "name": entry.name, "namespace": entry.namespace}}
            )

    def pod_gone(self, pod: dict[str, Any]) -> None:
        """The pod object is gone from the API (grace period 0, or deleted while we were
        not looking): stop its process at once, there is nothing left to report to."""
        uid = pod["metadata"]["uid"]
        with self.lock:
            entry = self.pods.get(uid)
            if entry is None or entry.deleting:
                return
            entry.deleting = True
        if entry.process is not None and entry.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.process.pid, signal.SIGKILL)
            entry.process.wait()
        self._remove(pod)

    def sync_pod(self, pod: dict[str, Any]) -> None:
        """Level-triggered: decide from the pod as it is now and our process table."""
        metadata, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") not in self.nodes:
            return
        uid = metadata["uid"]
        with self.lock:
            entry = self.pods.get(uid)
            phase = (pod.get("status") or {}).get("phase")
            if metadata.get("deletionTimestamp"):
                if entry is None or entry.finished or entry.process is None:
                    self._remove(pod)
                elif not entry.deleting:
                    entry.deleting = True
                    grace = metadata.get("deletionGracePeriodSeconds")
                    if grace is None:
                        grace = spec.get("terminationGracePeriodSeconds", 30)
                    threading.Thread(
                        target=self._terminate, args=(entry, pod, int(grace)), daemon=True
                    ).start()
                return
            if phase in ("Succeeded", "Failed") or entry is not None:
                return
            if phase == "Running":
                # Started by a previous agent process: its process is gone with it.
                self._patch_status(
                    pod,
                    terminated_status(
                        pod,
                        137,
                        "the node agent restarted and lost this process",
                        self.started_at,
                        now(),
                        0,
                        reason="NodeAgentRestarted",
                    ),
                )
                return
            entry = RunningPod(uid, metadata["namespace"], metadata["name"], spec["nodeName"])
            self.pods[uid] = entry
            entry.pod_ip = HOST_IP if spec.get("hostNetwork") else self.pod_ips.allocate(uid)
        try:
            entry.token_dir = self._project_token(entry, pod)
        except PodWaiting as why:
            with self.lock:
                self.pods.pop(uid, None)
                self.pod_ips.release(uid)
            reason = str(why)
            if self.waiting.get(uid) != reason:
                self.waiting[uid] = reason
                log.info("pod %s/%s waits: %s", entry.namespace, entry.name, reason)
                self._patch_status(
                    pod, waiting_status(pod, "ContainerCreating", reason, now(), phase="Pending")
                )
            return
        self.waiting.pop(uid, None)
        self._start(entry, pod)

    def _pod_dir(self, entry: RunningPod) -> Path:
        path = self.state_dir / "pods" / f"{entry.namespace}_{entry.name}_{entry.uid}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # service account tokens
    def _project_token(self, entry: RunningPod, pod: dict[str, Any]) -> Path | None:
        """The kubelet's ``kube-api-access`` volume: the directory with the pod's token,
        or None when the token is not to be mounted."""
        account = entry.account = service_account_name(pod)
        setting = pod["spec"].get("automountServiceAccountToken")
        account_setting = None
        if setting is None:  # the ServiceAccount decides
            try:
                found = self.core.read_namespaced_service_account(account, entry.namespace)
            except ApiException as error:
                why = "not found" if error.status == 404 else f"not read: {error.reason}"
                raise PodWaiting(f'serviceaccount "{account}" {why}') from None
            except OSError as error:
                raise PodWaiting(f'serviceaccount "{account}" not read: {error}') from None
            account_setting = found.automount_service_account_token
        if not automounts_token(setting, account_setting):
            return None
        token, delay = self._request_token(entry)
        directory = write_service_account(
            self._pod_dir(entry) / "serviceaccount", token, self.ca, entry.namespace
        )
        entry.token_renew_at = time.monotonic() + delay
        return directory

    def _request_token(self, entry: RunningPod) -> tuple[str, float]:
        """A fresh token for the pod and the seconds until it is to be renewed."""
        namespace, account = entry.namespace, entry.account
        pod = {"metadata": {"name": entry.name, "namespace": namespace, "uid": entry.uid}}
        issued = now()
        try:
            answer = self.core.create_namespaced_service_account_token(
                account, namespace, token_request(pod)
            )
        except ApiException as error:
            why = "not found" if error.status == 404 else error.reason
            raise PodWaiting(
                f'failed to fetch token of serviceaccount "{account}": {why}'
            ) from None
        except OSError as error:
            raise PodWaiting(f"failed to fetch token: {error}") from None
        expires = answer.status.expiration_timestamp or issued + dt.timedelta(seconds=TOKEN_SECONDS)
        return answer.status.token, refresh_delay(issued, expires)

    def token_loop(self) -> None:
        """Renew each live pod's token before it expires (80 % of its life)."""
        while not self.stopping.wait(TOKEN_CHECK_S):
            with self.lock:
                due = [
                    e
                    for e in self.pods.values()
                    if e.token_dir is not None
                    and not e.finished
                    and e.token_renew_at is not None
                    and time.monotonic() >= e.token_renew_at
                ]
            for entry in due:
                self._renew_token(entry)

    def _renew_token(self, entry: RunningPod) -> None:
        assert entry.token_dir is not None
        try:
            token, delay = self._request_token(entry)
        except PodWaiting as error:
            log.warning("token of %s/%s not renewed: %s", entry.namespace, entry.name, error)
            entry.token_renew_at = time.monotonic() + TOKEN_CHECK_S
            return
        write_service_account(entry.token_dir, token, self.ca, entry.namespace)
        entry.token_renew_at = time.monotonic() + delay
        log.info("token of %s/%s renewed", entry.namespace, entry.name)

    # processes
    def _start(self, entry: RunningPod, pod: dict[str, Any]) -> None:
        if self.stopping.is_set():  # the agent is exiting: stop_pods would miss it
            return
        container = pod["spec"]["containers"][0]
        try:
            env = build_env(pod, container, self._lookup, pod_ip=entry.pod_ip)
            argv = container_argv(container, env)
        except (EnvError, ValueError) as error:
            log.warning("pod %s/%s cannot start: %s", entry.namespace, entry.name, error)
            entry.finished = True
            self._patch_status(
                pod,
                terminated_status(
                    pod, 128, str(error), now(), now(), 0, reason="CreateContainerConfigError"
                ),
            )
            return
        probes = container_probes(container)
        wanted = gpu_request(container)
        with self.lock:
            free = self.gpu_free[entry.node]
            entry.gpus, self.gpu_free[entry.node] = free[:wanted], free[wanted:]
        pod_dir = self._pod_dir(entry)
        message_file = pod_dir / "termination-log"
        message_file.write_text("")
        full_env = process_env(
            base_path=self.base_path,
            home=str(pod_dir),
            hostname=entry.name,
            container_env=env,
            api=self.api,
            gpus=entry.gpus,
        )
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        argv = self._in_private_mounts(argv, entry, message_file, message_path)
        workdir = container.get("workingDir") or str(pod_dir)
        log_file = open(self.state_dir / "pods" / f"{pod_dir.name}.log", "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                argv,
                env=full_env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            entry.finished = True
            self._release_gpus(entry)
            self._patch_status(
                pod, terminated_status(pod, 127, str(error), now(), now(), 0, reason="StartError")
            )
            return
        finally:
            log_file.close()
        if entry.deleting or self.stopping.is_set():  # deleted, or the agent stops, meanwhile
            _stop_process(process, 0)
            return
        ended = threading.Event()
        with entry.status_lock:
            entry.process = process
            entry.generation += 1
            entry.ended = ended
            entry.killed_by_probe = False
            entry.started = now()
            entry.started_probe = "startup" not in probes
            entry.ready = entry.started_probe and "readiness" not in probes
            entry.ready_changed = None
            self._patch_status(pod, self._running(entry, pod))
        log.info(
            "pod %s/%s started pid=%d ip=%s on %s",
            entry.namespace,
            entry.name,
            process.pid,
            entry.pod_ip,
            entry.node,
        )
        threading.Thread(
            target=self._supervise, args=(entry, pod, message_file, process, ended), daemon=True
        ).start()
        if probes:
            threading.Thread(
                target=self._probe_loop,
                args=(entry, pod, probes, entry.generation, process, ended),
                daemon=True,
            ).start()

    def _running(self, entry: RunningPod, pod: dict[str, Any]) -> dict[str, Any]:
        return running_status(
            pod,
            entry.started,
            entry.restarts,
            pod_ip=entry.pod_ip,
            ready=entry.ready,
            ready_changed=entry.ready_changed,
            started_probe=entry.started_probe,
            last_state=entry.last_state,
        )

    def _in_private_mounts(
        self, argv: list[str], entry: RunningPod, message_file: Path, message_path: str
    ) -> list[str]:
        """Under root: the per-pod termination message file at ``message_path`` and the
        token directory (an empty one when the token is not mounted, hiding whatever
        this machine has there) at the ServiceAccount path, read-only."""
        if os.geteuid() != 0:
            if entry.token_dir is not None and "no-mount" not in entry.said:
                entry.said.add("no-mount")
                log.warning(
                    "not root: the token of %s/%s is in %s, not mounted at %s",
                    entry.namespace,
                    entry.name,
                    entry.token_dir,
                    SERVICE_ACCOUNT_PATH,
                )
            return argv
        target = Path(message_path)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        Path(SERVICE_ACCOUNT_PATH).mkdir(parents=True, exist_ok=True)
        self.empty_dir.mkdir(parents=True, exist_ok=True)
        tokens = entry.token_dir or self.empty_dir
        return private_mounts_argv(
            argv,
            [(str(message_file), message_path, False), (str(tokens), SERVICE_ACCOUNT_PATH, True)],
        )

    def _supervise(
        self,
        entry: RunningPod,
        pod: dict[str, Any],
        message_file: Path,
        process: subprocess.Popen,
        ended: threading.Event,
    ) -> None:
        code = _exit_code(process.wait())
        ended.set()
        finished = now()
        message = message_file.read_text(errors="replace")[:MESSAGE_LIMIT].strip()
        policy = pod["spec"].get("restartPolicy", "Always")
        # A container killed by its liveness probe is restarted unless the policy is
        # Never, whatever it exited with (the kubelet's rule).
        restart = policy == "Always" or (
            policy == "OnFailure" and (code != 0 or entry.killed_by_probe)
        )
        if not entry.deleting and restart:
            entry.restarts += 1
            entry.last_state = terminated_state(code, message, entry.started, finished)
            delay = min(2**entry.restarts, RESTART_BACKOFF_MAX_S)
            with entry.status_lock:
                entry.ready = False
                self._patch_status(
                    pod,
                    waiting_status(
                        pod,
                        "CrashLoopBackOff",
                        f"back-off {delay}s restarting failed container",
                        finished,
                        phase="Running",
                        restarts=entry.restarts,
                        pod_ip=entry.pod_ip,
                        last_state=entry.last_state,
                    ),
                )
            time.sleep(delay)
            if not entry.deleting:
                self._release_gpus(entry)
                self._start(entry, pod)
                return
        entry.finished = True
        self._release_gpus(entry)
        if not entry.deleting:
            self._patch_status(
                pod,
                terminated_status(
                    pod,
                    code,
                    message,
                    entry.started,
                    finished,
                    entry.restarts,
                    last_state=entry.last_state,
                ),
            )
        log.info("pod %s/%s exited %d", entry.namespace, entry.name, code)

    # probes
    def _probe_loop(
        self,
        entry: RunningPod,
        pod: dict[str, Any],
        probes: dict[str, Probe],
        generation: int,
        process: subprocess.Popen,
        ended: threading.Event,
    ) -> None:
        """Probe one start of the container until it ends, as the kubelet's workers
        do: the startup probe first, then readiness and liveness, each every
        ``period`` from ``initialDelaySeconds`` after the start."""
        trackers = {
            kind: ProbeTracker(probe.success_threshold, probe.failure_threshold)
            for kind, probe in probes.items()
        }
        begun = time.monotonic()
        due = {kind: begun + probe.initial_delay for kind, probe in probes.items()}
        started = "startup" not in probes
        ready = started and "readiness" not in probes
        for probe in probes.values():
            if probe.action in ("exec", "grpc") and probe.action not in entry.said:
                entry.said.add(probe.action)
                log.warning(
                    "pod %s/%s: %s probes are not run by this agent; counted as successes",
                    entry.namespace,
                    entry.name,
                    probe.action,
                )
        while not (ended.is_set() or entry.deleting or self.stopping.is_set()):
            active = ["startup"] if not started else [k for k in probes if k != "startup"]
            for kind in active:
                if time.monotonic() < due[kind]:
                    continue
                probe = probes[kind]
                ok, detail = run_probe(probe, entry.pod_ip)
                due[kind] = time.monotonic() + probe.period
                settled = trackers[kind].observe(ok)
                if settled is None or ended.is_set():
                    continue
                if kind == "readiness" and settled != ready:
                    ready = settled
                    log.info(
                        "pod %s/%s %s (%s)",
                        entry.namespace,
                        entry.name,
                        "ready" if ready else "not ready",
                        detail,
                    )
                    self._report(entry, pod, generation, ready=ready, started=started)
                elif kind == "startup" and settled:
                    started = True
                    ready = "readiness" not in probes
                    self._report(entry, pod, generation, ready=ready, started=started)
                    break  # the other probes start now
                elif kind in ("liveness", "startup") and not settled:
                    self._kill_for_probe(entry, pod, probe, process, detail)
                    return
            active = ["startup"] if not started else [k for k in probes if k != "startup"]
            if not active:
                return  # a startup probe alone, and it succeeded
            ended.wait(max(min(due[k] for k in active) - time.monotonic(), 0.02))

    def _report(
        self, entry: RunningPod, pod: dict[str, Any], generation: int, *, ready: bool, started: bool
    ) -> None:
        """Patch the pod's status when what the probes say changed it."""
        with entry.status_lock:
            if entry.generation != generation or entry.ended.is_set() or entry.deleting:
                return
            if (entry.ready, entry.started_probe) == (ready, started):
                return
            if entry.ready != ready:
                entry.ready_changed = now()
            entry.ready, entry.started_probe = ready, started
            self._patch_status(pod, self._running(entry, pod))

    def _kill_for_probe(
        self,
        entry: RunningPod,
        pod: dict[str, Any],
        probe: Probe,
        process: subprocess.Popen,
        detail: str,
    ) -> None:
        grace = probe.grace
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        log.warning(
            "pod %s/%s failed its %s probe %d times (%s); killing it",
            entry.namespace,
            entry.name,
            probe.kind,
            probe.failure_threshold,
            detail,
        )
        entry.killed_by_probe = True
        _stop_process(process, grace)

    def _terminate(self, entry: RunningPod, pod: dict[str, Any], grace: int) -> None:
        """Graceful deletion, as the kubelet does it: SIGTERM, SIGKILL after the grace
        period, record the terminal phase (the Job controller only drops its tracking
        finalizer from terminal pods), then the final delete."""
        process = entry.process
        if process is not None:
            _stop_process(process, grace)
            code = _exit_code(process.returncode)
            self._patch_status(
                pod,
                terminated_status(
                    pod,
                    code or 137,
                    "the pod was deleted",
                    entry.started,
                    now(),
                    entry.restarts,
                    reason="Killed",
                ),
            )
        self._remove(pod)

    def _remove(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        with contextlib.suppress(ApiException):
            # The grace period must be in the body: with a body, the query parameter
            # is ignored and the pod would wait for a final delete that never comes.
            self.core.delete_namespaced_pod(
                metadata["name"],
                metadata["namespace"],
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=metadata["uid"]),
                ),
            )
        with self.lock:
            entry = self.pods.pop(metadata["uid"], None)
            self.pod_ips.release(metadata["uid"])
            self.waiting.pop(metadata["uid"], None)
        if entry:
            self._release_gpus(entry)
            if entry.token_dir is not None:
                (entry.token_dir / "token").unlink(missing_ok=True)

    def _release_gpus(self, entry: RunningPod) -> None:
        with self.lock:
            self.gpu_free[entry.node] = sorted(self.gpu_free[entry.node] + entry.gpus)
            entry.gpus = []

    def _patch_status(self, pod: dict[str, Any], body: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], body)
        except ApiException as error:
            if error.status != 404:
                log.warning(
                    "status of %s/%s not written: %s",
                    metadata["namespace"],
                    metadata["name"],
                    error.reason,
                )
        except OSError as error:
            log.warning(
                "status of %s/%s not written: %s", metadata["namespace"], metadata["name"], error
            )

    def watch_loop(self) -> None:
        """Watch pods on our nodes; a periodic full sync covers any missed event."""
        selector = (
            ",".join(f"spec.nodeName={n}" for n in self.nodes) if len(self.nodes) == 1 else None
        )
        last_sync = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_sync > RESYNC_S:
                    self.sync_all()
                    last_sync = time.monotonic()
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    timeout_seconds=int(RESYNC_S),
                    _preload_content=True,
                )
                for event in stream:
                    raw = client.ApiClient().sanitize_for_serialization(event["object"])
                    if event["type"] == "DELETED":
                        self.pod_gone(raw)
                    else:
                        self.sync_pod(raw)
                    if time.monotonic() - last_sync > RESYNC_S:
                        break
            except (ApiException, OSError, ValueError) as error:
                log.warning("pod watch interrupted: %s", error)
                self.stopping.wait(1)

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        threading.Thread(target=self.token_loop, daemon=True).start()
        self.watch_loop()

    def shutdown(self, *_: object) -> None:
        self.stopping.set()

    def stop_pods(self, grace: int = SHUTDOWN_GRACE_S) -> None:
        """On the agent's own exit, end every pod process it runs (SIGTERM, SIGKILL
        after ``grace``): an agent started later cannot adopt them (it marks their pods
        Failed), so left running they would only hold their addresses and ports."""
        with self.lock:
            running = [e for e in self.pods.values() if e.process and e.process.poll() is None]
            for entry in running:
                entry.deleting = True  # no restart, no status: the pod is not deleted
        stoppers = [
            threading.Thread(target=_stop_process, args=(entry.process, grace), daemon=True)
            for entry in running
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        if running:
            log.info("stopped %d pod processes", len(running))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run pods of the local control plane.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--gpu-nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--cpu-nodes", type=int, default=1)
    parser.add_argument(
        "--path",
        default=os.environ.get("PATH", "/usr/bin:/bin"),
        help="PATH given to every pod process",
    )
    parser.add_argument(
        "--pod-ip-block",
        type=int,
        default=0,
        help="N of the pod addresses 127.N.0.0/16 (default: the first no other agent holds)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config.load_kube_config(args.kubeconfig)
    # The API server's address and the CA the agent's kubeconfig trusts: what pods get.
    configuration = client.Configuration.get_default_copy()
    api = api_address(configuration.host)
    ca = Path(configuration.ssl_ca_cert).read_bytes() if configuration.ssl_ca_cert else b""
    if not ca:
        log.warning("the kubeconfig names no CA; pods get an empty ca.crt")
    block, _lock = claim_ip_block(POD_IP_LOCK_DIR, args.pod_ip_block)
    log.info("pod addresses 127.%d.0.0/16; API server %s:%d", block, *api)
    nodes = [NodeSpec(f"fhe-gpu-{i}", gpus=args.gpus_per_node) for i in range(args.gpu_nodes)]
    nodes += [NodeSpec(f"fhe-cpu-{i}") for i in range(args.cpu_nodes)]
    agent = NodeAgent(nodes, args.state_dir, args.path, api=api, ca=ca, pod_ips=PodIPs(block))
    signal.signal(signal.SIGTERM, agent.shutdown)
    try:
        agent.run()
    finally:
        agent.stop_pods()


if __name__ == "__main__":
    main()
