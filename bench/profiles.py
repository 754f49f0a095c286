"""Per-op latency of bare TFHE-rs under two release profiles: the one the native
extension used to have (no LTO, 16 codegen units) and the one TFHE-rs builds its own
benchmarks with (fat LTO, one codegen unit), which native/Cargo.toml now uses.

    .venv/bin/python bench/profiles.py [--rounds 2] [--repeat 5]

bench/baseline is built twice, in two cargo target directories under
~/.cache/fhe-coprocessor (the first build of each takes about 25 minutes on 2 cores;
later runs reuse them), and each binary's per-op table (Uint64 Ge, Sub, Add,
IfThenElse and one SquashNoise, all cores, median of --repeat) is taken --rounds times,
alternating the two so that a slow minute of the machine falls on both. A one-transfer
graph is checked for correctness on the way.

Writes bench/results/profiles.json: per op, the median over rounds for each profile
and new / old (below 1: the new profile is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchlib import write_result

from devstack.versions import REPO_ROOT

BASELINE = REPO_ROOT / "bench" / "baseline"
CACHE = Path.home() / ".cache" / "fhe-coprocessor"
PROFILES = {
    # name: (cargo target dir, profile overrides)
    "old": (CACHE / "cargo-target", {"LTO": "off", "CODEGEN_UNITS": "16"}),
    "new": (CACHE / "cargo-target-lto", {"LTO": "fat", "CODEGEN_UNITS": "1"}),
}
# One transfer: balances 1000 and 50, amount 300 (values 0..2), then nodes 3..7.
TRANSFER = {
    "inputs": [1000, 50, 300],
    "nodes": [
        {"op": "FheGe", "args": [0, 2]},
        {"op": "FheSub", "args": [0, 2]},
        {"op": "FheAdd", "args": [1, 2]},
        {"op": "FheIfThenElse", "args": [3, 4, 0]},
        {"op": "FheIfThenElse", "args": [3, 5, 1]},
    ],
    "outputs": [6, 7],
    "expected": [700, 350],
}


def build(target: Path, overrides: dict[str, str]) -> Path:
    env = dict(os.environ)
    env.update({f"CARGO_PROFILE_RELEASE_{k}": v for k, v in overrides.items()})
    print(f"building bench/baseline into {target} ({overrides}) ...", flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--target-dir", str(target)],
        cwd=BASELINE,
        env=env,
        check=True,
    )
    return target / "release" / "fhe-baseline"


def run(binary: Path, graph: Path, repeat: int, *flags: str) -> dict:
    """One run of bench/baseline on ``graph`` (``flags``: e.g. ``--squash``), checked."""
    out = subprocess.run(
        [str(binary), str(graph), "--repeat", str(repeat), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    if not result.get("correct"):
        raise SystemExit(f"{binary}: the transfer decrypted wrong: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="run the binaries already in the target dirs (cargo would relink both: "
        "the native extension's build shares the first dir's dependencies)",
    )
    args = parser.parse_args()
    binaries = {
        name: target / "release" / "fhe-baseline" if args.no_build else build(target, o)
        for name, (target, o) in PROFILES.items()
    }
    samples: dict[str, list[dict]] = {name: [] for name in PROFILES}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as graph:
        json.dump(TRANSFER, graph)
        graph.flush()
        for round_ in range(args.rounds):
            for name, binary in binaries.items():
                result = run(binary, Path(graph.name), args.repeat)
                samples[name].append(result["single_op_s"])
                print(f"round {round_ + 1} {name}: {result['single_op_s']}", flush=True)
    ops = sorted(samples["old"][0])
    medians = {
        name: {op: round(statistics.median(s[op] for s in runs), 3) for op in ops}
        for name, runs in samples.items()
    }
    write_result(
        "profiles",
        {
            "cores": len(os.sched_getaffinity(0)),
            "profiles": {name: overrides for name, (_, overrides) in PROFILES.items()},
            "single_op_s": medians,
            "new_over_old": {op: round(medians["new"][op] / medians["old"][op], 3) for op in ops},
            "samples": samples,
        },
    )


if __name__ == "__main__":
    main()
