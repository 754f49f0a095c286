"""The real scheduler, Job controller and garbage collector, with our node agent."""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from kubernetes import client

from devstack import process, stack
from devstack.kube import KubeControlPlane

from .conftest import wait_for

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def job(
    name: str,
    script: str,
    *,
    gpus: int = 0,
    tolerate_gpu: bool = False,
    backoff_limit: int = 0,
    fail_job_on: int | None = None,
) -> dict:
    container = {
        "name": "main",
        "image": "fhe-coprocessor:dev",
        "command": ["sh", "-c", script],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec = {
        "backoffLimit": backoff_limit,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "tolerations": [GPU_TOLERATION] if tolerate_gpu else [],
                "terminationGracePeriodSeconds": 2,
            }
        },
    }
    if fail_job_on is not None:
        spec["podFailurePolicy"] = {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "main",
                        "operator": "In",
                        "values": [fail_job_on],
                    },
                }
            ]
        }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(batch: client.BatchV1Api, name: str, namespace: str) -> dict | None:
    status = batch.read_namespaced_job_status(name, namespace).status
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return {
                "type": condition.type,
                "reason": condition.reason,
                "failed": status.failed or 0,
                "succeeded": status.succeeded or 0,
            }
    return None


def pods_of(core: client.CoreV1Api, name: str, namespace: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items


def test_gpu_job_lands_on_the_gpu_node_and_others_do_not(kube_api, namespace):
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    batch.create_namespaced_job(
        namespace,
        job(
            "gpu",
            'test -n "$CUDA_VISIBLE_DEVICES" && echo "gpu $CUDA_VISIBLE_DEVICES"',
            gpus=1,
            tolerate_gpu=True,
        ),
    )
    batch.create_namespaced_job(namespace, job("cpu", "true"))
    for name in ("gpu", "cpu"):
        done = wait_for(
            lambda n=name: job_condition(batch, n, namespace),
            timeout=90,
            what=f"job {name} to finish",
        )
        assert done["type"] == "Complete", done
    assert pods_of(core, "gpu", namespace)[0].spec.node_name.startswith("fhe-gpu-")
    assert pods_of(core, "cpu", namespace)[0].spec.node_name.startswith("fhe-cpu-")


def test_gpu_request_without_toleration_is_never_placed(kube_api, namespace):
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    batch.create_namespaced_job(namespace, job("no-toleration", "true", gpus=1))
    pod = wait_for(
        lambda: next(iter(pods_of(core, "no-toleration", namespace)), None),
        timeout=30,
        what="the pod to be created",
    )

    def unschedulable():
        current = core.read_namespaced_pod(pod.metadata.name, namespace)
        return [
            c
            for c in current.status.conditions or []
            if c.type == "PodScheduled" and c.reason == "Unschedulable"
        ]

    condition = wait_for(unschedulable, timeout=60, what="the scheduler to give up")
    assert "taint" in condition[0].message or "nvidia.com/gpu" in condition[0].message
    assert core.read_namespaced_pod(pod.metadata.name, namespace).spec.node_name is None


def test_exit_1_is_retried_up_to_backoff_limit(kube_api, namespace):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, job("flaky", "exit 1", backoff_limit=1))
    done = wait_for(
        lambda: job_condition(batch, "flaky", namespace),
        timeout=120,
        what="the job to fail after its retries",
    )
    assert (done["type"], done["reason"], done["failed"]) == ("Failed", "BackoffLimitExceeded", 2)


def test_exit_3_under_fail_job_rule_fails_at_once(kube_api, namespace):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(
        namespace, job("bad-input", "exit 3", backoff_limit=5, fail_job_on=3)
    )
    done = wait_for(
        lambda: job_condition(batch, "bad-input", namespace), timeout=60, what="the job to fail"
    )
    assert (done["type"], done["reason"], done["failed"]) == ("Failed", "PodFailurePolicy", 1)


