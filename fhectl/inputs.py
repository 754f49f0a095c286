"""``fhectl input``: what an fhEVM client needs to prove, and the verify queue."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from coprocessor.db import proofs, queries
from coprocessor.errors import UserError
from coprocessor.kms import deployment_crs
from coprocessor.settings import load_settings
from coprocessor.storage import ObjectStore
from coprocessor.types import address_bytes

from .database import connected, tenant_named
from .output import OUTPUT, emit


def cmd_params(args: argparse.Namespace) -> int:
    """The deployment's CRS and the tenant's compact public key, as files a client
    proves against: the CRS the KMS activated, else the generated one (made on first
    use, crs.ensure_crs)."""
    settings = load_settings()

    async def public_key(connection):
        tenant = await tenant_named(connection, args.tenant)
        key = await queries.get_public_params(connection, tenant.tenant_id)
        if not key:
            raise UserError(
                f"tenant {tenant.name!r} ({tenant.backend}) has no compact "
                "public key: its backend takes no proven inputs"
            )
        return tenant, key

    async def params(connection):
        tenant, key = await public_key(connection)
        crs = await deployment_crs(
            connection, ObjectStore(settings), tenant.backend, settings.crs_max_bits
        )
        return tenant, key, crs

    tenant, key, crs = asyncio.run(connected(params))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crs").write_bytes(crs)
    (out / "public_key").write_bytes(key)
    emit(
        {
            "tenant": tenant.name,
            "chain_id": tenant.chain_id,
            "crs": str(out / "crs"),
            "crs_bits": settings.crs_max_bits,
            "public_key": str(out / "public_key"),
        },
        args.output,
    )
    return 0


def _address(text: str, what: str) -> bytes:
    raw = address_bytes(text)
    if raw is None:
        raise UserError(f"{what} address must be 0x and 20 bytes, got {text!r}")
    return raw


def cmd_submit(args: argparse.Namespace) -> int:
    """Queue a proven list as the gateway listener would (idempotent by request id).
    The arguments are checked before the file is read."""
    if not 0 < args.chain_id < 2**63 or not 0 <= args.id < 2**63:
        raise UserError("--chain-id must be in 1..2^63-1 and --id in 0..2^63-1")
    contract, user = _address(args.contract, "contract"), _address(args.user, "user")
    acl = _address(args.acl, "ACL") if args.acl else None
    try:
        data = Path(args.file).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {args.file}: {error.strerror}") from None
    if not data:
        raise UserError(f"{args.file} is empty")
    request = proofs.ProofRequest(args.id, args.chain_id, contract, user, data, acl_address=acl)
    queued = asyncio.run(connected(lambda c: proofs.insert_request(c, request)))
    emit({"zk_proof_id": args.id, "queued": queued}, args.output)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = asyncio.run(connected(lambda c: proofs.get_request_state(c, args.id)))
    if state is None:
        raise UserError(f"no verify request {args.id}")
    verdict = {None: "pending", True: "verified", False: "rejected"}[state.verified]
    emit(
        {
            "zk_proof_id": args.id,
            "state": verdict,
            "error": state.error_message,
            "handles": ["0x" + handle.hex() for handle in state.handles],
        },
        args.output,
    )
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    inputs = groups.add_parser(
        "input", help="proven inputs: parameters for clients, the verify queue"
    )
    commands = inputs.add_subparsers(dest="command", required=True, metavar="ACTION")
    params = commands.add_parser(
        "params",
        parents=[OUTPUT],
        help="write the CRS and the tenant's compact public key for a client to prove against",
    )
    params.add_argument("--tenant", required=True)
    params.add_argument("--out-dir", required=True)
    params.set_defaults(handler=cmd_params)
    queue = commands.add_parser(
        "submit", parents=[OUTPUT], help="queue a proven list for `fhe-job verify`"
    )
    queue.add_argument("--id", type=int, required=True, help="request id (the gateway's)")
    queue.add_argument("--chain-id", type=int, required=True)
    queue.add_argument("--contract", required=True, help="0x + 20 bytes")
    queue.add_argument("--user", required=True, help="0x + 20 bytes")
    queue.add_argument(
        "--acl",
        help="the host chain's ACL address the list is bound to (0x + 20 bytes); "
        "default FHE_HOST_ACL_ADDRESS",
    )
    queue.add_argument("file", help="the serialized ProvenCompactCiphertextList")
    queue.set_defaults(handler=cmd_submit)
    status = commands.add_parser(
        "status",
        parents=[OUTPUT],
        help="pending, verified (with the handles) or rejected (with the reason)",
    )
    status.add_argument("id", type=int)
    status.set_defaults(handler=cmd_status)
