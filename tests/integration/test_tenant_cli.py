"""``fhectl tenant create`` / ``encrypt`` / ``decrypt`` against real PostgreSQL, S3 and
real TFHE-rs keys (one key generation for the module: about 20 s)."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

FHECTL = [sys.executable, "-m", "fhectl"]


@pytest.fixture(scope="module")
def cli_env(dev_stack, tmp_path_factory):
    return {**os.environ, **dev_stack, "FHE_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}


def fhectl(env, *args, check=True):
    result = subprocess.run([*FHECTL, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"fhectl {args}: {result.returncode} {result.stderr}")
    return result


@pytest.fixture(scope="module")
def tenant_env(cli_env, database_url_module):
    env = {**cli_env, "FHE_DATABASE_URL": database_url_module}
    fhectl(env, "tenant", "create", "acme", "--chain-id", "8009")
    return env


def test_create_is_idempotent_and_keys_land_where_they_belong(tenant_env):
    import json

    again = json.loads(fhectl(tenant_env, "tenant", "create", "acme", "-o", "json").stdout)
    assert again["created"] is False and again["backend"] == "tfhe-rs"
    client_key = again["client_key"]
    assert oct(os.stat(client_key).st_mode & 0o777) == "0o600"
    bucket, key = again["server_key"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client(
        "s3",
        endpoint_url=tenant_env["FHE_S3_ENDPOINT"],
        aws_access_key_id=tenant_env["FHE_S3_ACCESS_KEY"],
        aws_secret_access_key=tenant_env["FHE_S3_SECRET_KEY"],
        region_name="us-east-1",
    )
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 1_000_000
    # The local server-key copy exists only until S3 and the database have it.
    assert not os.path.exists(os.path.join(os.path.dirname(client_key), "server_key"))


def test_namespaces_and_the_kms_key_id_of_a_tenant(tenant_env):
    """Bound namespaces are what FheBatches may use it from; the KMS key id is set once."""
    import json

    def run(*args):
        return json.loads(fhectl(tenant_env, "tenant", *args, "-o", "json").stdout)

    assert run("create", "acme", "--namespace", "team-a")["namespaces"] == ["team-a"]
    assert run("bind", "acme", "--namespace", "team-b", "--namespace", "team-a")["namespaces"] == [
        "team-a",
        "team-b",
    ]
    assert run("bind", "acme", "--namespace", "team-a", "--unbind")["namespaces"] == ["team-b"]
    # allow / deny: the same, in the words of access control
    assert run("allow", "acme", "--namespace", "team-c")["namespaces"] == ["team-b", "team-c"]
    assert run("deny", "acme", "--namespace", "team-b")["namespaces"] == ["team-c"]
    key_id = f"0x{(4 << 248) + 99:064x}"
    assert run("activate", "acme", "--kms-key-id", key_id)["kms_key_id"] == key_id
    assert run("activate", "acme", "--kms-key-id", str((4 << 248) + 99))["kms_key_id"] == key_id
    refused = fhectl(tenant_env, "tenant", "activate", "acme", "--kms-key-id", "5", check=False)
    assert refused.returncode == 3 and "already activated under KMS key id" in refused.stderr


@pytest.mark.parametrize(
    ("fhe_type", "value"),
    [
        ("Bool", "1"),
        ("Uint8", "200"),
        ("Uint64", "0xfffffffffffffffe"),
        ("Uint256", str(2**255 + 9)),
    ],
)
def test_encrypt_then_decrypt(tenant_env, fhe_type, value):
    handle = fhectl(
        tenant_env, "encrypt", "--tenant", "acme", "--type", fhe_type, value
    ).stdout.strip()
    assert handle.startswith("0x") and len(handle) == 66
    assert bytes.fromhex(handle[2:])[22:30] == (8009).to_bytes(8, "big")  # chain id
    decrypted = fhectl(tenant_env, "decrypt", "--tenant", "acme", handle).stdout.strip()
    assert int(decrypted) == int(value, 0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["encrypt", "--tenant", "nobody", "--type", "Uint8", "1"], "unknown tenant 'nobody'"),
        (["encrypt", "--tenant", "acme", "--type", "Uint8", "256"], "does not fit Uint8"),
        (["encrypt", "--tenant", "acme", "--type", "Uint7", "1"], "unknown FHE type"),
        (["encrypt", "--tenant", "acme", "--type", "Uint8", "ten"], "invalid literal"),
        (["decrypt", "--tenant", "acme", "0x12"], "32 bytes"),
        (["decrypt", "--tenant", "acme", "0x" + "00" * 32], "no ciphertext"),
        (["tenant", "create", "Not_OK"], "tenant name 'Not_OK'"),
        (["tenant", "create", "x", "--backend", "paillier"], "unknown FHE backend"),
        (["tenant", "create", "x", "--namespace", "Bad_NS"], "namespace 'Bad_NS' is not"),
        (["tenant", "create", "x", "--kms-key-id", "0x10g"], "is not a decimal or 0x-hex"),
        (["tenant", "create", "x", "--kms-key-id", str(2**256)], "does not fit a uint256"),
        (["tenant", "bind", "nobody", "--namespace", "ns"], "unknown tenant 'nobody'"),
        (["tenant", "activate", "nobody", "--kms-key-id", "1"], "tenant 'nobody' does not"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_stored(tenant_env, args, needle):
    result = fhectl(tenant_env, *args, check=False)
    assert result.returncode == 3, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- fhectl input: a client's whole path, CLI to CLI -----------------------------------


def test_a_client_proves_against_the_params_and_the_queue_answers(tenant_env, tmp_path):
    """params -> node-tfhe proves -> input submit -> fhe-job verify -> input status ->
    decrypt the stored inputs."""
    import json

    from coprocessor.fhe.engine import input_metadata

    from ..prover import node_prove

    env = {**tenant_env, "FHE_CRS_MAX_BITS": "128"}  # deployments use 2048
    params = json.loads(
        fhectl(
            env,
            "input",
            "params",
            "--tenant",
            "acme",
            "--out-dir",
            str(tmp_path / "params"),
            "-o",
            "json",
        ).stdout
    )
    assert params["chain_id"] == 8009 and params["crs_bits"] == 128
    contract, user, acl = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
    (tmp_path / "prove").mkdir()
    proven = node_prove(
        tmp_path / "prove",
        Path(params["public_key"]).read_bytes(),
        Path(params["crs"]).read_bytes(),
        input_metadata(contract, user, acl, 8009),
        "Uint64:1000",
        "Bool:1",
    )
    (tmp_path / "list").write_bytes(proven)
    submit = [
        "input",
        "submit",
        "--id",
        "41",
        "--chain-id",
        "8009",
        "--contract",
        contract,
        "--user",
        user,
        "--acl",
        acl,
        str(tmp_path / "list"),
        "-o",
        "json",
    ]
    assert json.loads(fhectl(env, *submit).stdout)["queued"] is True
    assert json.loads(fhectl(env, *submit).stdout)["queued"] is False  # once per id
    pending = json.loads(fhectl(env, "input", "status", "41", "-o", "json").stdout)
    assert pending["state"] == "pending" and pending["handles"] == []

    verify = subprocess.run(
        [sys.executable, "-m", "job_runner", "verify"],
        env={**env, "FHE_TERMINATION_LOG": str(tmp_path / "termination")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    report = json.loads((tmp_path / "termination").read_text())
    assert (report["verified"], report["inputs"]) == (1, 2)

    status = json.loads(fhectl(env, "input", "status", "41", "-o", "json").stdout)
    assert status["state"] == "verified" and status["error"] is None
    values = [int(fhectl(env, "decrypt", "--tenant", "acme", h).stdout) for h in status["handles"]]
    assert values == [1000, 1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            [
                "input",
                "submit",
                "--id",
                "1",
                "--chain-id",
                "8009",
                "--contract",
                "0x12",
                "--user",
                "0x" + "22" * 20,
                "/dev/null",
            ],
            "contract address must be 0x and 20 bytes",
        ),
        (
            [
                "input",
                "submit",
                "--id",
                "1",
                "--chain-id",
                "8009",
                "--contract",
                "0x" + "11" * 20,
                "--user",
                "0x" + "22" * 20,
                "/dev/null",
            ],
            "is empty",
        ),
        (
            [
                "input",
                "submit",
                "--id",
                "1",
                "--chain-id",
                "0",
                "--contract",
                "0x" + "11" * 20,
                "--user",
                "0x" + "22" * 20,
                "/etc/hostname",
            ],
            "--chain-id must be",
        ),
        (
            [
                "input",
                "submit",
                "--id",
                "1",
                "--chain-id",
                "8009",
                "--contract",
                "0x" + "11" * 20,
                "--user",
                "0x" + "22" * 20,
                "/nonexistent",
            ],
            "cannot read /nonexistent",
        ),
        (
            [
                "input",
                "submit",
                "--id",
                "1",
                "--chain-id",
                "8009",
                "--contract",
                "0x" + "11" * 20,
                "--user",
                "0x" + "22" * 20,
                "--acl",
                "0xabc",
                "/etc/hostname",
            ],
            "ACL address must be 0x and 20 bytes",
        ),
        (["input", "status", "999999"], "no verify request 999999"),
        (["dev", "kms", "activate", "--tenant", "nobody"], "unknown tenant 'nobody'"),
        (
            ["input", "params", "--tenant", "nobody", "--out-dir", "/tmp/x-params"],
            "unknown tenant 'nobody'",
        ),
    ],
)
def test_bad_input_commands_are_one_line_and_queue_nothing(tenant_env, args, needle):
    result = fhectl(tenant_env, *args, check=False)
    assert result.returncode == 3, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
