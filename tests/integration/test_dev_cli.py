"""``fhectl dev`` against real processes, in a state directory of the test's own."""

import json
import os
import socket
import subprocess
import sys

import pytest

from devstack import process

FHECTL = [sys.executable, "-m", "fhectl"]


def fhectl(*args, env=None, check=True):
    merged = {**os.environ, **(env or {})}
    result = subprocess.run(
        [*FHECTL, *args], capture_output=True, text=True, env=merged, timeout=180
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fhectl {args} exited {result.returncode}: {result.stderr}")
    return result


@pytest.fixture
def state_dir(tmp_path):
    yield tmp_path
    fhectl("dev", "down", "--state-dir", str(tmp_path), check=False)


def test_up_is_idempotent_status_env_and_down(state_dir):
    # The control plane has its own idempotency test (tests/e2e); skip it here.
    up = ("dev", "up", "--state-dir", str(state_dir), "--skip", "kube", "-o", "json")
    first = json.loads(fhectl(*up).stdout)
    assert not any(c["reused"] for c in first["components"].values())

    second = json.loads(fhectl(*up).stdout)
    assert all(c["reused"] for c in second["components"].values())

    status = json.loads(
        fhectl("dev", "status", "--state-dir", str(state_dir), "--skip", "kube").stdout
    )
    assert {name: c["healthy"] for name, c in status.items()} == {
        "postgres": True,
        "s3": True,
        "chain": True,
    }
    pids = {name: c["pid"] for name, c in status.items()}

    exports = fhectl("dev", "env", "--state-dir", str(state_dir)).stdout.splitlines()
    names = {line.split("=", 1)[0].removeprefix("export ") for line in exports}
    assert {
        "FHE_DATABASE_URL",
        "FHE_S3_ENDPOINT",
        "FHE_HOST_RPC_URL",
        "FHE_GATEWAY_RPC_URL",
        "FHE_STATE_DIR",
    } <= names

    down = json.loads(fhectl("dev", "down", "--state-dir", str(state_dir), "-o", "json").stdout)
    assert sorted(down["stopped"]) == ["chain", "postgres", "s3"]
    assert not any(process.is_running(pid) for pid in pids.values())
    after = fhectl("dev", "status", "--state-dir", str(state_dir), "--skip", "kube", check=False)
    assert after.returncode == 1
    assert not any(c["healthy"] for c in json.loads(after.stdout).values())


def test_down_never_kills_a_process_it_did_not_start(state_dir):
    """A recycled pid in the state file belongs to someone else: leave it alone."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (state_dir / "state.json").write_text(
            json.dumps({"components": {"postgres": {"pid": stranger.pid, "port": 1}}})
        )
        fhectl("dev", "down", "--state-dir", str(state_dir))
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_port_in_use_is_one_clear_line(state_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = fhectl(
            "dev",
            "up",
            "--state-dir",
            str(state_dir),
            "--skip",
            "s3,chain,kube",
            "--postgres-port",
            str(port),
            check=False,
        )
    assert result.returncode != 0
    expected = f"fhectl: error: postgres: port {port} on 127.0.0.1 is already in use"
    assert result.stderr.strip() == expected


@pytest.mark.parametrize(
    ("args", "env", "needle", "code"),
    [
        (["db", "migrate"], {"FHE_DATABASE_URL": "mysql://a/b"}, "FHE_DATABASE_URL", 3),
        (
            ["db", "migrate"],
            {"FHE_DATABASE_URL": "postgresql://fhe@127.0.0.1:9/none"},
            "postgres is unavailable",
            75,
        ),
        (["dev", "status", "--skip", "redis"], {}, "unknown component", 3),
        (["dev", "up", "--postgres-port", "http"], {}, "invalid int value", 2),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, env, needle, code, tmp_path):
    result = (
        fhectl(*args, "--state-dir", str(tmp_path), env=env, check=False)
        if args[0] == "dev"
        else fhectl(*args, env=env, check=False)
    )
    assert result.returncode == code
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    if code != 2:  # argparse prints usage above its error line
        assert len(result.stderr.strip().splitlines()) == 1


def test_corrupt_state_file_is_set_aside(state_dir):
    (state_dir / "state.json").write_text("{not json")
    result = fhectl("dev", "status", "--state-dir", str(state_dir), check=False)
    assert result.returncode == 1
    assert (state_dir / "state.corrupt").exists()


def test_dev_gateway_is_idempotent_and_keeps_its_key_private(dev_stack, tmp_path):
    """`fhectl dev gateway` deploys the gateway contracts once per state dir; the tx
    sender key file is 0600, a second call reuses contracts and key, and a host chain
    asked for later is registered without a new deployment."""
    env = {
        "FHE_GATEWAY_RPC_URL": dev_stack["FHE_GATEWAY_RPC_URL"],
        "FHE_S3_ENDPOINT": dev_stack["FHE_S3_ENDPOINT"],
    }
    args = ("dev", "gateway", "--state-dir", str(tmp_path), "-o", "json")
    first = json.loads(fhectl(*args, env=env).stdout)
    again = json.loads(fhectl(*args, env=env).stdout)
    assert first == again
    assert first["majority"] == 1 and 12345 in first["host_chain_ids"]
    assert first["bucket_url"] == f"{dev_stack['FHE_S3_ENDPOINT']}/fhe-ct128"
    key_file = tmp_path / "gateway" / "tx-sender.key"
    assert first["key_file"] == str(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The signer is a key of its own (what the host trusts), registered for the tx sender.
    signer_file = tmp_path / "gateway" / "signer.key"
    assert first["signer_key_file"] == str(signer_file)
    assert signer_file.stat().st_mode & 0o777 == 0o600
    assert first["signer"] not in (first["tx_sender"], "")
    more = json.loads(fhectl(*args, "--host-chain-id", "777", env=env).stdout)
    contracts = ("config", "commits", "acl", "input_verification", "kms_generation")
    assert [more[name] for name in contracts] == [first[name] for name in contracts]
    assert 777 in more["host_chain_ids"]
    for bad in ("0", str(2**64)):
        refused = fhectl(*args, "--host-chain-id", bad, env=env, check=False)
        assert refused.returncode == 3 and "positive 64-bit integer" in refused.stderr
    lines = fhectl("dev", "gateway", "--state-dir", str(tmp_path), "--env", env=env).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines.splitlines())
    assert exports == {
        "FHE_GATEWAY_CONFIG_ADDRESS": first["config"],
        "FHE_GATEWAY_COMMITS_ADDRESS": first["commits"],
        "FHE_GATEWAY_ACL_ADDRESS": first["acl"],
        "FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS": first["input_verification"],
        "FHE_GATEWAY_KMS_GENERATION_ADDRESS": first["kms_generation"],
    }
    # a state recorded before InputVerification and KMSGeneration existed: deployed anew
    record = tmp_path / "gateway" / "gateway.json"
    older = json.loads(record.read_text())
    del older["input_verification"], older["kms_generation"]
    record.write_text(json.dumps(older))
    anew = json.loads(fhectl(*args, env=env).stdout)
    assert anew["config"] != first["config"]
    assert set(json.loads(record.read_text())) >= {"input_verification", "kms_generation"}


def test_dev_host_chain_prints_env_lines(dev_stack):
    env = {"FHE_HOST_RPC_URL": dev_stack["FHE_HOST_RPC_URL"]}
    lines = fhectl("dev", "host-chain", "--env", env=env).stdout.splitlines()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert exports["FHE_HOST_ACL_ADDRESS"].startswith("0x")
    assert len(exports["FHE_HOST_EXECUTOR_ADDRESS"]) == 42
