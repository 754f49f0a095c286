"""``fhectl batch``: FheBatch resources, over the Kubernetes API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from coprocessor.api.batch import GROUP, KIND, PLURAL, VERSION, FheBatchSpec, describe_error
from coprocessor.api.kube import api_client
from coprocessor.errors import UserError
from coprocessor.settings import load_settings

from .output import OUTPUT, emit


def _custom_objects() -> Any:
    """The API; no usable credentials is a ConfigError, one line like any user error."""
    from kubernetes import client

    return client.CustomObjectsApi(api_client(load_settings().kubeconfig))


def _batch_call(call: Callable[..., Any], namespace: str, *rest: Any) -> Any:
    """``call(group, version, namespace, plural, *rest)`` with the API's refusal turned
    into one line."""
    from kubernetes.client.rest import ApiException

    try:
        return call(GROUP, VERSION, namespace, PLURAL, *rest)
    except ApiException as error:
        try:
            detail = json.loads(error.body).get("message", error.reason)
        except (TypeError, ValueError):
            detail = error.reason
        raise UserError(f"the API server refused: {detail}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        manifest = yaml.safe_load(Path(args.file).read_text())
    except (OSError, yaml.YAMLError) as error:
        where = getattr(error, "problem_mark", None)
        detail = (
            (
                f"YAML error at line {where.line + 1}, column {where.column + 1}: "
                f"{getattr(error, 'problem', error)}"
            )
            if where
            else str(error)
        )
        raise UserError(f"cannot read {args.file}: {detail}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise UserError(f"{args.file} is not a FheBatch manifest")
    try:
        FheBatchSpec.model_validate(manifest.get("spec") or {})
    except Exception as error:  # the same message the operator would write
        raise UserError(f"{args.file}: {describe_error(error)}") from None
    namespace = (
        args.namespace or manifest.get("metadata", {}).get("namespace") or load_settings().namespace
    )
    created = _batch_call(_custom_objects().create_namespaced_custom_object, namespace, manifest)
    print(f"fhebatch {namespace}/{created['metadata']['name']} created")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    namespace = args.namespace or load_settings().namespace
    body = _batch_call(_custom_objects().get_namespaced_custom_object, namespace, args.name)
    if args.output == "json":
        emit(body, "json")
    else:
        status = body.get("status") or {}
        print(
            f"{args.name}: {status.get('phase', 'Pending')} {status.get('done', '')} "
            f"{status.get('message', '')}".rstrip()
        )
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    namespace = args.namespace or load_settings().namespace
    api = _custom_objects()
    deadline = time.monotonic() + args.timeout
    while True:
        status = (
            _batch_call(api.get_namespaced_custom_object, namespace, args.name).get("status") or {}
        )
        if status.get("phase") in ("Succeeded", "Failed"):
            print(f"{args.name}: {status['phase']}: {status.get('message', '')}")
            return 0 if status["phase"] == "Succeeded" else 1
        if time.monotonic() >= deadline:
            raise UserError(
                f"timed out after {args.timeout}s; {args.name} is "
                f"{status.get('phase', 'Pending')}: {status.get('message', '')}"
            )
        time.sleep(1)


def register(groups: argparse._SubParsersAction) -> None:
    batch = groups.add_parser("batch", help="FheBatch resources (over the Kubernetes API)")
    commands = batch.add_subparsers(dest="command", required=True, metavar="ACTION")
    submit = commands.add_parser("submit", help="check a manifest and create it")
    submit.add_argument("file")
    wait = commands.add_parser("wait", help="wait for Succeeded (exit 0) or Failed (1)")
    wait.add_argument("name")
    wait.add_argument("--timeout", type=float, default=600)
    get = commands.add_parser(
        "get", parents=[OUTPUT], help="phase and message, or the resource as JSON"
    )
    get.add_argument("name")
    for sub, handler in ((submit, cmd_submit), (wait, cmd_wait), (get, cmd_get)):
        sub.add_argument("-n", "--namespace", help="default: FHE_NAMESPACE")
        sub.set_defaults(handler=handler)
