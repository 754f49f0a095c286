import datetime as dt

import pytest

from devstack import node_agent as agent

POD = {
    "metadata": {
        "name": "p1",
        "namespace": "fhe",
        "uid": "u-1",
        "labels": {"app": "x"},
        "annotations": {"a/b": "c"},
    },
    "spec": {"nodeName": "fhe-gpu-0", "containers": [{"name": "main", "image": "i"}]},
}
SECRETS = {
    ("secretRef", "fhe", "signer"): {"key": "0xabc"},
    ("configMapRef", "fhe", "cfg"): {"LEVEL": "debug", "URL": "http://x"},
}


def lookup(kind, namespace, name):
    return SECRETS.get((kind, namespace, name))


def test_env_from_values_refs_and_fields():
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "C_"}],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$(C_LEVEL)-$$(A)"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "signer", "key": "key"}}},
            {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": True}},
            },
        ],
    }
    env = agent.build_env(POD, container, lookup)
    assert env == {
        "C_LEVEL": "debug",
        "C_URL": "http://x",
        "A": "1",
        "B": "1-debug-$(A)",
        "KEY": "0xabc",
        "LVL": "debug",
        "POD": "p1",
        "APP": "x",
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
            "secretKeyRef nope/k not found",
        ),
        (
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "signer", "key": "other"}}},
            "not found",
        ),
        (
            {"name": "K", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            "unsupported valueFrom",
        ),
    ],
)
def test_env_errors_name_the_reference(item, message):
    with pytest.raises(agent.EnvError, match=message):
        agent.build_env(POD, {"env": [item]}, lookup)


def test_unsupported_field_ref_is_refused():
    with pytest.raises(ValueError, match="unsupported fieldRef"):
        agent.field_value(POD, "status.phase")


def test_argv_needs_a_command_and_expands_variables():
    container = {"command": ["fhe-job", "$(STAGE)"], "args": ["--batch", "$(BATCH)"]}
    assert agent.container_argv(container, {"STAGE": "compute"}) == [
        "fhe-job",
        "compute",
        "--batch",
        "$(BATCH)",
    ]
    with pytest.raises(agent.EnvError, match="no command"):
        agent.container_argv({"args": ["x"]}, {})


def test_gpu_node_manifest_has_capacity_label_and_taint():
    spec = agent.NodeSpec("fhe-gpu-0", gpus=2)
    manifest = agent.node_manifest(spec)
    assert manifest["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert manifest["spec"]["taints"] == [agent.GPU_TAINT]
    assert spec.capacity["nvidia.com/gpu"] == "2"
    cpu = agent.node_manifest(agent.NodeSpec("fhe-cpu-0"))
    assert "taints" not in cpu["spec"] and "nvidia.com/gpu" not in agent.NodeSpec("c").capacity
    status = agent.node_status(spec, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))["status"]
    assert status["conditions"][0] == {
        "type": "Ready",
        "status": "True",
        "reason": "NodeAgentReady",
        "message": "fhe node agent is posting ready status",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("code", "phase", "reason"),
    [(0, "Succeeded", "Completed"), (1, "Failed", "Error"), (137, "Failed", "Error")],
)
def test_terminated_status(code, phase, reason):
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    status = agent.terminated_status(POD, code, "x" * 5000, moment, moment, 2)["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert status["phase"] == phase and terminated["reason"] == reason
    assert terminated["exitCode"] == code and len(terminated["message"]) == 4096
    assert status["containerStatuses"][0]["restartCount"] == 2


def test_gpu_request_reads_limits_or_requests():
    assert agent.gpu_request({"resources": {"limits": {"nvidia.com/gpu": "2"}}}) == 2
    assert agent.gpu_request({"resources": {"requests": {"nvidia.com/gpu": 1}}}) == 1
    assert agent.gpu_request({}) == 0
