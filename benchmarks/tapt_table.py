"""Further pre-training on the suite: fine-tuning after TAPT (dynamic, static, selective) vs without.

    python benchmarks/tapt_table.py BENCH [--k 16] [--methods tapt,tapt_static,tapt_selective]

Reads a bench folder holding the TAPT runs and the baseline's on the same splits and seeds. Each
cell is test accuracy, mean ± std over seeds; each Δ is paired over seeds, in points, with its 95%
t-interval (▲/▼ where it excludes 0). The second table is the pre-training itself, read from each
run's ``result.json`` (``pretrain``): corpus size, MLM steps and why they stopped, the best
held-out MLM loss, and the pre-training wall time (mean per run, as the runs were scheduled).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from _tables import mean_std, paired_delta
from plmtune.bench.report import collect


def _delta(a: dict, b: dict, metric: str) -> str:
    return paired_delta({s: r["test"][metric] for s, r in a.items()}, {s: r["test"][metric] for s, r in b.items()}) or "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--methods", default="tapt,tapt_static,tapt_selective")
    parser.add_argument("--baseline")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    results, _, suite = collect(args.bench)
    baseline, m, methods = args.baseline or suite["baseline"], args.metric, args.methods.split(",")
    print(f"| task | {baseline} | " + " | ".join(methods) + " | " +
          " | ".join(f"Δ {name} − {baseline}" for name in methods) + " |")
    print("|---" * (2 + 2 * len(methods)) + "|")
    rows, means = [], {name: [] for name in [baseline, *methods]}
    for task in suite["tasks"]:
        by_method = results.get((task, args.k), {})
        if not all(by_method.get(name) for name in [baseline, *methods]):
            continue
        rows.append((task, by_method))
        for name in means:
            means[name].append(statistics.fmean(r["test"][m] for r in by_method[name].values()))
        cells = [mean_std([r["test"][m] for r in by_method[name].values()]) for name in [baseline, *methods]]
        deltas = [_delta(by_method[name], by_method[baseline], m) for name in methods]
        print(f"| {task} | " + " | ".join(cells + deltas) + " |")
    if rows:
        print(f"| mean of {len(rows)} | " + " | ".join(f"{100 * statistics.fmean(v):.1f}" for v in means.values()) +
              " |" + " |" * len(methods))
    print()
    print("| task | method | corpus texts (held out) | MLM steps (stop) | best held-out MLM loss | pre-training s / run |")
    print("|---" * 6 + "|")
    for task, by_method in rows:
        for name in methods:
            records = [r["pretrain"] for r in by_method[name].values()]
            stops = Counter(f"{p['steps']} ({p['stopped']})" for p in records)
            print(f"| {task} | {name} | {records[0]['texts']:,} ({records[0]['heldout_texts']:,}) | "
                  f"{', '.join(f'{k} ×{v}' if v > 1 else k for k, v in stops.items())} | "
                  f"{statistics.fmean(p['best_heldout_loss'] for p in records):.2f} | "
                  f"{statistics.fmean(p['seconds'] for p in records):.0f} |")


if __name__ == "__main__":
    main()