def test_a_waiting_pod_exit_75_is_retried_without_using_up_the_backoff_limit(
    kube_api, namespace, tmp_path
):
    """The stage Jobs' own podFailurePolicy (fhe_operator.jobs): a pod that exits 75 (its
    inputs are another batch's, not computed yet) is retried as often as it takes; with
    backoffLimit 0 a single counted failure would have failed the Job."""
    from coprocessor.api.batch import FheBatchSpec
    from fhe_operator.jobs import CONTAINER, JobSettings, job_manifest

    product = job_manifest(
        namespace=namespace,
        name="waits",
        uid="u1",
        batch_id=f"{namespace}/waits@1",
        spec=FheBatchSpec.model_validate(
            {"tenant": "t", "graph": {"nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]}}
        ),
        stages=("compute",),
        device="cpu",
        settings=JobSettings(),
        remaining_seconds=300,
    )
    tmp_path.chmod(0o777)
    tries = tmp_path / "tries"
    # Exit 75 twice (waiting), then succeed: what a dependent batch's pod does.
    script = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ] && exit 0; exit 75"
    waiting = job("waits", script, backoff_limit=0)
    waiting["spec"]["template"]["spec"]["containers"][0]["name"] = CONTAINER
    waiting["spec"]["podFailurePolicy"] = product["spec"]["podFailurePolicy"]
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, waiting)
    done = wait_for(
        lambda: job_condition(batch, "waits", namespace), timeout=180, what="the job to finish"
    )
    assert (done["type"], done["succeeded"]) == ("Complete", 1), done
    assert len(tries.read_text().splitlines()) == 3


