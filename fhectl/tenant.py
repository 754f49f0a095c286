"""``fhectl tenant``: tenants and their keysets."""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from coprocessor import tenants
from coprocessor.db import queries
from coprocessor.settings import load_settings
from coprocessor.storage import ObjectStore

from .output import OUTPUT, emit


def cmd_create(args: argparse.Namespace) -> int:
    from .database import connected

    settings = load_settings()
    tenants.check_name(args.name)
    kms_key_id = tenants.parse_kms_key_id(args.kms_key_id) if args.kms_key_id else None
    namespaces = [tenants.check_namespace(n) for n in args.namespace or ()]
    store = ObjectStore(settings)
    store.check()

    async def create(connection: asyncpg.Connection):
        created = await tenants.create_tenant(
            connection,
            store,
            settings,
            args.name,
            args.chain_id,
            args.backend,
            kms_key_id=kms_key_id,
        )
        bound = await queries.bind_namespaces(connection, created.tenant.tenant_id, namespaces)
        return created, bound

    result, bound = asyncio.run(connected(create))
    tenant = result.tenant
    emit(
        {
            "tenant": tenant.name,
            "created": result.created,
            "backend": tenant.backend,
            "chain_id": tenant.chain_id,
            "key_id": "0x" + tenant.key_id.hex(),
            "kms_key_id": _shown(tenant.kms_key_id),
            "namespaces": bound,
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


def cmd_bind(args: argparse.Namespace) -> int:
    """Let FheBatches of these namespaces use the tenant (or, unbind, no longer)."""
    from .database import connected, tenant_named

    namespaces = [tenants.check_namespace(n) for n in args.namespace]

    async def bind(connection: asyncpg.Connection) -> list[str]:
        tenant = await tenant_named(connection, args.name)
        change = queries.unbind_namespaces if args.unbind else queries.bind_namespaces
        return await change(connection, tenant.tenant_id, namespaces)

    emit({"tenant": args.name, "namespaces": asyncio.run(connected(bind))}, args.output)
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
    create.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="a namespace whose FheBatches may use this tenant (repeatable; see `bind`)",
    )
    create.set_defaults(handler=cmd_create)
    bind = commands.add_parser(
        "bind",
        parents=[OUTPUT],
        help="let FheBatches of a namespace use the tenant (idempotent); a tenant bound "
        "nowhere can be used nowhere",
    )
    bind.add_argument("name")
    bind.add_argument("--namespace", action="append", required=True, metavar="NS")
    bind.add_argument("--unbind", action="store_true", help="remove the namespaces instead")
    bind.set_defaults(handler=cmd_bind)
    # The same, in the words of access control: allow adds namespaces, deny removes them.
    for verb, unbind in (("allow", False), ("deny", True)):
        alias = commands.add_parser(
            verb,
            parents=[OUTPUT],
            help=f"{'bind' if not unbind else 'unbind'} namespaces (= bind"
            f"{' --unbind' if unbind else ''})",
        )
        alias.add_argument("name")
        alias.add_argument("--namespace", action="append", required=True, metavar="NS")
        alias.set_defaults(handler=cmd_bind, unbind=unbind)
    activate = commands.add_parser(
        "activate",
        parents=[OUTPUT],
        help="record the KMS key id the tenant's keyset was activated under (idempotent)",
    )
    activate.add_argument("name")
    activate.add_argument("--kms-key-id", required=True, help="decimal or 0x-hex uint256")
    activate.set_defaults(handler=cmd_activate)
