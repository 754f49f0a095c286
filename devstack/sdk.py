"""Zama's client SDK (``@zama-fhe/relayer-sdk``, pinned by the installer) driven from
Python: what a dapp front end does to make an encrypted input, for the demo and the
tests. ``tools/sdk/sdk_input.js`` is the Node side (``createInstance`` with the key and
CRS from files, ``createEncryptedInput(...).addN(...)``, then ``generateZKProof`` or the
real ``encrypt()`` against a relayer URL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from coprocessor.errors import Fatal
from coprocessor.settings import load_settings

from .versions import REPO_ROOT, npm_prefix

SDK_INPUT = REPO_ROOT / "tools" / "sdk" / "sdk_input.js"


def run_node(script: Path, args: list[str], package: str) -> str:
    """``node script args...`` with the installer's npm packages on NODE_PATH (``package``
    must be among them); its stdout. Fatal, with its stderr, when it fails."""
    node_modules = npm_prefix(load_settings().cache_dir) / "node_modules"
    if not (node_modules / package).is_dir():
        raise Fatal(f"{package} is not installed; run `make setup`")
    done = subprocess.run(
        [shutil.which("node") or "node", str(script), *args],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise Fatal(f"{script.name} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _run_sdk(tmp_path: Path, public_key: bytes, crs: bytes, *args: str) -> dict:
    """tools/sdk/sdk_input.js with the key and CRS as files; its JSON line."""
    (tmp_path / "pk").write_bytes(public_key)
    (tmp_path / "crs").write_bytes(crs)
    files = ["--public-key", str(tmp_path / "pk"), "--crs", str(tmp_path / "crs")]
    out = run_node(SDK_INPUT, [args[0], *files, *args[1:]], "@zama-fhe/relayer-sdk")
    return json.loads(out.splitlines()[-1])


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
