"""A node agent for the local control plane: it stands in for the kubelet and the
container runtime, and for nothing else.

The API server, the scheduler and the Job controller are the real ones; this agent
registers Nodes (GPU nodes with ``nvidia.com/gpu`` capacity, label and NoSchedule
taint, and CPU nodes), keeps them Ready with Lease heartbeats, and runs every pod
bound to them as a local process:

* the first container's ``command`` + ``args`` (with ``$(VAR)`` expansion) is run with
  the container's ``env`` (plain values, ``secretKeyRef``, ``configMapKeyRef`` and
  ``fieldRef``) on top of a minimal base environment (PATH, HOME, LANG);
* the pod goes Running, then Succeeded or Failed with the exit code and the
  termination message the process wrote at ``terminationMessagePath`` (when run as root
  each process gets a private mount namespace in which a per-pod file is bind-mounted
  at that path, so pods never share /dev/termination-log);
* ``restartPolicy`` OnFailure/Always restarts the process in place (restartCount + 1);
* GPUs of a node are handed out per pod as ``CUDA_VISIBLE_DEVICES``/
  ``NVIDIA_VISIBLE_DEVICES`` indices, as a device plugin would;
* a deleted pod's process gets SIGTERM, then SIGKILL after the grace period, and the
  pod is then removed (the kubelet's final delete);
* each pod's output goes to ``<state>/pods/<namespace>_<name>_<uid>.log``.

What it does NOT do: pull or run images (the command must exist on this machine),
enforce resource limits or isolation beyond the mount namespace, run probes, init or
sidecar containers, volumes, ``kubectl logs``/``exec`` (no kubelet API), or re-adopt
processes after its own restart (such pods are marked Failed, reason NodeAgentRestarted).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import signal
import subprocess
import threading
import time
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


# --- pods (pure) -----------------------------------------------------------------------

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown names stay as written, ``$$`` escapes."""
    parts = text.split("$$")
    expanded = [_VAR.sub(lambda m: env.get(m[1], m[0]), part) for part in parts]
    return "$".join(expanded)


def field_value(pod: dict[str, Any], path: str) -> str:
    metadata = pod.get("metadata", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match[1]) or {}).get(match[2], ""))
    raise ValueError(f"unsupported fieldRef {path!r}")


class EnvError(Exception):
    """The pod's env cannot be built (missing secret key...); the pod cannot start."""


def build_env(pod: dict[str, Any], container: dict[str, Any], lookup) -> dict[str, str]:
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
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
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


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    command = container.get("command") or []
    if not command:
        raise EnvError("the container has no command; images are not run by this agent")
    return [expand(part, env) for part in [*command, *(container.get("args") or [])]]


def gpu_request(container: dict[str, Any]) -> int:
    resources = container.get("resources") or {}
    value = (
        (resources.get("limits") or {}).get(GPU_RESOURCE)
        or (resources.get("requests") or {}).get(GPU_RESOURCE)
        or 0
    )
    return int(value)


def running_status(pod: dict[str, Any], started: dt.datetime, restarts: int) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": stamp(started)}
        for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    return {
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": stamp(started),
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": restarts,
                    "state": {"running": {"startedAt": stamp(started)}},
                }
            ],
        }
    }


def terminated_status(
    pod: dict[str, Any],
    exit_code: int,
    message: str,
    started: dt.datetime,
    finished: dt.datetime,
    restarts: int,
    reason: str | None = None,
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    phase = "Succeeded" if exit_code == 0 else "Failed"
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": "PodCompleted" if exit_code == 0 else "PodFailed",
            "lastTransitionTime": stamp(finished),
        }
        for kind in ("Ready", "ContainersReady")
    ]
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": stamp(started),
        "finishedAt": stamp(finished),
    }
    if message:
        terminated["message"] = message[:MESSAGE_LIMIT]
    return {
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": restarts,
                    "state": {"terminated": terminated},
                }
            ],
        }
    }


# --- the agent -------------------------------------------------------------------------


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


