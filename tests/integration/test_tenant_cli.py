"""``fhectl tenant create`` / ``encrypt`` / ``decrypt`` against real PostgreSQL, S3 and
real TFHE-rs keys (one key generation for the module: about 20 s)."""

import os
import subprocess
import sys

import boto3
import pytest

FHECTL = [sys.executable, "-m", "coprocessor.cli"]


@pytest.fixture(scope="module")
def cli_env(dev_stack, tmp_path_factory):
    return {**os.environ, **dev_stack,
            "FHE_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}


def fhectl(env, *args, check=True):
    result = subprocess.run([*FHECTL, *args], env=env, capture_output=True, text=True,
                            timeout=300)
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
    s3 = boto3.client("s3", endpoint_url=tenant_env["FHE_S3_ENDPOINT"],
                      aws_access_key_id=tenant_env["FHE_S3_ACCESS_KEY"],
                      aws_secret_access_key=tenant_env["FHE_S3_SECRET_KEY"],
                      region_name="us-east-1")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 1_000_000
    # The local server-key copy exists only until S3 and the database have it.
    assert not os.path.exists(os.path.join(os.path.dirname(client_key), "server_key"))


@pytest.mark.parametrize(("fhe_type", "value"), [
    ("Bool", "1"), ("Uint8", "200"), ("Uint64", "0xfffffffffffffffe"),
    ("Uint256", str(2**255 + 9)),
])
def test_encrypt_then_decrypt(tenant_env, fhe_type, value):
    handle = fhectl(tenant_env, "encrypt", "--tenant", "acme", "--type", fhe_type,
                    value).stdout.strip()
    assert handle.startswith("0x") and len(handle) == 66
    assert bytes.fromhex(handle[2:])[22:30] == (8009).to_bytes(8, "big")  # chain id
    decrypted = fhectl(tenant_env, "decrypt", "--tenant", "acme", handle).stdout.strip()
    assert int(decrypted) == int(value, 0)


@pytest.mark.parametrize(("args", "needle"), [
    (["encrypt", "--tenant", "nobody", "--type", "Uint8", "1"], "unknown tenant 'nobody'"),
    (["encrypt", "--tenant", "acme", "--type", "Uint8", "256"], "does not fit Uint8"),
    (["encrypt", "--tenant", "acme", "--type", "Uint7", "1"], "unknown FHE type"),
    (["encrypt", "--tenant", "acme", "--type", "Uint8", "ten"], "invalid literal"),
    (["decrypt", "--tenant", "acme", "0x12"], "32 bytes"),
    (["decrypt", "--tenant", "acme", "0x" + "00" * 32], "no ciphertext"),
    (["tenant", "create", "Not_OK"], "tenant name 'Not_OK'"),
    (["tenant", "create", "x", "--backend", "paillier"], "unknown FHE backend"),
])
def test_bad_input_is_one_line_and_nothing_is_stored(tenant_env, args, needle):
    result = fhectl(tenant_env, *args, check=False)
    assert result.returncode == 3, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
