"""Read-mostly decoding on the GPU: ``fastattn bench decode`` (its correctness lines, both tables) and a short sweep.

    python benchmarks/read_mostly_decode.py --json OUT.json            # the bench's defaults, then the sweep
    python benchmarks/read_mostly_decode.py --batch 8 --context 32768  # any of the bench's options

The sweep times the read-mostly step per token (CUDA graph of a cycle of R steps) at B 8 and 64 over a few private
plan overrides (feature tile, warps) and prints a table last; its rows go into the JSON under "sweep". Exit 1 when
a correctness check failed. Under 4 minutes on an H200 with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastattn.bench.decode import add_arguments, run, time_read_mostly

SWEEP = ({}, {"block_f": 64}, {"block_f": 256}, {"num_warps": 8}, {"block_f": 256, "num_warps": 8})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--no-sweep", action="store_true", help="only the bench")
    args = p.parse_args()
    rc = run(args)
    if rc == 2 or args.no_sweep or not args.pending:
        return rc
    rows = []
    for B in (8, 64):
        for tuning in SWEEP:
            t = time_read_mostly(args.spec, B, args.heads, args.head_dim, args.pending, args.warmup, args.rep,
                                 tuning=tuning or None)
            rows.append(dict(B=B, tuning=tuning, ms_graph=t["ms_graph"], gbs=t["step_bytes"] / t["ms_graph"] / 1e6))
    print("\nsweep of the read-mostly step (per token, CUDA graph)\n")
    print("| B | tuning | graph ms | GB/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['B']} | {json.dumps(r['tuning']) if r['tuning'] else 'default'} | {r['ms_graph']:.4g} "
              f"| {r['gbs']:,.0f} |")
    if args.json_out:
        out = json.loads(Path(args.json_out).read_text()) if Path(args.json_out).exists() else {}
        out["sweep"] = rows
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
