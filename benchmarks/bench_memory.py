"""Peak memory of one Monte Carlo point against its sample count (memory must not grow with samples).

Run: .venv/bin/python benchmarks/bench_memory.py [--counts 1e6 1e8] [--chunk 65536]
Each count runs in its own process (peak RSS is per process): switch-base-8 decode (M = 1, L = 1),
practical Top-K, after a 1e4-sample warm-up that compiles the same program. Prints peak RSS
(ru_maxrss), the RSS after the warm-up, and the run time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, time, sys
import sift_jax as sj
samples, chunk = int(float(sys.argv[1])), int(sys.argv[2])
sc = sj.presets.get("switch-base-8").replace(n_tokens=1, n_layers=1)
sj.simulate(sc, policy="topk", samples=10_000, seed=0, chunk_size=chunk)
warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
res = sj.simulate(sc, policy="topk", samples=samples, seed=0, chunk_size=chunk)
dt = time.perf_counter() - t0
stat = res.metrics["energy_per_token_j"]
print(json.dumps({"samples": samples, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "warm_kb": warm, "seconds": dt, "n": stat.n + stat.n_invalid}))
"""


def main(argv=None):
    from benchmarks.common import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", nargs="+", default=["1e6", "1e8"])
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--quick", action="store_true", help="1e5 and 1e6 samples (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.counts = ["1e5", "1e6"]
    rows = []
    for count in args.counts:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, count, str(args.chunk)], capture_output=True, text=True, cwd=ROOT, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        assert rows[-1]["n"] == rows[-1]["samples"]
    print(f"Machine: {machine()}; chunk {args.chunk}\n")
    print("| samples | peak RSS (MB) | RSS after warm-up (MB) | run time (s) | peak vs first row |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['samples']:.0e} | {r['peak_kb'] / 1024:.0f} | {r['warm_kb'] / 1024:.0f} | {r['seconds']:.1f} | "
            f"{r['peak_kb'] / rows[0]['peak_kb'] - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
