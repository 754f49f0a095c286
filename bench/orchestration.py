"""Orchestration benchmark: what the operator and Kubernetes add around the FHE work.

    .venv/bin/python bench/orchestration.py [--repeat 5] [--batches 50]

On the local stack (real kube-apiserver, Job controller, scheduler and node agent; the
operator as a process under its non-admin identity, default settings):

* overhead: a one-node batch (FheTrivialEncrypt) from create to Succeeded, minus what
  the job runner reports for its own work (``status.stages.compute.summary``): loading
  the tenant's server key (``key_load_s``: TFHE-rs decompresses it, seconds per fresh
  process) and computing (``seconds``). The rest is admission, Job creation,
  scheduling, pod start (a Python process importing the product) and status round
  trips. Median of --repeat;
* throughput: --batches such batches created at once, until every one is Succeeded.

Both are measured twice in one run: with every pod decompressing its key, then with
the stage pods sharing the node-local key cache (coprocessor/keycache.py,
FHE_JOB_KEY_CACHE_HOST_PATH); the ratios compare the two, and the burst's rate is also
given against 0.12 batches/s, where issue #26 started.

Writes bench/results/orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cpu
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from coprocessor.api.batch import GROUP, PLURAL, VERSION
from devstack.kube import operator_kubeconfig
from devstack.process import free_port
from devstack.state import StackState
from devstack.versions import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
BIN = REPO_ROOT / ".venv" / "bin"
NAMESPACE = "fhe-bench"
TENANT = "bench"


def sh(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


def exports(output: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines (fhectl dev env, fhectl dev gateway --env) as a dict."""
    pairs = (line.removeprefix("export ").partition("=") for line in output.splitlines())
    return {key: value.strip("'\"") for key, _, value in pairs if key}


def dev_env() -> dict[str, str]:
    """The dev stack (started if needed, migrated) and its FHE_* environment."""
    sh(str(BIN / "fhectl"), "dev", "up", env=dict(os.environ))
    env = dict(os.environ)
    env.update(exports(sh(str(BIN / "fhectl"), "dev", "env", env=env)))
    sh(str(BIN / "fhectl"), "db", "migrate", env=env)
    return env


def stack_env() -> dict[str, str]:
    env = dev_env()
    sh(str(BIN / "fhectl"), "tenant", "create", TENANT, "--namespace", NAMESPACE, env=env)
    return env


def install(env: dict[str, str]) -> None:
    kubectl = ["kubectl", "apply", "--server-side", "--force-conflicts"]
    sh(
        *kubectl,
        "-f",
        str(REPO_ROOT / "crds/fhebatch.yaml"),
        "-f",
        str(REPO_ROOT / "config/operator-rbac.yaml"),
        env=env,
    )
    sh(
        "kubectl",
        "wait",
        "--for=condition=Established",
        f"crd/{PLURAL}.{GROUP}",
        "--timeout=60s",
        env=env,
    )
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    settings = {
        k: env[k]
        for k in (
            "FHE_DATABASE_URL",
            "FHE_S3_ENDPOINT",
            "FHE_S3_BUCKET",
            "FHE_S3_ACCESS_KEY",
            "FHE_S3_SECRET_KEY",
        )
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fhe-coprocessor-config", "namespace": NAMESPACE},
        "data": settings,
    }
    subprocess.run(
        [*kubectl, "-f", "-"],
        input=yaml.safe_dump_all([namespace, config_map]),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def start_operator(
    env: dict[str, str], log: Path, limit: int | None, key_cache: Path | None = None
) -> subprocess.Popen:
    info = StackState.load(Path(env["FHE_STATE_DIR"])).components["kube"]
    port = free_port()
    operator_env = {**env, "FHE_KUBECONFIG": str(operator_kubeconfig(info))}
    if key_cache is not None:  # stage pods mount it and share expanded keys
        key_cache.mkdir(parents=True, exist_ok=True)
        operator_env["FHE_JOB_KEY_CACHE_HOST_PATH"] = str(key_cache)
    if limit:  # device auto picks gpu when the cluster has GPU nodes (the dev stack does)
        operator_env["FHE_MAX_RUNNING_BATCHES_CPU"] = str(limit)
        operator_env["FHE_MAX_RUNNING_BATCHES_GPU"] = str(limit)
    operator_env.pop("KUBECONFIG", None)
    process = subprocess.Popen(
        [str(BIN / "fhe-operator"), "--liveness", f"http://127.0.0.1:{port}/healthz"],
        env=operator_env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"operator exited; see {log}") from None
            time.sleep(0.5)
    raise SystemExit("operator did not become live")


def manifest(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FheBatch",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "tenant": TENANT,
            "graph": {
                "nodes": [
                    {
                        "name": "k",
                        "op": "FheTrivialEncrypt",
                        "args": [{"scalar": "7"}],
                        "type": "Uint8",
                        "output": True,
                    }
                ]
            },
        },
    }


