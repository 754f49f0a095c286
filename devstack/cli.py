"""``fhectl dev``: the local stack, as a command group fhectl loads from the entry point
group ``fhectl.commands`` (declared by the fhe-devstack distribution), so the product's
fhectl carries no dev tooling and the dev install still gets one command line. It prints
through fhectl's own output module, so ``-o`` means the same everywhere."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from coprocessor.settings import load_settings
from fhectl.output import OUTPUT, emit

from . import stack
from .settings import default_state_dir


def _stack_args(args: argparse.Namespace) -> tuple[Path, list]:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    skip = {part for part in (args.skip or "").split(",") if part}
    ports = {name: getattr(args, f"{name}_port", None) for name in ("postgres", "s3", "chain")}
    return state_dir, stack.select(stack.default_components(ports), skip)


def cmd_up(args: argparse.Namespace) -> int:
    state_dir, components = _stack_args(args)
    report = stack.up(state_dir, components)
    emit({"state_dir": str(state_dir), "components": report}, args.output)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir, components = _stack_args(args)
    emit({"stopped": stack.down(state_dir, components)}, args.output)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir, components = _stack_args(args)
    report = stack.status(state_dir, components)
    emit(report, "json")
    return 0 if all(c["healthy"] for c in report.values()) else 1


def _print_exports(variables: dict[str, str]) -> None:
    """Lines a shell can `eval`: one `export KEY=value` per variable, quoted."""
    for key, value in variables.items():
        print(f"export {key}={shlex.quote(value)}")


def cmd_env(args: argparse.Namespace) -> int:
    state_dir, components = _stack_args(args)
    _print_exports(stack.env(state_dir, components))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway import ensure_dev_gateway

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    gateway = ensure_dev_gateway(state_dir, load_settings(), args.host_chain_id or ())
    if args.env:
        _print_exports(gateway.env())
    else:
        emit(gateway.as_dict(), args.output)
    return 0


def cmd_host_chain(args: argparse.Namespace) -> int:
    from web3 import Web3

    from .host_chain import ensure_host_chain

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    w3 = Web3(Web3.HTTPProvider(load_settings().host_rpc_url, request_kwargs={"timeout": 10}))
    host = ensure_host_chain(w3, state_dir)
    if args.env:
        _print_exports(host.env())
    else:
        emit(host.as_dict(), args.output)
    return 0


def cmd_kms(args: argparse.Namespace) -> int:
    """Publish a tenant's keyset and the deployment's CRS as a KMS would, and activate
    them on the dev gateway's KMSGeneration (devstack.kms)."""
    import asyncio

    from web3 import Web3

    from coprocessor.errors import UserError
    from coprocessor.kms import deployment_crs
    from coprocessor.storage import ObjectStore
    from coprocessor.tenants import load_server_key, parse_kms_key_id
    from fhectl.database import connected, tenant_named

    from .kms import DEV_CRS_ID, publish_and_activate

    settings = load_settings()
    store = ObjectStore(settings)

    async def material(connection):
        tenant = await tenant_named(connection, args.tenant)
        public_key = await connection.fetchval(
            "SELECT public_params FROM tenants WHERE tenant_id = $1", tenant.tenant_id
        )
        crs = await deployment_crs(connection, store, tenant.backend, settings.crs_max_bits)
        return tenant, public_key, crs

    tenant, public_key, crs = asyncio.run(connected(material))
    key_id = parse_kms_key_id(args.key_id) if args.key_id else tenant.kms_key_id
    if key_id is None:
        raise UserError(f"tenant {tenant.name!r} has no KMS key id; give --key-id")
    if not public_key:
        raise UserError(f"tenant {tenant.name!r} has no compact public key to publish")
    w3 = Web3(Web3.HTTPProvider(settings.gateway_rpc_url, request_kwargs={"timeout": 10}))
    published = publish_and_activate(
        settings,
        w3,
        key_id,
        load_server_key(store, tenant),
        bytes(public_key),
        crs,
        parse_kms_key_id(args.crs_id) if args.crs_id else DEV_CRS_ID,
    )
    emit(published.as_dict(), args.output)
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    dev = groups.add_parser("dev", help="the local stack (PostgreSQL, S3, chain)")
    commands = dev.add_subparsers(dest="command", required=True, metavar="ACTION")
    for name, handler, text in (
        ("up", cmd_up, "start every component (idempotent)"),
        ("down", cmd_down, "stop the processes `up` started"),
        ("status", cmd_status, "JSON health per component; exit 1 if any is unhealthy"),
        ("env", cmd_env, "export lines that point clients at the stack"),
    ):
        sub = commands.add_parser(name, help=text, description=text, parents=[OUTPUT])
        sub.add_argument(
            "--state-dir",
            help="stack data and pid files (default: FHE_STATE_DIR "
            "or ~/.cache/fhe-coprocessor/dev)",
        )
        sub.add_argument("--skip", help="comma-separated components to leave out")
        sub.set_defaults(handler=handler)
        if name == "up":
            for component in ("postgres", "s3", "chain"):
                sub.add_argument(
                    f"--{component}-port",
                    type=int,
                    metavar="PORT",
                    help=f"{component} port (default: a free one, kept across restarts)",
                )

    gateway = commands.add_parser(
        "gateway",
        parents=[OUTPUT],
        help="deploy the gateway contracts (GatewayConfig, CiphertextCommits, "
        "MultichainACL) with a dev tx sender on the stack's chain (idempotent); prints "
        "their addresses and where the tx sender key is",
    )
    gateway.add_argument("--state-dir", help="where the addresses and key are kept")
    gateway.add_argument(
        "--host-chain-id",
        type=int,
        action="append",
        metavar="ID",
        help="host chain to register (repeatable; default: the chain's own id and "
        "12345, fhectl tenant create's default)",
    )
    gateway.add_argument(
        "--env", action="store_true", help="print export lines (FHE_GATEWAY_*_ADDRESS=...)"
    )
    gateway.set_defaults(handler=cmd_gateway)

    host_chain = commands.add_parser(
        "host-chain",
        parents=[OUTPUT],
        help="deploy Zama's fhEVM host contracts (ACL, FHEVMExecutor, KMSVerifier, "
        "InputVerifier, HCULimit, PauserSet) with the dev deployer and dev signers on the "
        "stack's chain (idempotent); prints their addresses",
    )
    host_chain.add_argument("--state-dir", help="where the signer keys are kept")
    host_chain.add_argument(
        "--env", action="store_true", help="print export lines (FHE_HOST_ACL_ADDRESS=...)"
    )
    host_chain.set_defaults(handler=cmd_host_chain)

    kms = commands.add_parser(
        "kms",
        parents=[OUTPUT],
        help="KMS stand-in: publish a tenant's keyset and the CRS in the KMS storage layout "
        "(bucket fhe-kms) and activate them on the dev gateway's KMSGeneration (idempotent)",
    )
    kms.add_argument("action", choices=["activate"])
    kms.add_argument("--tenant", required=True)
    kms.add_argument("--key-id", help="KMS key id (default: the tenant's)")
    kms.add_argument("--crs-id", help="CRS id (default: (5 << 248) + 1)")
    kms.set_defaults(handler=cmd_kms)
