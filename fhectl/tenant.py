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
    store = ObjectStore(settings)
    store.check()
    result = asyncio.run(
        connected(
            lambda c: tenants.create_tenant(
                c, store, settings, args.name, args.chain_id, args.backend
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
            "server_key": tenant.keys_location,
            "client_key": str(tenants.key_dir(settings, tenant.name) / "client_key"),
        },
        args.output,
    )
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    tenant = groups.add_parser("tenant", help="tenants and their keysets")
    commands = tenant.add_subparsers(dest="command", required=True, metavar="ACTION")
    create = commands.add_parser(
        "create", parents=[OUTPUT], help="generate a keyset (idempotent by name)"
    )
    create.add_argument("name")
    create.add_argument("--chain-id", type=int, default=12345)
    create.add_argument("--backend", default="tfhe-rs")
    create.set_defaults(handler=cmd_create)