def wait_all(
    api: client.CustomObjectsApi, names: set[str], timeout: float
) -> dict[str, tuple[float, dict]]:
    """Watch until each named batch is terminal: {name: (time seen, status)}."""
    done: dict[str, tuple[float, dict]] = {}
    deadline = time.monotonic() + timeout
    while names - set(done) and time.monotonic() < deadline:
        stream = watch.Watch()
        try:
            for event in stream.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                NAMESPACE,
                PLURAL,
                timeout_seconds=30,
            ):
                item = event["object"]
                name, status = item["metadata"]["name"], item.get("status") or {}
                if (
                    name in names
                    and name not in done
                    and status.get("phase") in ("Succeeded", "Failed")
                ):
                    done[name] = (time.perf_counter(), status)
                if not names - set(done):
                    stream.stop()
        except ApiException as error:
            if error.status != 410:  # an expired resourceVersion: just watch again
                raise
    missing = names - set(done)
    if missing:
        raise SystemExit(f"{len(missing)} batches not finished in {timeout}s")
    failed = [n for n, (_, s) in done.items() if s["phase"] != "Succeeded"]
    if failed:
        raise SystemExit(f"batch {failed[0]} failed: {done[failed[0]][1].get('message')}")
    return done


def one_batch(api: client.CustomObjectsApi) -> dict:
    name = f"one-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest(name))
    seen, status = wait_all(api, {name}, timeout=300)[name]
    total = seen - started
    summary = status["stages"]["compute"]["summary"]
    compute, key_load = float(summary["seconds"]), float(summary["key_load_s"])
    return {
        "apply_to_succeeded_s": round(total, 3),
        "key_load_s": key_load,
        "compute_s": compute,
        "overhead_s": round(total - key_load - compute, 3),
    }


def many_batches(api: client.CustomObjectsApi, count: int) -> dict:
    run = uuid.uuid4().hex[:6]
    names = {f"many-{run}-{n}" for n in range(count)}
    cpu_before = cpu.snapshot()
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: api.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, manifest(n)
                ),
                names,
            )
        )
    submitted = time.perf_counter() - started
    done = wait_all(api, names, timeout=1800)
    wall = max(seen for seen, _ in done.values()) - started
    by_component = cpu.usage(cpu_before, cpu.snapshot())
    total_cpu = sum(sum(entry.values()) for entry in by_component.values())
    return {
        "batches": count,
        "submit_s": round(submitted, 3),
        "wall_s": round(wall, 2),
        "batches_per_s": round(count / wall, 3),
        "median_latency_s": round(
            statistics.median(seen - started for seen, _ in done.values()), 2
        ),
        # On 2 cores the burst is CPU-bound: its rate is cores / CPU seconds per batch.
        "cpu_s_per_batch": round(total_cpu / count, 3),
        "cpu_s_by_component": by_component,
    }


def cleanup(api: client.CustomObjectsApi) -> None:
    api.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)


def measure(api, env, log: Path, args, key_cache: Path | None) -> dict:
    """Single batches and the burst under one operator configuration."""
    operator = start_operator(env, log, args.limit, key_cache)
    try:
        cleanup(api)
        one_batch(api)  # warm: the tenant's key in the page cache (and the node cache)
        singles = [one_batch(api) for _ in range(args.repeat)]
        for single in singles:
            print(f"one batch: {single}", flush=True)
        throughput = many_batches(api, args.batches)
        print(f"{args.batches} batches at once: {throughput}", flush=True)
        cleanup(api)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
    return {
        "samples": singles,
        "median_apply_to_succeeded_s": statistics.median(
            s["apply_to_succeeded_s"] for s in singles
        ),
        "median_overhead_s": statistics.median(s["overhead_s"] for s in singles),
        "median_key_load_s": statistics.median(s["key_load_s"] for s in singles),
        "throughput": throughput,
    }


# Issue #26's starting point (bench/orchestration.py before key parts and the cache).
FIRST_MEASURED_BATCHES_PER_S = 0.12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument(
        "--limit",
        type=int,
        help="FHE_MAX_RUNNING_BATCHES_CPU and _GPU "
        "for the operator (default: none, every batch starts at once)",
    )
    args = parser.parse_args()
    env = stack_env()
    install(env)
    config.load_kube_config(env["KUBECONFIG"])
    api = client.CustomObjectsApi()
    state = Path(env["FHE_STATE_DIR"])
    log = state / "bench-operator.log"
    key_cache = state / "bench-key-cache"
    shutil.rmtree(key_cache, ignore_errors=True)
    try:
        print("== every pod decompresses its key", flush=True)
        without = measure(api, env, log, args, None)
        print("== stage pods share the node key cache", flush=True)
        with_cache = measure(api, env, log, args, key_cache)
    finally:
        shutil.rmtree(key_cache, ignore_errors=True)
    rate = with_cache["throughput"]["batches_per_s"]
    result = {
        "cpus": len(os.sched_getaffinity(0)),
        "goal_overhead_s": 2.0,
        "without_key_cache": without,
        "with_key_cache": with_cache,
        "key_load_ratio": round(with_cache["median_key_load_s"] / without["median_key_load_s"], 3),
        "throughput_ratio": round(rate / without["throughput"]["batches_per_s"], 3),
        "throughput_vs_first_measured": round(rate / FIRST_MEASURED_BATCHES_PER_S, 2),
        "goal_throughput_vs_first_measured": 10,
        "limit": args.limit,
        "operator_log": str(log),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "orchestration.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'orchestration.json'}")
    sys.exit(0)


if __name__ == "__main__":
    main()
