"""One method measured twice (before and after a change), paired by task, K and seed.

    python benchmarks/rerun_delta.py OLD.jsonl NEW.jsonl --method list_cpu [--metric accuracy]

OLD and NEW are exported runs (benchmarks/export_runs.py). Prints a Markdown table: per seed the
old and new test metric, then mean ± std and the paired difference new − old with its 95%
t-interval; with --iterations, the same for each self-training iteration's test metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _tables import mean_std, paired_delta


def load(path: Path, method: str) -> dict:
    out: dict = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["method"] == method:
            out.setdefault((r["task"], r["k"]), {})[r["seed"]] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--method", required=True)
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--iterations", action="store_true", help="also each self-training iteration")
    args = parser.parse_args()
    old, new = load(args.old, args.method), load(args.new, args.method)
    print("| task | K | what | seeds (old → new) | old | new | new − old |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        seeds = sorted(set(a) & set(b))
        rows = [("result", lambda r: r["test"][args.metric])]
        if args.iterations:
            n = len(next(iter(b.values()))["self_training"]["iterations"])
            rows += [(f"iteration {i}", lambda r, i=i: r["self_training"]["iterations"][i]["test"][args.metric])
                     for i in range(n)]
        for what, get in rows:
            va, vb = {s: get(a[s]) for s in seeds}, {s: get(b[s]) for s in seeds}
            per_seed = ", ".join(f"{s}: {100 * va[s]:.1f} → {100 * vb[s]:.1f}" for s in seeds)
            print(f"| {key[0]} | {key[1]} | {what} | {per_seed} | {mean_std(list(va.values()))} | "
                  f"{mean_std(list(vb.values()))} | {paired_delta(vb, va)} |")


if __name__ == "__main__":
    main()
