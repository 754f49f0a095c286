"""The node agent's kubelet parts that need no cluster: pod addresses, the API server's
environment, ServiceAccount token files, probes and the status bodies they patch."""

import datetime as dt
import http.server
import os
import shutil
import socket
import stat
import subprocess
import threading
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from devstack import node_agent as agent

MOMENT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 1, 1, 0, 0, 7, tzinfo=dt.UTC)
CONTAINER = {
    "name": "main",
    "image": "i",
    "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}],
}
POD = {
    "metadata": {"name": "p1", "namespace": "fhe", "uid": "u-1"},
    "spec": {"nodeName": "fhe-cpu-0", "serviceAccountName": "op", "containers": [CONTAINER]},
}


# --- pod addresses ---------------------------------------------------------------------


def test_pod_ips_are_unique_stable_and_handed_out_round_robin():
    ips = agent.PodIPs(1)
    first, second = ips.allocate("a"), ips.allocate("b")
    assert (first, second) == ("127.1.0.1", "127.1.0.2")
    assert ips.allocate("a") == first  # the same pod keeps its address
    ips.release("a")
    ips.release("never-allocated")
    assert ips.allocate("c") == "127.1.0.3"  # a released address is not reused at once


def test_pod_ip_rows_skip_network_and_broadcast_like_octets():
    ips = agent.PodIPs(7)
    assert ips.address(0) == "127.7.0.1"
    assert ips.address(253) == "127.7.0.254"
    assert ips.address(254) == "127.7.1.1"
    assert ips.address(ips.CAPACITY - 1) == "127.7.255.254"


def test_pod_ips_wrap_around_and_run_out():
    class Tiny(agent.PodIPs):
        CAPACITY = 2

    ips = Tiny(1)
    assert [ips.allocate(u) for u in ("a", "b")] == ["127.1.0.1", "127.1.0.2"]
    with pytest.raises(RuntimeError, match="all 2 pod addresses"):
        ips.allocate("c")
    ips.release("a")
    assert ips.allocate("c") == "127.1.0.1"


@pytest.mark.parametrize("block", [0, 255])
def test_pod_ip_block_must_be_inside_loopback(block):
    with pytest.raises(ValueError, match=r"1\.\.254"):
        agent.PodIPs(block)


def test_each_agent_claims_its_own_block(tmp_path):
    first, fd_first = agent.claim_ip_block(tmp_path)
    second, fd_second = agent.claim_ip_block(tmp_path)
    assert (first, second) == (1, 2)
    with pytest.raises(RuntimeError, match="no free pod address block"):
        agent.claim_ip_block(tmp_path, wanted=2)
    os.close(fd_first)  # an agent that is gone frees its block
    again, fd_again = agent.claim_ip_block(tmp_path)
    assert again == 1
    chosen, fd_chosen = agent.claim_ip_block(tmp_path, wanted=9)
    assert chosen == 9
    for fd in (fd_second, fd_again, fd_chosen):
        os.close(fd)


def test_pod_ip_field_refs():
    assert agent.field_value(POD, "status.podIP", "127.1.0.5") == "127.1.0.5"
    assert agent.field_value(POD, "status.podIPs", "127.1.0.5") == "127.1.0.5"
    assert agent.field_value({**POD, "status": {"podIP": "127.1.0.9"}}, "status.podIP") == (
        "127.1.0.9"
    )
    assert agent.field_value(POD, "status.podIP") == "127.0.0.1"
    assert agent.field_value(POD, "status.hostIP", "127.1.0.5") == "127.0.0.1"
    container = {"env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}
    assert agent.build_env(POD, container, lambda *_: None, pod_ip="127.1.2.3") == {
        "IP": "127.1.2.3"
    }


# --- environment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "address"),
    [
        ("https://127.0.0.1:6443", ("127.0.0.1", 6443)),
        ("https://localhost", ("localhost", 443)),
        ("http://10.0.0.1", ("10.0.0.1", 80)),
    ],
)
def test_api_address_from_the_kubeconfig_server(server, address):
    assert agent.api_address(server) == address


