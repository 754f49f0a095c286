"""``fhectl fhe``: the FHE engine's backends and what they support."""

from __future__ import annotations

import argparse

from coprocessor.fhe.engine import backend_names, get_backend, support_matrix

from .output import OUTPUT, emit


def cmd_ops(args: argparse.Namespace) -> int:
    names = [args.backend] if args.backend else backend_names()
    report = {
        name: {
            "failure_probability": get_backend(name).failure_probability,
            "ops": support_matrix(get_backend(name)),
        }
        for name in names
    }
    if args.output == "json":
        emit(report, "json")
        return 0
    for name, entry in report.items():
        matrix = entry["ops"]
        types = list(next(iter(matrix.values())))
        print(
            f"backend {name} (failure probability {entry['failure_probability']}): "
            "'ok' = supported; otherwise see -o json for the reason"
        )
        print(f"{'op':18s}" + "".join(f"{t[:7]:>8s}" for t in types))
        for op, row in matrix.items():
            cells = "".join(f"{'ok' if row[t] == 'supported' else '-':>8s}" for t in types)
            print(f"{op:18s}{cells}")
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    fhe = groups.add_parser("fhe", help="the FHE engine")
    commands = fhe.add_subparsers(dest="command", required=True, metavar="ACTION")
    ops = commands.add_parser(
        "ops", parents=[OUTPUT], help="support matrix: op x type -> supported or why not"
    )
    ops.add_argument("--backend", help="one backend (default: all)")
    ops.set_defaults(handler=cmd_ops)