def test_termination_message_and_env_reach_the_pod_status(kube_api, namespace):
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    script = 'printf \'{"completed": 4, "pod": "%s"}\' "$POD_NAME" > /dev/termination-log'
    batch.create_namespaced_job(namespace, job("message", script))
    wait_for(lambda: job_condition(batch, "message", namespace), timeout=60, what="the job")
    pod = pods_of(core, "message", namespace)[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.message == f'{{"completed": 4, "pod": "{pod.metadata.name}"}}'


def test_deleting_a_job_ends_its_process(kube_api, namespace, tmp_path):
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    tmp_path.chmod(0o777)
    pid_file = tmp_path / f"{uuid.uuid4().hex}.pid"
    batch.create_namespaced_job(
        namespace, job("long", f"echo $$$$ > {pid_file}; exec sleep 300")
    )  # $$ escapes $ in k8s
    pid = int(
        wait_for(
            lambda: pid_file.exists() and pid_file.read_text().strip(),
            timeout=60,
            what="the process to start",
        )
    )
    assert process.is_running(pid)
    batch.delete_namespaced_job("long", namespace, propagation_policy="Background")
    wait_for(lambda: not process.is_running(pid), timeout=60, what="the process to end")
    wait_for(lambda: not pods_of(core, "long", namespace), timeout=60, what="the pod to be removed")


def test_second_up_changes_nothing(kube_cluster):
    state_dir = Path(kube_cluster["STATE_DIR"])
    before = stack.status(state_dir, [KubeControlPlane()])["kube"]
    report = stack.up(state_dir, [KubeControlPlane()])
    after = stack.status(state_dir, [KubeControlPlane()])["kube"]
    assert report["kube"]["reused"] is True
    assert before == after and after["healthy"]


def test_kubectl_works_with_the_exported_kubeconfig(kube_cluster):
    import subprocess

    from devstack.versions import kubectl_binary

    result = subprocess.run(
        [str(kubectl_binary()), "get", "nodes", "-o", "name"],
        env={**os.environ, "KUBECONFIG": kube_cluster["KUBECONFIG"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert {"node/fhe-gpu-0", "node/fhe-cpu-0"} <= set(result.stdout.split())


def test_each_pod_output_is_kept_in_a_log_file(kube_api, kube_cluster, namespace):
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    batch.create_namespaced_job(namespace, job("chatty", 'echo "hello from $POD_NAME"'))
    wait_for(lambda: job_condition(batch, "chatty", namespace), timeout=60, what="the job")
    pod = pods_of(core, "chatty", namespace)[0]
    log = (
        Path(kube_cluster["STATE_DIR"])
        / "kube"
        / "pods"
        / f"{namespace}_{pod.metadata.name}_{pod.metadata.uid}.log"
    )
    assert log.read_text().strip() == f"hello from {pod.metadata.name}"


# --- the node agent as a kubelet: ServiceAccount tokens, pod IPs, probes ----------------

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def pod_manifest(name: str, command: list[str], **spec) -> dict:
    container = {
        "name": "main",
        "image": "fhe-coprocessor:dev",
        "command": command,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
            **spec,
        },
    }


def finished(core: client.CoreV1Api, name: str, namespace: str):
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def terminated_of(core: client.CoreV1Api, name: str, namespace: str, timeout: float = 60):
    pod = wait_for(lambda: finished(core, name, namespace), timeout=timeout, what=f"pod {name}")
    return pod.status.container_statuses[0].state.terminated


IN_CLUSTER = """
import json, os
from kubernetes import client, config

config.load_incluster_config()
core = client.CoreV1Api()
namespace = open(os.path.join(SA, "namespace")).read()
seen = {
    "namespace": namespace,
    "host": os.environ["KUBERNETES_SERVICE_HOST"],
    "port": os.environ["KUBERNETES_SERVICE_PORT"],
    "https": os.environ["KUBERNETES_SERVICE_PORT_HTTPS"],
    "configmaps": sorted(c.metadata.name for c in core.list_namespaced_config_map(namespace).items),
}
review = client.AuthenticationV1Api().create_self_subject_review({"spec": {}})
seen["user"] = review.status.user_info.username
try:
    core.list_namespaced_secret(namespace)
    seen["secrets"] = "listed"
except client.ApiException as error:
    seen["secrets"] = error.status
try:
    open(os.path.join(SA, "token"), "a").close()
    seen["token_writable"] = True
except OSError:
    seen["token_writable"] = False
open("/dev/termination-log", "w").write(json.dumps(seen))
raise SystemExit(0 if seen["secrets"] == 403 else 4)
""".replace("SA", repr(SA_DIR))


def test_a_pod_talks_to_the_api_server_as_its_service_account(kube_api, namespace):
    """load_incluster_config() with the projected token: what the chart's operator and
    listeners do. Its Role lets it list ConfigMaps and nothing else."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest("reader", ["python", "-c", IN_CLUSTER], serviceAccountName="reader"),
    )
    terminated = terminated_of(core, "reader", namespace)
    seen = json.loads(terminated.message)
    api_port = urllib.parse.urlsplit(kube_api.configuration.host).port
    assert terminated.exit_code == 0, seen
    assert seen["user"] == f"system:serviceaccount:{namespace}:reader"
    assert seen["namespace"] == namespace and "visible" in seen["configmaps"]
    assert seen["secrets"] == 403 and seen["token_writable"] is False
    assert (seen["host"], seen["port"], seen["https"]) == (
        "127.0.0.1",
        str(api_port),
        str(api_port),
    )


def test_without_automount_a_pod_sees_no_token(kube_api, namespace):
    """automountServiceAccountToken false on the pod, or on its ServiceAccount."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, {"metadata": {"name": "quiet"}, "automountServiceAccountToken": False}
    )
    check = f'test ! -e {SA_DIR}/token && test -n "$KUBERNETES_SERVICE_HOST"'
    core.create_namespaced_pod(
        namespace,
        pod_manifest("pod-off", ["sh", "-c", check], automountServiceAccountToken=False),
    )
    core.create_namespaced_pod(
        namespace, pod_manifest("account-off", ["sh", "-c", check], serviceAccountName="quiet")
    )
    core.create_namespaced_pod(  # the contrast: the default account's token is there
        namespace, pod_manifest("default-on", ["sh", "-c", f"test -s {SA_DIR}/token"])
    )
    for name in ("pod-off", "account-off", "default-on"):
        assert terminated_of(core, name, namespace).exit_code == 0, name


def test_a_pod_whose_service_account_is_gone_waits_for_it(kube_api, namespace):
    """The kubelet does not fail such a pod: it stays Pending until the token can be
    had. (Admission refuses a pod naming a missing account, so the account is deleted
    while a scheduling gate holds the pod back.)"""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "late"}})
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "waits",
            ["sh", "-c", f"test -s {SA_DIR}/token"],
            serviceAccountName="late",
            schedulingGates=[{"name": "fhe.coprocessor.dev/hold"}],
        ),
    )
    core.delete_namespaced_service_account("late", namespace)
    core.patch_namespaced_pod(
        "waits", namespace, [{"op": "remove", "path": "/spec/schedulingGates"}]
    )

    def waiting():
        pod = core.read_namespaced_pod("waits", namespace)
        statuses = pod.status.container_statuses or []
        state = statuses[0].state.waiting if statuses else None
        return pod if state and state.reason == "ContainerCreating" else None

    pod = wait_for(waiting, timeout=60, what="the pod to wait for its ServiceAccount")
    assert pod.status.phase == "Pending"
    assert "late" in pod.status.container_statuses[0].state.waiting.message
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "late"}})
    assert terminated_of(core, "waits", namespace).exit_code == 0