def test_api_address_needs_a_host():
    with pytest.raises(ValueError, match="no host"):
        agent.api_address("/just/a/path")


def test_process_env_names_the_api_server_and_lets_the_container_override():
    env = agent.process_env(
        base_path="/venv/bin:/usr/bin",
        home="/state/pods/p",
        hostname="p1",
        container_env={"A": "1", "KUBERNETES_SERVICE_PORT": "9999"},
        api=("127.0.0.1", 6443),
        gpus=[0, 1],
    )
    assert env == {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/state/pods/p",
        "LANG": "C.UTF-8",
        "HOSTNAME": "p1",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "9999",  # the container's own env wins, as on a kubelet
        "KUBERNETES_SERVICE_PORT_HTTPS": "6443",
        "KUBERNETES_PORT": "tcp://127.0.0.1:6443",
        "KUBERNETES_PORT_6443_TCP": "tcp://127.0.0.1:6443",
        "KUBERNETES_PORT_6443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_6443_TCP_PORT": "6443",
        "KUBERNETES_PORT_6443_TCP_ADDR": "127.0.0.1",
        "A": "1",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NVIDIA_VISIBLE_DEVICES": "0,1",
    }
    bare = agent.process_env(base_path="/bin", home="/h", hostname="p", container_env={})
    assert not any(key.startswith("KUBERNETES") or "VISIBLE" in key for key in bare)


def test_private_mounts_argv_binds_each_then_runs_the_command():
    argv = agent.private_mounts_argv(
        ["python", "-c", "x"], [("/s/log", "/dev/termination-log", False), ("/s/sa", "/sa", True)]
    )
    assert argv[:7] == ["unshare", "--mount", "--propagation", "private", "sh", "-c", argv[6]]
    assert argv[7:] == [
        "sh",
        "rw",
        "/s/log",
        "/dev/termination-log",
        "ro",
        "/s/sa",
        "/sa",
        "--",
        "python",
        "-c",
        "x",
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="mount namespaces need root"
)
def test_private_mounts_are_seen_by_the_command_only_and_read_only_when_asked(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "token").write_text("secret")
    script = 'cat "$1/token"; if touch "$1/new" 2>/dev/null; then echo writable; fi'
    argv = agent.private_mounts_argv(
        ["sh", "-c", script, "sh", str(target)], [(str(source), str(target), True)]
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert (result.returncode, result.stdout) == (0, "secret"), result.stderr
    assert list(target.iterdir()) == []  # the host's view is unchanged


# --- service account tokens ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "account", "mounted"),
    [
        (None, None, True),
        (None, True, True),
        (None, False, False),
        (False, True, False),
        (True, False, True),
        (False, None, False),
    ],
)
def test_automount_the_pod_wins_then_the_service_account(pod, account, mounted):
    assert agent.automounts_token(pod, account) is mounted


def test_service_account_name_defaults_to_default():
    assert agent.service_account_name(POD) == "op"
    assert agent.service_account_name({"spec": {"serviceAccount": "legacy"}}) == "legacy"
    assert agent.service_account_name({"spec": {}}) == "default"


def test_token_request_is_bound_to_the_pod_for_the_api_servers_audience():
    assert agent.token_request(POD) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p1", "uid": "u-1"},
        },
    }


def test_tokens_are_renewed_at_80_percent_of_their_life_and_at_least_daily():
    assert agent.refresh_delay(MOMENT, MOMENT + dt.timedelta(hours=1)) == 2880
    assert agent.refresh_delay(MOMENT, MOMENT + dt.timedelta(days=365)) == 24 * 3600
    assert agent.refresh_delay(MOMENT, MOMENT - dt.timedelta(seconds=1)) == 0


def test_service_account_files(tmp_path):
    directory = agent.write_service_account(tmp_path / "sa", "tok-1", b"PEM", "fhe")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == {
        "token": b"tok-1",
        "ca.crt": b"PEM",
        "namespace": b"fhe",
    }
    assert stat.S_IMODE((directory / "token").stat().st_mode) == 0o644
    agent.write_service_account(directory, "tok-2", b"PEM", "fhe")  # a renewal
    assert (directory / "token").read_text() == "tok-2"
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "namespace", "token"]


