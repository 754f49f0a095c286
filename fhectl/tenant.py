"""``fhectl tenant``: tenants and their keysets."""

from __future__ import annotations

import argparse
import asyncio

from coprocessor import tenants
from coprocessor.settings import load_settings
from coprocessor.storage import ObjectStore

from .output import OUTPUT, emit


def cmd_create(args: argparse.Namespace) -> int:
    from .database import connected

    settings = load_settings()
    tenants.check_name(args.name)
    kms_key_id = tenants.parse_kms_key_id(args.kms_key_id) if args.kms_key_id else None
    store = ObjectStore(settings)
    store.check()
    result = asyncio.run(
        connected(
            lambda c: tenants.create_tenant(
                c, store, settings, args.name, args.chain_id, args.backend, kms_key_id=kms_key_id
            )
        )
    )
    tenant = result.tenant
    emit(
        {
            "tenant": tenant.name,
            "created": result.created,
            "backend": tenant.backend,
            "chain_id": tenant.chain_id,
            "key_id": "0x" + tenant.key_id.hex(),
            "kms_key_id": _shown(tenant.kms_key_id),
            "server_key": tenant.keys_location,
            "client_key": str(tenants.key_dir(settings, tenant.name) / "client_key"),
        },
        args.output,
    )
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    from .database import connected

    tenants.check_name(args.name)
    kms_key_id = tenants.parse_kms_key_id(args.kms_key_id)
    tenant = asyncio.run(connected(lambda c: tenants.activate(c, args.name, kms_key_id)))
    emit({"tenant": tenant.name, "kms_key_id": _shown(tenant.kms_key_id)}, args.output)
    return 0


def _shown(kms_key_id: int | None) -> str | None:
    """0x + 64 hex digits, as Zama's tools print key ids."""
    return None if kms_key_id is None else f"0x{kms_key_id:064x}"


def register(groups: argparse._SubParsersAction) -> None:
    tenant = groups.add_parser("tenant", help="tenants and their keysets")
    commands = tenant.add_subparsers(dest="command", required=True, metavar="ACTION")
    create = commands.add_parser(
        "create", parents=[OUTPUT], help="generate a keyset (idempotent by name)"
    )
    create.add_argument("name")
    create.add_argument("--chain-id", type=int, default=12345)
    create.add_argument("--backend", default="tfhe-rs")
    create.add_argument(
        "--kms-key-id",
        help="the KMS's id of this keyset (decimal or 0x-hex uint256); committed with "
        "every ciphertext. Without it, nothing of the tenant is committed until "
        "`fhectl tenant activate`",
    )
    create.set_defaults(handler=cmd_create)
    activate = commands.add_parser(
        "activate",
        parents=[OUTPUT],
        help="record the KMS key id the tenant's keyset was activated under (idempotent)",
    )
    activate.add_argument("name")
    activate.add_argument("--kms-key-id", required=True, help="decimal or 0x-hex uint256")
    activate.set_defaults(handler=cmd_activate)