def http_get(url: str) -> tuple[int, str]:
    """Status and body; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError as error:
        return 0, str(error)


def test_replicas_bind_one_port_each_on_its_own_pod_ip(kube_api, namespace):
    """Two replicas of a Deployment listen on the same port, each on the address of
    its status.podIP fieldRef, as the chart's metrics and health servers do; a
    readiness probe on the named port makes the Deployment available."""
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    port = process.free_port()
    serve = f'echo "$POD_NAME" > name.txt && exec python -m http.server --bind "$POD_IP" {port}'
    template = pod_manifest(
        "unused",
        ["sh", "-c", serve],
        restartPolicy="Always",
        container={
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {
                "httpGet": {"path": "/name.txt", "port": "http"},
                "periodSeconds": 1,
            },
            "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
        },
    )
    template["metadata"] = {"labels": {"app": "web"}}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template,
            },
        },
    )

    def available() -> int:
        return apps.read_namespaced_deployment_status("web", namespace).status.available_replicas

    wait_for(lambda: available() == 2, timeout=90, what="both replicas to be available")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    ips = [pod.status.pod_ip for pod in pods]
    assert len(set(ips)) == 2, ips
    for pod in pods:
        address = ipaddress.ip_address(pod.status.pod_ip)
        assert address in ipaddress.ip_network("127.0.0.0/8") and str(address) != "127.0.0.1"
        assert pod.status.host_ip == "127.0.0.1" and pod.status.phase == "Running"
        assert [entry.ip for entry in pod.status.pod_ips] == [pod.status.pod_ip]
        served = http_get(f"http://{pod.status.pod_ip}:{port}/name.txt")
        assert served == (200, pod.metadata.name + "\n")


TOGGLED = """
import http.server, os, sys

root, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(root, "starts"), "a") as starts:
    starts.write("start\\n")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz":
            code = 200 if os.path.exists(os.path.join(root, "ready")) else 503
        else:
            code = 500 if os.path.exists(os.path.join(root, "dead")) else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer((address, port), Health).serve_forever()
"""


def test_probes_drive_readiness_and_liveness_restarts(kube_api, namespace, tmp_path):
    core = client.CoreV1Api(kube_api)
    tmp_path.chmod(0o777)
    port = process.free_port()
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "probed",
            ["python", "-c", TOGGLED, str(tmp_path), "$(POD_IP)", str(port)],
            restartPolicy="Always",
            container={
                "ports": [{"name": "health", "containerPort": port}],
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "health"},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/livez", "port": port},
                    "periodSeconds": 1,
                    "failureThreshold": 2,
                },
            },
        ),
    )

    def pod_state():
        pod = core.read_namespaced_pod("probed", namespace)
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        statuses = pod.status.container_statuses or []
        return pod, conditions, statuses[0] if statuses else None

    def ready_is(wanted: bool):
        pod, conditions, status = pod_state()
        if status is None or status.state.running is None:
            return None
        flags = (conditions.get("Ready"), conditions.get("ContainersReady"), status.ready)
        return pod if flags == (str(wanted), str(wanted), wanted) else None

    def restarts() -> int:
        status = pod_state()[2]
        return status.restart_count if status else 0

    def answers(path: str):
        pod = core.read_namespaced_pod("probed", namespace)
        return pod.status.pod_ip and http_get(f"http://{pod.status.pod_ip}:{port}{path}")[0]

    # Running, answering 503: not ready, for several probe periods.
    wait_for(lambda: answers("/readyz") == 503, timeout=60, what="the server to answer")
    time.sleep(3)
    assert ready_is(False), pod_state()[1:]
    (tmp_path / "ready").touch()
    wait_for(lambda: ready_is(True), timeout=30, what="the pod to become Ready")
    (tmp_path / "ready").unlink()
    wait_for(lambda: ready_is(False), timeout=30, what="the pod to become un-Ready")

    # A failing liveness probe: the process is killed and started again.
    (tmp_path / "ready").touch()
    (tmp_path / "dead").touch()
    wait_for(lambda: restarts() >= 1, timeout=60, what="a liveness restart")
    (tmp_path / "dead").unlink()
    pod = wait_for(lambda: ready_is(True), timeout=60, what="the restarted pod to be Ready")
    status = pod.status.container_statuses[0]
    assert status.restart_count >= 1 and status.last_state.terminated is not None
    assert len((tmp_path / "starts").read_text().splitlines()) >= 2