# --- probes ----------------------------------------------------------------------------


def test_probe_defaults_are_kubernetes_ones():
    probe = agent.parse_probe("readiness", {"httpGet": {"port": 8080}}, CONTAINER)
    assert probe == agent.Probe(
        kind="readiness",
        action="httpGet",
        port=8080,
        host=None,
        path="/",
        scheme="HTTP",
        headers=(),
        initial_delay=0,
        period=10,
        timeout=1,
        success_threshold=1,
        failure_threshold=3,
        grace=None,
        error=None,
    )


def test_probe_fields_named_ports_and_headers():
    raw = {
        "httpGet": {
            "path": "/readyz",
            "port": "http",
            "scheme": "https",
            "host": "127.9.0.1",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}],
        },
        "initialDelaySeconds": 5,
        "periodSeconds": 2,
        "timeoutSeconds": 3,
        "successThreshold": 2,
        "failureThreshold": 4,
        "terminationGracePeriodSeconds": 7,
    }
    probe = agent.parse_probe("readiness", raw, CONTAINER)
    assert (probe.port, probe.path, probe.scheme, probe.host) == (
        8080,
        "/readyz",
        "HTTPS",
        "127.9.0.1",
    )
    assert probe.headers == (("X-Probe", "yes"),)
    assert (probe.initial_delay, probe.period, probe.timeout) == (5, 2, 3)
    assert (probe.success_threshold, probe.failure_threshold, probe.grace) == (2, 4, 7)
    # Liveness and startup probes succeed on one success, whatever they say.
    assert agent.parse_probe("liveness", raw, CONTAINER).success_threshold == 1
    assert agent.parse_probe("liveness", {"tcpSocket": {"port": "9090"}}, CONTAINER).port == 9090


def test_a_probe_on_an_undeclared_named_port_always_fails():
    probe = agent.parse_probe("liveness", {"tcpSocket": {"port": "metrics"}}, CONTAINER)
    assert probe.port is None and "metrics" in (probe.error or "")
    assert agent.run_probe(probe, "127.0.0.1") == (False, probe.error)


def test_container_probes_by_kind():
    probes = agent.container_probes(
        {
            **CONTAINER,
            "readinessProbe": {"httpGet": {"port": "http"}},
            "livenessProbe": {"exec": {"command": ["true"]}},
            "startupProbe": {"grpc": {"port": 9090}},
        }
    )
    assert {kind: p.action for kind, p in probes.items()} == {
        "startup": "grpc",
        "readiness": "httpGet",
        "liveness": "exec",
    }
    assert agent.container_probes(CONTAINER) == {}


@pytest.mark.parametrize(
    ("outcomes", "settled"),
    [
        ([True], [True]),
        ([False, False, False], [None, None, False]),
        ([False, False, True, False, False, False], [None, None, True, None, None, False]),
    ],
)
def test_probe_thresholds_count_consecutive_outcomes(outcomes, settled):
    tracker = agent.ProbeTracker(success_threshold=1, failure_threshold=3)
    assert [tracker.observe(ok) for ok in outcomes] == settled


def test_a_readiness_success_threshold_needs_that_many_successes_in_a_row():
    tracker = agent.ProbeTracker(success_threshold=2, failure_threshold=1)
    assert [tracker.observe(ok) for ok in (True, False, True, True, True)] == [
        None,
        False,
        None,
        True,
        True,
    ]


