"""Reads fast_path_ablation.py's JSON lines on stdin and prints one short line per variant.

examples:
  python benchmarks/fast_path_ablation.py --model 0.1b ... | python benchmarks/summarize_fast_path.py
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    for line in sys.stdin:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        r = record
        print(f"{r['model']} {r['activation']} mbs{r['micro_batch']} first step {r['first_step_s']} s", flush=True)
        for name, v in r["variants"].items():
            gain = ""
            if "gain_median" in v:
                gain = f" gain {v['gain_median']:+.2%} [{v['gain_min']:+.2%}, {v['gain_max']:+.2%}]"
            mfu = v.get("mfu", 0)
            tps = v["tokens_per_sec"]
            print(f"  {name:20s} {tps:>10,.0f} tok/s  MFU {mfu:.1%}  {v['peak_gb']} GB{gain}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
