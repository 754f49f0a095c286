"""Control-plane benchmark: control-plane start time and pod start latency.

    .venv/bin/python bench/kube.py [--pods 20]

Starts a fresh control plane in a temporary directory (cold start of the processes,
binaries already built), then creates pods one at a time and watches them: scheduling
latency (created -> bound to a node) and start latency (bound -> Running, the node
agent's share). Writes bench/results/kube.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kubernetes import client, config, watch

from devstack import stack
from devstack.kube import KubeControlPlane
from devstack.versions import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure_pods(api: client.ApiClient, count: int) -> dict[str, float]:
    core = client.CoreV1Api(api)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(namespace).items:
        if time.monotonic() > deadline:
            raise RuntimeError("no default service account after 30 s")
        time.sleep(0.1)
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    running: dict[str, float] = {}
    done = threading.Event()

    def observe() -> None:
        stream = watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=120)
        for event in stream:
            pod, now = event["object"], time.perf_counter()
            name = pod.metadata.name
            if pod.spec.node_name and name not in bound:
                bound[name] = now
            if pod.status.phase in ("Running", "Succeeded") and name not in running:
                running[name] = now
            if len(running) == count:
                done.set()
                return

    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    time.sleep(0.5)  # let the watch open before the first pod appears
    for index in range(count):
        name = f"p{index}"
        created[name] = time.perf_counter()
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "none", "command": ["sleep", "2"]}],
                },
            },
        )
        time.sleep(0.05)
    if not done.wait(120):
        raise RuntimeError(f"only {len(running)} of {count} pods reached Running")
    core.delete_namespace(namespace)
    schedule = [(bound[n] - created[n]) * 1000 for n in created]
    start = [(running[n] - bound[n]) * 1000 for n in created]
    return {
        "pods": count,
        "schedule_ms_p50": round(statistics.median(schedule), 1),
        "schedule_ms_p90": round(percentile(schedule, 0.9), 1),
        "bound_to_running_ms_p50": round(statistics.median(start), 1),
        "bound_to_running_ms_p90": round(percentile(start, 0.9), 1),
        "bound_to_running_ms_max": round(max(start), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args()
    components = [KubeControlPlane()]
    with tempfile.TemporaryDirectory(prefix="fhe-bench-kube-") as directory:
        state_dir = Path(directory)
        started = time.perf_counter()
        stack.up(state_dir, components)
        cold_start = time.perf_counter() - started
        try:
            stack.down(state_dir, components)
            started = time.perf_counter()
            stack.up(state_dir, components)  # existing certificates and etcd data
            warm_start = time.perf_counter() - started
            kubeconfig = stack.env(state_dir, components)["KUBECONFIG"]
            pods = measure_pods(config.new_client_from_config(kubeconfig), args.pods)
        finally:
            stack.down(state_dir, components)
    result = {
        "control_plane_first_start_s": round(cold_start, 2),
        "control_plane_restart_s": round(warm_start, 2),
        **pods,
    }
    for key, value in result.items():
        print(f"{key:32s} {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kube.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'kube.json'}")


if __name__ == "__main__":
    main()
