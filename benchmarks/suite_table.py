"""One Markdown table across tasks from a bench folder: mean accuracy and the paired Δ to the baseline.

    python benchmarks/suite_table.py BENCH [BENCH ...] --k 16 [--metric accuracy|mcc|macro_f1]

Each cell: mean over seeds, then the paired difference to the baseline in points with its 95%
t-interval; ▲ / ▼ mark intervals that exclude 0 (shown to help / to hurt). The last column is the
mean over tasks. Per-task details (std, worst seed, macro-F1, MCC, p-values) are in report.md.
"""

from __future__ import annotations

import statistics

from _tables import by_seed, paired_delta, runs_by_method, table_parser


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--baseline")
    args = parser.parse_args()
    results, suite = runs_by_method(args.bench)
    baseline = args.baseline or suite["baseline"]
    tasks = [t for t in suite["tasks"] if (t, args.k) in results]
    print(f"| method | {' | '.join(tasks)} | mean |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for method in suite["methods"]:
        cells, means = [], []
        for task in tasks:
            runs, base = results[(task, args.k)].get(method), results[(task, args.k)].get(baseline, {})
            if not runs:
                break
            values = by_seed(runs, args.metric)
            means.append(statistics.fmean(values.values()))
            cell = f"{100 * means[-1]:.1f}"
            delta = paired_delta(values, by_seed(base, args.metric))
            if method != baseline and delta:
                cell += f" ({delta})"
            cells.append(cell)
        if len(cells) == len(tasks):
            print(f"| {method} | {' | '.join(cells)} | {100 * statistics.fmean(means):.1f} |")


if __name__ == "__main__":
    main()