@pytest.fixture
def http_server():
    """A server answering GET /<code> with that status; it records the headers."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            self.send_response(int(self.path.strip("/") or 200))
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("code", "ok"), [(200, True), (204, True), (302, True), (503, False)])
def test_http_probe_succeeds_on_2xx_and_3xx(http_server, code, ok):
    port, _ = http_server
    probe = agent.Probe(kind="readiness", action="httpGet", port=port, path=f"/{code}")
    assert agent.run_probe(probe, "127.0.0.1") == (ok, f"HTTP {code}")


def test_http_probe_goes_to_the_pod_ip_with_its_headers(http_server):
    port, seen = http_server
    probe = agent.Probe(kind="liveness", action="httpGet", port=port, headers=(("X-Probe", "yes"),))
    assert agent.run_probe(probe, "127.0.0.1")[0] is True
    assert seen[0]["X-Probe"] == "yes" and seen[0]["User-Agent"].startswith("kube-probe/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probes_of_a_port_nothing_listens_on_fail():
    port = free_port()
    for action in ("httpGet", "tcpSocket"):
        ok, detail = agent.run_probe(
            agent.Probe(kind="liveness", action=action, port=port, timeout=0.5), "127.0.0.1"
        )
        assert ok is False and detail


def test_tcp_probe_connects_and_exec_is_not_run(http_server):
    port, _ = http_server
    tcp = agent.Probe(kind="liveness", action="tcpSocket", port=port)
    assert agent.run_probe(tcp, "127.0.0.1") == (True, f"connected to 127.0.0.1:{port}")
    for action in ("exec", "grpc"):
        ok, detail = agent.run_probe(agent.Probe(kind="liveness", action=action), "127.0.0.1")
        assert ok is True and "not run" in detail


# --- status bodies ---------------------------------------------------------------------


def test_a_running_pod_without_a_readiness_probe_is_ready_on_its_ip():
    status = agent.running_status(POD, MOMENT, 0, pod_ip="127.1.0.4")["status"]
    assert (status["phase"], status["podIP"], status["hostIP"]) == (
        "Running",
        "127.1.0.4",
        "127.0.0.1",
    )
    assert status["podIPs"] == [{"ip": "127.1.0.4"}]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Initialized": "True",
        "PodScheduled": "True",
        "Ready": "True",
        "ContainersReady": "True",
    }
    container = status["containerStatuses"][0]
    assert container["ready"] is True and container["started"] is True
    assert "lastState" not in container


def test_a_not_ready_pod_says_which_container_and_since_when():
    last = agent.terminated_state(143, "", MOMENT, MOMENT)
    status = agent.running_status(
        POD,
        MOMENT,
        2,
        pod_ip="127.1.0.4",
        ready=False,
        ready_changed=LATER,
        started_probe=False,
        last_state=last,
    )["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready == {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": "2026-01-01T00:00:07Z",
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [main]",
    }
    container = status["containerStatuses"][0]
    assert (container["ready"], container["started"], container["restartCount"]) == (
        False,
        False,
        2,
    )
    assert container["lastState"]["terminated"]["exitCode"] == 143
    assert container["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


def test_waiting_bodies_pending_without_ip_and_restarting_with_it():
    pending = agent.waiting_status(
        POD, "ContainerCreating", 'serviceaccount "op" not found', MOMENT, phase="Pending"
    )["status"]
    assert pending["phase"] == "Pending" and "podIP" not in pending
    assert pending["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "ContainerCreating", "message": 'serviceaccount "op" not found'}
    }
    last = agent.terminated_state(1, "boom", MOMENT, LATER)
    backoff = agent.waiting_status(
        POD,
        "CrashLoopBackOff",
        "back-off 2s",
        LATER,
        phase="Running",
        restarts=1,
        pod_ip="127.1.0.4",
        last_state=last,
    )["status"]
    assert backoff["podIP"] == "127.1.0.4"
    container = backoff["containerStatuses"][0]
    assert container["lastState"]["terminated"]["message"] == "boom"
    assert (container["ready"], container["restartCount"]) == (False, 1)
    assert {c["type"]: c["status"] for c in backoff["conditions"]} == {
        "Ready": "False",
        "ContainersReady": "False",
    }


# --- the agent's token projection, against a fake API ----------------------------------


class FakeCore:
    """The CoreV1Api calls the agent makes for a pod's token, recorded."""

    def __init__(self, accounts: dict[str, bool | None]) -> None:
        self.accounts = accounts  # name -> its automountServiceAccountToken
        self.calls: list[tuple] = []
        self.patches: list[dict] = []
        self.tokens = 0

    def read_namespaced_service_account(self, name, namespace):
        self.calls.append(("read", name, namespace))
        if name not in self.accounts:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(automount_service_account_token=self.accounts[name])

    def create_namespaced_service_account_token(self, name, namespace, body):
        self.calls.append(("token", name, namespace, body["spec"]["boundObjectRef"]["uid"]))
        if name not in self.accounts:
            raise ApiException(status=404, reason="Not Found")
        self.tokens += 1
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=body["spec"]["expirationSeconds"])
        return SimpleNamespace(
            status=SimpleNamespace(token=f"token-{self.tokens}", expiration_timestamp=expires)
        )

    def patch_namespaced_pod_status(self, name, namespace, body):
        self.patches.append(body)


