"""``fhectl crd``: the FheBatch CustomResourceDefinition."""

from __future__ import annotations

import argparse
import sys

from coprocessor.api.crd import crd_yaml


def cmd_generate(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    crd = groups.add_parser("crd", help="the FheBatch CustomResourceDefinition")
    commands = crd.add_subparsers(dest="command", required=True, metavar="ACTION")
    commands.add_parser(
        "generate", help="print the CRD generated from the spec model"
    ).set_defaults(handler=cmd_generate)
