"""Key load per stage: decompressing the tenant's key (what every pod did) against
reading its expanded form from the node-local key cache (coprocessor/keycache.py).

    .venv/bin/python bench/key_cache.py [--repeat 3] [--dir /var/tmp/fhe-key-cache-bench]

For each stage's key (compute and verify: their parts of the key; sns: the whole key,
noise squashing material included) on one fresh keyset:

* cold: the compressed key (bytes in memory, so S3's download time is left out) to a
  ready evaluator: TfheRsEvaluator(bytes);
* write: the evaluator to the cache (KeyCache.put: serialise, hash, sync, rename);
* warm: the cache hit a later pod on the same node gets (KeyCache.get: the file
  mapped, hashed while it is deserialised), file in the page cache; each run in a
  fresh process, as a pod is, with its kernel time and page faults: most of a warm
  load is the kernel handing out the key's fresh pages (native/src/large_blocks.rs).

Writes bench/results/key_cache.json: sizes, medians and warm / cold ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import write_result

from coprocessor.fhe.tfhe_backend import TfheRsBackend, TfheRsEvaluator
from coprocessor.keycache import KeyCache

MiB = 2**20

# Run in a fresh interpreter: one load, as a stage pod's first.
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from coprocessor.fhe.tfhe_backend import TfheRsEvaluator
from coprocessor.keycache import KeyCache
mode, name, directory, key_file, key_id = sys.argv[1:6]
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
if mode == "cold":
    TfheRsEvaluator(Path(key_file).read_bytes(), bytes.fromhex(key_id))
else:
    cache = KeyCache(Path(directory), 2**40)
    hit = cache.get(name, lambda p, d: TfheRsEvaluator.load_expanded(p, d, bytes.fromhex(key_id)))
    assert hit is not None, "cache miss"
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "s": seconds,
    "kernel_s": after.ru_stime - before.ru_stime,
    "page_faults": after.ru_minflt - before.ru_minflt,
}))
"""


def child(mode: str, name: str, directory: Path, key_file: Path, key_id: bytes) -> dict:
    """One load in a fresh interpreter: its wall seconds (``s``), the seconds it spent
    in the kernel (``kernel_s``: mostly faulting in fresh pages) and its page faults."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, name, str(directory), str(key_file), key_id.hex()],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="cache directory (default: a temp dir)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhe-key-cache-bench-", dir=args.dir))
    try:
        backend = TfheRsBackend()
        print("generating a keyset ...", flush=True)
        keyset = backend.generate_keyset()
        parts = backend.key_parts(keyset.server_key)
        keys = {"compute": parts["compute"], "verify": parts["verify"], "sns": keyset.server_key}
        cache = KeyCache(work / "cache", 2**40)
        stages = {}
        for stage, compressed in keys.items():
            key_file = work / f"{stage}.compressed"
            key_file.write_bytes(compressed)
            name = f"bench-{stage}"
            cold = [child("cold", name, cache.directory, key_file, keyset.key_id)]
            cold += [
                child("cold", name, cache.directory, key_file, keyset.key_id)
                for _ in range(args.repeat - 1)
            ]
            evaluator = TfheRsEvaluator(compressed, keyset.key_id)
            started = time.perf_counter()
            written = cache.put(name, evaluator.save_expanded)
            write_s = time.perf_counter() - started
            assert written is not None
            del evaluator
            warm = [
                child("warm", name, cache.directory, key_file, keyset.key_id)
                for _ in range(args.repeat)
            ]
            cold_s = statistics.median(run["s"] for run in cold)
            warm_s = statistics.median(run["s"] for run in warm)
            stages[stage] = {
                "compressed_mib": round(len(compressed) / MiB, 1),
                "expanded_mib": round(written.stat().st_size / MiB, 1),
                "cold_s": round(cold_s, 3),
                "write_s": round(write_s, 3),
                "warm_s": round(warm_s, 3),
                "warm_over_cold": round(warm_s / cold_s, 3),
                "warm_kernel_s": round(statistics.median(run["kernel_s"] for run in warm), 3),
                "warm_page_faults": int(statistics.median(run["page_faults"] for run in warm)),
                "samples": {
                    "cold": [round(run["s"], 3) for run in cold],
                    "warm": [round(run["s"], 3) for run in warm],
                },
            }
            print(stage, json.dumps(stages[stage]), flush=True)
        write_result("key_cache", {"repeat": args.repeat, "stages": stages})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
