"""Input lists made by the real fhEVM client library (node-tfhe from npm, WASM), driven
by tests/engine/node/prove.js: what a wallet would send."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from coprocessor.settings import load_settings
from devstack.versions import npm_prefix

PROVER = Path(__file__).parent / "engine" / "node" / "prove.js"


def node_prove(
    tmp_path: Path, public_key: bytes, crs: bytes, metadata: bytes, *items: str
) -> bytes:
    node_modules = npm_prefix(load_settings().cache_dir) / "node_modules"
    assert (node_modules / "node-tfhe").is_dir(), "run `make setup` (installs node-tfhe)"
    (tmp_path / "pk").write_bytes(public_key)
    (tmp_path / "crs").write_bytes(crs)
    out = tmp_path / "list"
    done = subprocess.run(
        [
            shutil.which("node") or "node",
            str(PROVER),
            str(tmp_path / "pk"),
            str(tmp_path / "crs"),
            metadata.hex(),
            str(out),
            *items,
        ],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


SDK_INPUT = Path(__file__).parent / "engine" / "node" / "sdk_input.js"


def _run_sdk(tmp_path: Path, public_key: bytes, crs: bytes, *args: str) -> dict:
    """tests/engine/node/sdk_input.js with the key and CRS as files; its JSON line."""
    import json

    node_modules = npm_prefix(load_settings().cache_dir) / "node_modules"
    assert (node_modules / "@zama-fhe" / "relayer-sdk").is_dir(), (
        "run `make setup` (installs @zama-fhe/relayer-sdk)"
    )
    (tmp_path / "pk").write_bytes(public_key)
    (tmp_path / "crs").write_bytes(crs)
    done = subprocess.run(
        [
            shutil.which("node") or "node",
            str(SDK_INPUT),
            args[0],
            "--public-key",
            str(tmp_path / "pk"),
            "--crs",
            str(tmp_path / "crs"),
            *args[1:],
        ],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def sdk_prove(
    tmp_path: Path,
    public_key: bytes,
    crs: bytes,
    *,
    contract: str,
    user: str,
    acl: str,
    chain_id: int,
    gateway_chain_id: int,
    input_verification: str,
    items: list[str],
) -> tuple[bytes, list[bytes]]:
    """A proven list made by Zama's client SDK (@zama-fhe/relayer-sdk, its own node-tfhe
    1.4) as a dapp front end makes it, and the handles the SDK expects for it."""
    out = tmp_path / "sdk-list"
    printed = _run_sdk(
        tmp_path,
        public_key,
        crs,
        "prove",
        *("--contract", contract, "--user", user, "--acl", acl),
        *("--chain-id", str(chain_id), "--gateway-chain-id", str(gateway_chain_id)),
        *("--input-verification", input_verification, "--out", str(out)),
        *items,
    )
    return out.read_bytes(), [bytes.fromhex(h[2:]) for h in printed["handles"]]


def sdk_encrypt(
    tmp_path: Path,
    public_key: bytes,
    crs: bytes,
    host,
    *,
    contract: str,
    user: str,
    relayer_url: str,
    rpc_url: str,
    items: list[str],
) -> tuple[list[bytes], bytes]:
    """The SDK's real ``encrypt()``: createInstance reads the host chain's InputVerifier
    (signers, threshold, EIP-712 domain) over ``rpc_url``, the list goes to the relayer,
    and the SDK checks the signatures it gets back; (handles, inputProof)."""
    printed = _run_sdk(
        tmp_path,
        public_key,
        crs,
        "encrypt",
        *("--contract", contract, "--user", user, "--acl", host.acl),
        *("--chain-id", str(host.chain_id), "--gateway-chain-id", str(host.gateway_chain_id)),
        *("--input-verification", host.input_verification_address),
        *("--input-verifier", host.input_verifier, "--kms-verifier", host.kms_verifier),
        *("--decryption", host.decryption_address),
        *("--relayer-url", relayer_url, "--network", rpc_url),
        *items,
    )
    return (
        [bytes.fromhex(h[2:]) for h in printed["handles"]],
        bytes.fromhex(printed["inputProof"][2:]),
    )