class NodeAgent:
    def __init__(self, nodes: list[NodeSpec], state_dir: Path, base_path: str) -> None:
        self.nodes = {spec.name: spec for spec in nodes}
        self.state_dir = state_dir
        self.base_path = base_path
        self.core = client.CoreV1Api()
        self.coordination = client.CoordinationV1Api()
        self.pods: dict[str, RunningPod] = {}
        self.gpu_free = {spec.name: list(range(spec.gpus)) for spec in nodes}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.started_at = now()

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
        for node in self.nodes:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False
            )
            import json

            for pod in json.loads(pods.data)["items"]:
                self.sync_pod(pod)

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
        self._start(entry, pod)

    def _pod_dir(self, entry: RunningPod) -> Path:
        path = self.state_dir / "pods" / f"{entry.namespace}_{entry.name}_{entry.uid}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _start(self, entry: RunningPod, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        try:
            env = build_env(pod, container, self._lookup)
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
        wanted = gpu_request(container)
        with self.lock:
            free = self.gpu_free[entry.node]
            entry.gpus, self.gpu_free[entry.node] = free[:wanted], free[wanted:]
        pod_dir = self._pod_dir(entry)
        message_file = pod_dir / "termination-log"
        message_file.write_text("")
        full_env = {
            "PATH": self.base_path,
            "HOME": str(pod_dir),
            "LANG": "C.UTF-8",
            "HOSTNAME": entry.name,
            **env,
        }
        if entry.gpus:
            visible = ",".join(str(g) for g in entry.gpus)
            full_env.update(CUDA_VISIBLE_DEVICES=visible, NVIDIA_VISIBLE_DEVICES=visible)
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        argv = self._with_private_message_file(argv, message_file, message_path)
        workdir = container.get("workingDir") or str(pod_dir)
        log_file = open(self.state_dir / "pods" / f"{pod_dir.name}.log", "ab")  # noqa: SIM115
        try:
            entry.process = subprocess.Popen(
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
        entry.started = now()
        self._patch_status(pod, running_status(pod, entry.started, entry.restarts))
        log.info(
            "pod %s/%s started pid=%d on %s",
            entry.namespace,
            entry.name,
            entry.process.pid,
            entry.node,
        )
        threading.Thread(
            target=self._supervise, args=(entry, pod, message_file), daemon=True
        ).start()

    @staticmethod
    def _with_private_message_file(
        argv: list[str], message_file: Path, message_path: str
    ) -> list[str]:
        if os.geteuid() != 0:
            return argv
        target = Path(message_path)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(message_file),
            message_path,
            *argv,
        ]

    def _supervise(self, entry: RunningPod, pod: dict[str, Any], message_file: Path) -> None:
        assert entry.process is not None
        code = entry.process.wait()
        if code < 0:
            code = 128 - code  # killed by a signal, as a container runtime reports it
        finished = now()
        message = message_file.read_text(errors="replace")[:MESSAGE_LIMIT].strip()
        policy = pod["spec"].get("restartPolicy", "Always")
        if not entry.deleting and (policy == "Always" or (policy == "OnFailure" and code)):
            entry.restarts += 1
            time.sleep(min(2**entry.restarts, 30))
            if not entry.deleting:
                self._release_gpus(entry)
                self._start(entry, pod)
                return
        entry.finished = True
        self._release_gpus(entry)
        if not entry.deleting:
            self._patch_status(
                pod, terminated_status(pod, code, message, entry.started, finished, entry.restarts)
            )
        log.info("pod %s/%s exited %d", entry.namespace, entry.name, code)

    def _terminate(self, entry: RunningPod, pod: dict[str, Any], grace: int) -> None:
        """Graceful deletion, as the kubelet does it: SIGTERM, SIGKILL after the grace
        period, record the terminal phase (the Job controller only drops its tracking
        finalizer from terminal pods), then the final delete."""
        process = entry.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=max(grace, 0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            code = process.returncode
            code = 128 - code if code < 0 else code
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
        if entry:
            self._release_gpus(entry)

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
                    self.sync_pod(raw)
                    if time.monotonic() - last_sync > RESYNC_S:
                        break
            except (ApiException, OSError, ValueError) as error:
                log.warning("pod watch interrupted: %s", error)
                self.stopping.wait(1)

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        self.watch_loop()

    def shutdown(self, *_: object) -> None:
        self.stopping.set()


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config.load_kube_config(args.kubeconfig)
    nodes = [NodeSpec(f"fhe-gpu-{i}", gpus=args.gpus_per_node) for i in range(args.gpu_nodes)]
    nodes += [NodeSpec(f"fhe-cpu-{i}") for i in range(args.cpu_nodes)]
    agent = NodeAgent(nodes, args.state_dir, args.path)
    signal.signal(signal.SIGTERM, agent.shutdown)
    agent.run()


if __name__ == "__main__":
    main()
