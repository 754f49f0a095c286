"""``fhectl``: one command line for people and scripts (DESIGN.md section 9).

Every user error ends as one line on stderr and a non-zero exit code; tracebacks are
kept for bugs. Commands that print data accept ``-o json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import EXIT_FATAL, CoprocessorError, UserError
from .logs import configure_logging
from .settings import load_settings


def _print(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif isinstance(data, dict):
        for key, value in data.items():
            print(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict) else value}")
    else:
        print(data)


# --- fhectl dev ----------------------------------------------------------------------

def _stack_args(args: argparse.Namespace) -> tuple[Path, list]:
    from .devstack import stack

    state_dir = Path(args.state_dir) if args.state_dir else load_settings().dev_state_dir
    skip = {part for part in (args.skip or "").split(",") if part}
    ports = {name: getattr(args, f"{name}_port", None) for name in ("postgres", "s3", "chain")}
    return state_dir, stack.select(stack.default_components(ports), skip)


def cmd_dev_up(args: argparse.Namespace) -> int:
    from .devstack import stack

    state_dir, components = _stack_args(args)
    report = stack.up(state_dir, components)
    _print({"state_dir": str(state_dir), "components": report}, args.output)
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    from .devstack import stack

    state_dir, components = _stack_args(args)
    stopped = stack.down(state_dir, components)
    _print({"stopped": stopped}, args.output)
    return 0


def cmd_dev_status(args: argparse.Namespace) -> int:
    from .devstack import stack

    state_dir, components = _stack_args(args)
    report = stack.status(state_dir, components)
    _print(report, "json")
    return 0 if all(c["healthy"] for c in report.values()) else 1


def cmd_dev_env(args: argparse.Namespace) -> int:
    import shlex

    from .devstack import stack

    state_dir, components = _stack_args(args)
    for key, value in stack.env(state_dir, components).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_dev_gateway(args: argparse.Namespace) -> int:
    from .devstack.gateway import ensure_dev_gateway

    settings = load_settings()
    state_dir = Path(args.state_dir) if args.state_dir else settings.dev_state_dir
    gateway = ensure_dev_gateway(state_dir, settings.gateway_rpc_url)
    _print(gateway.as_dict(), args.output)
    return 0


# --- fhectl db -------------------------------------------------------------------------

def cmd_db_migrate(args: argparse.Namespace) -> int:
    from .db import migrate

    settings = load_settings()
    applied = asyncio.run(migrate.migrate(settings.database_url, settings.migrations_dir))
    _print({"applied": applied, "version": migrate.latest_version(settings.migrations_dir)},
           args.output)
    return 0


# --- fhectl tenant / encrypt / decrypt --------------------------------------------------

async def _connected(action):
    """Run ``action(connection)`` on one database connection."""
    from .db.pool import connect

    connection = await connect(load_settings().database_url)
    try:
        return await action(connection)
    finally:
        await connection.close()


async def _tenant(connection, name: str):
    from .db import queries

    tenant = await queries.get_tenant(connection, name)
    if tenant is None:
        raise UserError(f"unknown tenant {name!r}; create it with `fhectl tenant create {name}`")
    return tenant


def cmd_tenant_create(args: argparse.Namespace) -> int:
    from . import tenants
    from .storage import ObjectStore

    settings = load_settings()
    tenants.check_name(args.name)
    store = ObjectStore(settings)
    store.check()
    result = asyncio.run(_connected(lambda c: tenants.create_tenant(
        c, store, settings, args.name, args.chain_id, args.backend)))
    tenant = result.tenant
    _print({"tenant": tenant.name, "created": result.created, "backend": tenant.backend,
            "chain_id": tenant.chain_id, "key_id": "0x" + tenant.key_id.hex(),
            "server_key": tenant.keys_location,
            "client_key": str(tenants.key_dir(settings, tenant.name) / "client_key")},
           args.output)
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    from . import tenants
    from .db import queries
    from .types import FheType

    settings = load_settings()
    try:
        fhe_type = FheType.parse(args.type)
        value = int(args.value, 0)
    except ValueError as error:
        raise UserError(str(error)) from None

    async def run(connection):
        tenant = await _tenant(connection, args.tenant)
        client = tenants.load_client(settings, tenant)
        try:
            ciphertext = client.encrypt(value, fhe_type)
        except ValueError as error:
            raise UserError(str(error)) from None
        handle = tenants.input_handle(ciphertext, tenant.chain_id, fhe_type)
        await queries.insert_ciphertext(connection, tenant.tenant_id, handle, ciphertext, 0,
                                        int(fhe_type))
        return handle

    handle = asyncio.run(_connected(run))
    print("0x" + handle.hex())
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from . import tenants
    from .db import queries
    from .types import Handle

    settings = load_settings()
    try:
        handle = Handle.parse(args.handle)
    except ValueError as error:
        raise UserError(str(error)) from None

    async def run(connection):
        tenant = await _tenant(connection, args.tenant)
        stored = await queries.get_ciphertexts(connection, tenant.tenant_id, [handle.raw])
        if handle.raw not in stored:
            raise UserError(f"no ciphertext {handle} for tenant {tenant.name!r}")
        return tenants.load_client(settings, tenant).decrypt(stored[handle.raw].ciphertext)

    print(asyncio.run(_connected(run)))
    return 0


# --- fhectl input: what an fhEVM client needs to prove, and the verify queue ------------

def cmd_input_params(args: argparse.Namespace) -> int:
    """The deployment's CRS and the tenant's compact public key, as files a client
    (node-tfhe) proves against; the CRS is made on first use (crs.ensure_crs)."""
    from .crs import ensure_crs
    from .storage import ObjectStore

    settings = load_settings()

    async def public_key(connection):
        from .db import queries

        tenant = await _tenant(connection, args.tenant)
        key = await queries.get_public_params(connection, tenant.tenant_id)
        if not key:
            raise UserError(f"tenant {tenant.name!r} ({tenant.backend}) has no compact "
                            "public key: its backend takes no proven inputs")
        return tenant, key

    tenant, key = asyncio.run(_connected(public_key))
    crs = ensure_crs(ObjectStore(settings), tenant.backend, settings.crs_max_bits)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crs").write_bytes(crs)
    (out / "public_key").write_bytes(key)
    _print({"tenant": tenant.name, "chain_id": tenant.chain_id,
            "crs": str(out / "crs"), "crs_bits": settings.crs_max_bits,
            "public_key": str(out / "public_key")}, args.output)
    return 0


def _address(text: str, what: str) -> bytes:
    from .types import address_bytes

    raw = address_bytes(text)
    if raw is None:
        raise UserError(f"{what} address must be 0x and 20 bytes, got {text!r}")
    return raw


def cmd_input_submit(args: argparse.Namespace) -> int:
    """Queue a proven list as the gateway listener would (idempotent by request id).
    The arguments are checked before the file is read."""
    from .db import proofs

    if not 0 < args.chain_id < 2**63 or not 0 <= args.id < 2**63:
        raise UserError("--chain-id must be in 1..2^63-1 and --id in 0..2^63-1")
    contract, user = _address(args.contract, "contract"), _address(args.user, "user")
    try:
        data = Path(args.file).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {args.file}: {error.strerror}") from None
    if not data:
        raise UserError(f"{args.file} is empty")
    request = proofs.ProofRequest(args.id, args.chain_id, contract, user, data)
    queued = asyncio.run(_connected(lambda c: proofs.insert_request(c, request)))
    _print({"zk_proof_id": args.id, "queued": queued}, args.output)
    return 0


def cmd_input_status(args: argparse.Namespace) -> int:
    row = asyncio.run(_connected(lambda c: c.fetchrow(
        """SELECT verified, handles, error_message FROM verify_proofs
           WHERE zk_proof_id = $1""", args.id)))
    if row is None:
        raise UserError(f"no verify request {args.id}")
    handles = bytes(row["handles"] or b"")
    state = {None: "pending", True: "verified", False: "rejected"}[row["verified"]]
    _print({"zk_proof_id": args.id, "state": state, "error": row["error_message"],
            "handles": ["0x" + handles[i:i + 32].hex() for i in range(0, len(handles), 32)]},
           args.output)
    return 0


# --- fhectl fhe -------------------------------------------------------------------------

def cmd_fhe_ops(args: argparse.Namespace) -> int:
    from .fhe.engine import backend_names, get_backend, support_matrix

    names = [args.backend] if args.backend else backend_names()
    report = {name: {"failure_probability": get_backend(name).failure_probability,
                     "ops": support_matrix(get_backend(name))} for name in names}
    if args.output == "json":
        _print(report, "json")
        return 0
    for name, entry in report.items():
        matrix = entry["ops"]
        types = list(next(iter(matrix.values())))
        print(f"backend {name} (failure probability {entry['failure_probability']}): "
              "'ok' = supported; otherwise see -o json for the reason")
        print(f"{'op':18s}" + "".join(f"{t[:7]:>8s}" for t in types))
        for op, row in matrix.items():
            cells = "".join(f"{'ok' if row[t] == 'supported' else '-':>8s}" for t in types)
            print(f"{op:18s}{cells}")
    return 0


# --- fhectl crd / batch ----------------------------------------------------------------

def cmd_crd_generate(args: argparse.Namespace) -> int:
    from fhe_operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _custom_objects():
    from kubernetes import client, config

    settings = load_settings()
    try:
        if settings.kubeconfig:
            return client.CustomObjectsApi(config.new_client_from_config(str(settings.kubeconfig)))
        config.load_kube_config()
    except (config.ConfigException, OSError) as error:
        raise UserError(f"no usable kubeconfig: {error}") from None
    return client.CustomObjectsApi()


def _batch_call(call, namespace: str, *rest):
    """``call(group, version, namespace, plural, *rest)`` with the API's refusal turned
    into one line."""
    from kubernetes.client.rest import ApiException

    from fhe_operator.spec import GROUP, PLURAL, VERSION

    try:
        return call(GROUP, VERSION, namespace, PLURAL, *rest)
    except ApiException as error:
        try:
            detail = json.loads(error.body).get("message", error.reason)
        except (TypeError, ValueError):
            detail = error.reason
        raise UserError(f"the API server refused: {detail}") from None


def cmd_batch_submit(args: argparse.Namespace) -> int:
    import yaml

    from fhe_operator.spec import FheBatchSpec, describe_error

    try:
        manifest = yaml.safe_load(Path(args.file).read_text())
    except (OSError, yaml.YAMLError) as error:
        where = getattr(error, "problem_mark", None)
        detail = (f"YAML error at line {where.line + 1}, column {where.column + 1}: "
                  f"{getattr(error, 'problem', error)}") if where else str(error)
        raise UserError(f"cannot read {args.file}: {detail}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "FheBatch":
        raise UserError(f"{args.file} is not a FheBatch manifest")
    try:
        FheBatchSpec.model_validate(manifest.get("spec") or {})
    except Exception as error:  # the same message the operator would write
        raise UserError(f"{args.file}: {describe_error(error)}") from None
    namespace = args.namespace or manifest.get("metadata", {}).get("namespace") or \
        load_settings().namespace
    created = _batch_call(_custom_objects().create_namespaced_custom_object, namespace,
                          manifest)
    print(f"fhebatch {namespace}/{created['metadata']['name']} created")
    return 0


def cmd_batch_get(args: argparse.Namespace) -> int:
    namespace = args.namespace or load_settings().namespace
    body = _batch_call(_custom_objects().get_namespaced_custom_object, namespace, args.name)
    if args.output == "json":
        _print(body, "json")
    else:
        status = body.get("status") or {}
        print(f"{args.name}: {status.get('phase', 'Pending')} {status.get('done', '')} "
              f"{status.get('message', '')}".rstrip())
    return 0


def cmd_batch_wait(args: argparse.Namespace) -> int:
    import time

    namespace = args.namespace or load_settings().namespace
    api = _custom_objects()
    deadline = time.monotonic() + args.timeout
    while True:
        status = _batch_call(api.get_namespaced_custom_object, namespace, args.name
                             ).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            print(f"{args.name}: {status['phase']}: {status.get('message', '')}")
            return 0 if status["phase"] == "Succeeded" else 1
        if time.monotonic() >= deadline:
            raise UserError(f"timed out after {args.timeout}s; {args.name} is "
                            f"{status.get('phase', 'Pending')}: {status.get('message', '')}")
        time.sleep(1)


# --- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhectl", description="Operate the FHE coprocessor and its local stack.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    dev = groups.add_parser("dev", help="the local stack (PostgreSQL, S3, chain)")
    dev_cmds = dev.add_subparsers(dest="command", required=True, metavar="ACTION")
    for name, handler, text in (
        ("up", cmd_dev_up, "start every component (idempotent)"),
        ("down", cmd_dev_down, "stop the processes `up` started"),
        ("status", cmd_dev_status, "JSON health per component; exit 1 if any is unhealthy"),
        ("env", cmd_dev_env, "export lines that point clients at the stack"),
    ):
        sub = dev_cmds.add_parser(name, help=text, description=text)
        sub.add_argument("--state-dir", help="stack data and pid files (default: FHE_STATE_DIR "
                                             "or ~/.cache/fhe-coprocessor/dev)")
        sub.add_argument("--skip", help="comma-separated components to leave out")
        sub.add_argument("-o", "--output", choices=["text", "json"], default="text")
        sub.set_defaults(handler=handler)
        if name == "up":
            for component in ("postgres", "s3", "chain"):
                sub.add_argument(f"--{component}-port", type=int, metavar="PORT",
                                 help=f"{component} port (default: a free one, kept across "
                                      "restarts)")

    gateway = dev_cmds.add_parser(
        "gateway", help="deploy CiphertextCommits with a dev signer on the stack's chain "
        "(idempotent); prints its address and where the signer key is")
    gateway.add_argument("--state-dir", help="where the address and key are kept")
    gateway.add_argument("-o", "--output", choices=["text", "json"], default="text")
    gateway.set_defaults(handler=cmd_dev_gateway)

    tenant = groups.add_parser("tenant", help="tenants and their keysets")
    tenant_cmds = tenant.add_subparsers(dest="command", required=True, metavar="ACTION")
    create = tenant_cmds.add_parser("create", help="generate a keyset (idempotent by name)")
    create.add_argument("name")
    create.add_argument("--chain-id", type=int, default=12345)
    create.add_argument("--backend", default="tfhe-rs")
    create.add_argument("-o", "--output", choices=["text", "json"], default="text")
    create.set_defaults(handler=cmd_tenant_create)

    encrypt = groups.add_parser("encrypt", help="encrypt a value, store it, print its handle")
    encrypt.add_argument("--tenant", required=True)
    encrypt.add_argument("--type", required=True, help="Bool, Uint4 ... Uint256")
    encrypt.add_argument("value", help="decimal or 0x-hex")
    encrypt.set_defaults(handler=cmd_encrypt)

    decrypt = groups.add_parser("decrypt", help="print the plaintext of a stored ciphertext")
    decrypt.add_argument("--tenant", required=True)
    decrypt.add_argument("handle", help="32-byte handle, 0x-hex")
    decrypt.set_defaults(handler=cmd_decrypt)

    inputs = groups.add_parser("input", help="proven inputs: parameters for clients, "
                               "the verify queue")
    input_cmds = inputs.add_subparsers(dest="command", required=True, metavar="ACTION")
    params = input_cmds.add_parser("params", help="write the CRS and the tenant's compact "
                                   "public key for a client to prove against")
    params.add_argument("--tenant", required=True)
    params.add_argument("--out-dir", required=True)
    params.set_defaults(handler=cmd_input_params)
    queue = input_cmds.add_parser("submit", help="queue a proven list for `fhe-job verify`")
    queue.add_argument("--id", type=int, required=True, help="request id (the gateway's)")
    queue.add_argument("--chain-id", type=int, required=True)
    queue.add_argument("--contract", required=True, help="0x + 20 bytes")
    queue.add_argument("--user", required=True, help="0x + 20 bytes")
    queue.add_argument("file", help="the serialized ProvenCompactCiphertextList")
    queue.set_defaults(handler=cmd_input_submit)
    status = input_cmds.add_parser("status", help="pending, verified (with the handles) "
                                   "or rejected (with the reason)")
    status.add_argument("id", type=int)
    status.set_defaults(handler=cmd_input_status)
    for sub in (params, queue, status):
        sub.add_argument("-o", "--output", choices=["text", "json"], default="text")

    fhe = groups.add_parser("fhe", help="the FHE engine")
    fhe_cmds = fhe.add_subparsers(dest="command", required=True, metavar="ACTION")
    ops = fhe_cmds.add_parser("ops", help="support matrix: op x type -> supported or why not")
    ops.add_argument("--backend", help="one backend (default: all)")
    ops.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ops.set_defaults(handler=cmd_fhe_ops)

    crd = groups.add_parser("crd", help="the FheBatch CustomResourceDefinition")
    crd_cmds = crd.add_subparsers(dest="command", required=True, metavar="ACTION")
    crd_cmds.add_parser("generate", help="print the CRD generated from the spec model"
                        ).set_defaults(handler=cmd_crd_generate)

    batch = groups.add_parser("batch", help="FheBatch resources (over the Kubernetes API)")
    batch_cmds = batch.add_subparsers(dest="command", required=True, metavar="ACTION")
    submit = batch_cmds.add_parser("submit", help="check a manifest and create it")
    submit.add_argument("file")
    wait = batch_cmds.add_parser("wait", help="wait for Succeeded (exit 0) or Failed (1)")
    wait.add_argument("name")
    wait.add_argument("--timeout", type=float, default=600)
    get = batch_cmds.add_parser("get", help="phase and message, or the resource as JSON")
    get.add_argument("name")
    get.add_argument("-o", "--output", choices=["text", "json"], default="text")
    for sub, handler in ((submit, cmd_batch_submit), (wait, cmd_batch_wait),
                         (get, cmd_batch_get)):
        sub.add_argument("-n", "--namespace", help="default: FHE_NAMESPACE")
        sub.set_defaults(handler=handler)

    db = groups.add_parser("db", help="database schema")
    db_cmds = db.add_subparsers(dest="command", required=True, metavar="ACTION")
    migrate = db_cmds.add_parser("migrate", help="apply migrations under an advisory lock")
    migrate.add_argument("-o", "--output", choices=["text", "json"], default="text")
    migrate.set_defaults(handler=cmd_db_migrate)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging("DEBUG" if args.verbose else settings.log_level, "text")
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UserError as error:
        print(f"fhectl: error: {error}", file=sys.stderr)
        return error.exit_code
    except CoprocessorError as error:
        print(f"fhectl: {type(error).__name__}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as error:  # e.g. permission denied on the state dir
        print(f"fhectl: error: {error}", file=sys.stderr)
        return EXIT_FATAL


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
