"""``fhectl encrypt`` and ``fhectl decrypt``: a tenant's ciphertexts, with its client key."""

from __future__ import annotations

import argparse
import asyncio

from coprocessor import tenants
from coprocessor.db import queries
from coprocessor.errors import UserError
from coprocessor.settings import load_settings
from coprocessor.types import FheType, Handle

from .database import connected, tenant_named


def cmd_encrypt(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        fhe_type = FheType.parse(args.type)
        value = int(args.value, 0)
    except ValueError as error:
        raise UserError(str(error)) from None

    async def run(connection):
        tenant = await tenant_named(connection, args.tenant)
        client = tenants.load_client(settings, tenant)
        try:
            ciphertext = client.encrypt(value, fhe_type)
        except ValueError as error:
            raise UserError(str(error)) from None
        handle = tenants.input_handle(ciphertext, tenant.chain_id, fhe_type)
        await queries.insert_ciphertext(
            connection, tenant.tenant_id, handle, ciphertext, 0, int(fhe_type)
        )
        return handle

    handle = asyncio.run(connected(run))
    print("0x" + handle.hex())
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        handle = Handle.parse(args.handle)
    except ValueError as error:
        raise UserError(str(error)) from None

    async def run(connection):
        tenant = await tenant_named(connection, args.tenant)
        stored = await queries.get_ciphertexts(connection, tenant.tenant_id, [handle.raw])
        if handle.raw not in stored:
            raise UserError(f"no ciphertext {handle} for tenant {tenant.name!r}")
        return tenants.load_client(settings, tenant).decrypt(stored[handle.raw].ciphertext)

    print(asyncio.run(connected(run)))
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    encrypt = groups.add_parser("encrypt", help="encrypt a value, store it, print its handle")
    encrypt.add_argument("--tenant", required=True)
    encrypt.add_argument("--type", required=True, help="Bool, Uint4 ... Uint256")
    encrypt.add_argument("value", help="decimal or 0x-hex")
    encrypt.set_defaults(handler=cmd_encrypt)

    decrypt = groups.add_parser("decrypt", help="print the plaintext of a stored ciphertext")
    decrypt.add_argument("--tenant", required=True)
    decrypt.add_argument("handle", help="32-byte handle, 0x-hex")
    decrypt.set_defaults(handler=cmd_decrypt)