class UnstartedAgent(agent.NodeAgent):
    """The agent up to the process: what it would start is recorded instead."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[agent.RunningPod] = []

    def _start(self, entry, pod):
        self.started.append(entry)


def fake_agent(tmp_path, accounts):
    node_agent = UnstartedAgent(
        [agent.NodeSpec("fhe-cpu-0")],
        tmp_path,
        "/usr/bin",
        api=("127.0.0.1", 6443),
        ca=b"CA PEM",
        pod_ips=agent.PodIPs(3),
    )
    node_agent.core = FakeCore(accounts)
    return node_agent, node_agent.started


def pod_with(**spec):
    return {
        "metadata": {"name": "p1", "namespace": "fhe", "uid": "u-1"},
        "spec": {"nodeName": "fhe-cpu-0", "containers": [CONTAINER], **spec},
        "status": {"phase": "Pending"},
    }


def test_the_token_is_requested_for_the_pods_account_and_written(tmp_path):
    node_agent, started = fake_agent(tmp_path, {"op": None})
    node_agent.sync_pod(pod_with(serviceAccountName="op"))
    [entry] = started
    assert entry.pod_ip == "127.3.0.1" and entry.account == "op"
    assert entry.token_dir is not None
    assert (entry.token_dir / "token").read_text() == "token-1"
    assert (entry.token_dir / "ca.crt").read_bytes() == b"CA PEM"
    assert (entry.token_dir / "namespace").read_text() == "fhe"
    assert node_agent.core.calls == [("read", "op", "fhe"), ("token", "op", "fhe", "u-1")]
    assert entry.token_renew_at is not None
    node_agent._renew_token(entry)
    assert (entry.token_dir / "token").read_text() == "token-2"


@pytest.mark.parametrize(
    ("spec", "accounts", "calls"),
    [
        ({"automountServiceAccountToken": False}, {"default": None}, []),
        ({"serviceAccountName": "quiet"}, {"quiet": False}, [("read", "quiet", "fhe")]),
    ],
)
def test_no_token_when_automount_is_off(tmp_path, spec, accounts, calls):
    node_agent, started = fake_agent(tmp_path, accounts)
    node_agent.sync_pod(pod_with(**spec))
    assert started[0].token_dir is None
    assert node_agent.core.calls == calls


def test_a_pod_without_its_account_waits_and_starts_once_it_exists(tmp_path):
    node_agent, started = fake_agent(tmp_path, {})
    pod = pod_with(serviceAccountName="late")
    node_agent.sync_pod(pod)
    node_agent.sync_pod(pod)  # a resync: still waiting, no second status write
    assert started == [] and node_agent.pods == {} and node_agent.pod_ips.by_uid == {}
    [patch] = node_agent.core.patches
    assert patch["status"]["phase"] == "Pending"
    waiting = patch["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ContainerCreating", "message": 'serviceaccount "late" not found'}
    node_agent.core.accounts["late"] = None
    node_agent.sync_pod(pod)
    assert [entry.name for entry in started] == ["p1"] and node_agent.waiting == {}
