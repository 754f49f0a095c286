"""Job manifests for a batch's stages (docs/design.md section 4). Pure: dicts in, dict out.

Names are deterministic (``<batch>-<spec hash>-<stage>``, shortened with a hash when
too long), so creating a Job twice - an operator restart, two replicas, a lost
response - gives a 409 Conflict, never a second Job; and a batch whose spec was edited
gets new Jobs instead of mistaking the old spec's finished Job for its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from coprocessor.api.batch import API_VERSION, KIND, FheBatchSpec
from coprocessor.api.names import (
    ANNOTATION_BATCH_ID,
    LABEL_BATCH,
    LABEL_DEVICE,
    LABEL_STAGE,
    LABEL_STAGES,
    LABEL_TENANT,
)
from coprocessor.api.stages import COMMAND_SEPARATOR, group_label
from coprocessor.errors import EXIT_RECOVERABLE

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "stage"
MAX_NAME = 63
# What a stage needs of the node: nothing privileged (restricted Pod Security Standard).
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class JobSettings:
    """What the operator's settings say about every Job it creates."""

    image: str = "ghcr.io/fhe-coprocessor/fhe-coprocessor:0.1.0"
    config_map: str = "fhe-coprocessor-config"  # FHE_* settings for the pods (envFrom)
    secret: str = "fhe-coprocessor-secrets"  # database/S3 credentials (envFrom)
    send_secret: str = "fhe-coprocessor-keys"  # the gateway keys: the send stage only
    ttl_seconds_after_finished: int = 86400
    service_account: str | None = None
    key_cache_host_path: str | None = None  # a node directory for expanded keys


# The stages that load a tenant's server key (send only reads digests and signs).
KEY_STAGES = frozenset({"compute", "sns", "verify"})
# The stages whose FHE work runs on a GPU node's GPUs (ops; switch-and-squash).
GPU_STAGES = frozenset({"compute", "sns"})


def job_name(batch: str, stage: str) -> str:
    name = f"{batch}-{stage}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 10 - len(stage)].rstrip('-')}-{digest}-{stage}"


def job_manifest(
    *,
    namespace: str,
    name: str,
    uid: str,
    batch_id: str,
    spec: FheBatchSpec,
    stages: tuple[str, ...],
    device: str,
    settings: JobSettings,
    remaining_seconds: int,
) -> dict[str, Any]:
    """The Job for one stage, or for consecutive stages one pod runs in turn
    (``coprocessor.api.stages.pod_group``): it gets what each of them needs. ``device``
    is the resolved class (gpu or cpu).

    Its stage label is the first stage (what capacity counts: a Job that computes); a
    Job of several stages also names them all in LABEL_STAGES."""
    labels = {
        LABEL_BATCH: name,
        LABEL_STAGE: stages[0],
        LABEL_TENANT: spec.tenant,
        LABEL_DEVICE: device,
    }
    if len(stages) > 1:
        labels[LABEL_STAGES] = group_label(stages)
    pods = spec.parallelism if stages == ("compute",) else 1
    command = ["fhe-job", COMMAND_SEPARATOR.join(stages), "--batch", batch_id]
    if pods > 1:
        command += ["--count", str(pods)]
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        "limits": {"memory": spec.resources.memory},
    }
    env_from: list[dict[str, Any]] = [
        {"configMapRef": {"name": settings.config_map, "optional": True}},
        {"secretRef": {"name": settings.secret, "optional": True}},
    ]
    if "send" in stages:  # the only stage that signs gateway transactions
        env_from.append({"secretRef": {"name": settings.send_secret, "optional": True}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job retries pods
        # Stage pods never call the Kubernetes API: no token to steal.
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY,
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.image,
                "command": command,
                "envFrom": env_from,
                "resources": resources,
                "securityContext": CONTAINER_SECURITY,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.key_cache_host_path and KEY_STAGES.intersection(stages):
        # The node-local key cache: the first pod on a node to expand a key writes its
        # expanded form there, later ones read it (coprocessor/keycache.py).
        path = settings.key_cache_host_path
        pod_spec["volumes"] = [
            {"name": "key-cache", "hostPath": {"path": path, "type": "Directory"}}
        ]
        container = pod_spec["containers"][0]
        container["volumeMounts"] = [{"name": "key-cache", "mountPath": path}]
        container["env"] = [{"name": "FHE_KEY_CACHE_DIR", "value": path}]
    if device == "gpu" and GPU_STAGES.intersection(stages) and spec.resources.gpus:
        gpus = str(spec.resources.gpus)
        resources["limits"][GPU_RESOURCE] = gpus
        resources["requests"][GPU_RESOURCE] = gpus
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod_spec["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
        # The pod computes on the GPUs it was allocated (coprocessor/gpu.py).
        container = pod_spec["containers"][0]
        container.setdefault("env", []).append({"name": "FHE_COMPUTE_DEVICE", "value": "gpu"})
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retries.backoff_limit,
        "activeDeadlineSeconds": max(1, remaining_seconds),
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "completions": pods,
        "parallelism": pods,
        "podFailurePolicy": {
            "rules": [
                # Bad input (exit 3) can never succeed: fail the Job now, do not retry.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [3]},
                },
                # Waiting is not failing: a pod that exits 75 (the inputs another batch
                # computes are not there yet, the database or S3 is down) is retried
                # without using up backoffLimit; the batch's deadline still bounds it.
                {
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_RECOVERABLE],
                    },
                },
                # A node drained or a pod preempted is not the batch's fault.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if pods > 1:
        job_spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(f"{name}-{spec.spec_hash()[:8]}", "-".join(stages)),
            "namespace": namespace,
            "labels": labels,
            "annotations": {ANNOTATION_BATCH_ID: batch_id},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec,
    }
