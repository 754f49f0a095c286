"""The real scheduler, Job controller and garbage collector, with our node agent."""

from __future__ import annotations

import os
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
        stage="compute",
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
