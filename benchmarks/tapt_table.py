"""Further pre-training on the suite: fine-tuning after TAPT (dynamic, static, selective) vs without.

    python benchmarks/tapt_table.py BENCH [BENCH ...] [--k 16] [--methods tapt,tapt_static,tapt_selective]

Reads a bench folder holding the TAPT runs and the baseline's on the same splits and seeds. Each
cell is test accuracy, mean ± std over seeds; each Δ is paired over seeds, in points, with its 95%
t-interval (▲/▼ where it excludes 0). The second table is the pre-training itself, read from each
run's ``result.json`` (``pretrain``): corpus size, MLM steps and why they stopped, the best
held-out MLM loss, and the pre-training wall time (mean per run, as the runs were scheduled).
"""

from __future__ import annotations

import statistics
from collections import Counter

from _tables import by_seed, mean_std, paired_delta, runs_by_method, table_parser


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--methods", default="tapt,tapt_static,tapt_selective")
    parser.add_argument("--baseline")
    args = parser.parse_args()
    results, suite = runs_by_method(args.bench)
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
            means[name].append(statistics.fmean(by_seed(by_method[name], m).values()))
        cells = [mean_std(list(by_seed(by_method[name], m).values())) for name in [baseline, *methods]]
        deltas = [paired_delta(by_seed(by_method[name], m), by_seed(by_method[baseline], m)) or "–" for name in methods]
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
