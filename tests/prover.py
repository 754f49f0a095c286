"""Input lists made by the real fhEVM client library (node-tfhe from npm, WASM), driven
by tests/engine/node/prove.js: what a wallet would send."""

from __future__ import annotations

from pathlib import Path

from devstack.sdk import run_node

PROVER = Path(__file__).parent / "engine" / "node" / "prove.js"


def node_prove(
    tmp_path: Path, public_key: bytes, crs: bytes, metadata: bytes, *items: str
) -> bytes:
    (tmp_path / "pk").write_bytes(public_key)
    (tmp_path / "crs").write_bytes(crs)
    out = tmp_path / "list"
    files = [str(tmp_path / "pk"), str(tmp_path / "crs"), metadata.hex(), str(out)]
    run_node(PROVER, [*files, *items], "node-tfhe")
    return out.read_bytes()
