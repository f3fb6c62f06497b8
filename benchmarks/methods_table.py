"""Methods side by side per task: accuracy, paired Δ, trainable share, wall time and peak memory.

    python benchmarks/methods_table.py BENCH [BENCH ...] --task sst2[,subj,...] [--k 16] --methods vanilla,prompt,...

Each method is read from the first bench folder that holds it (so runs made in separate folders
on the same splits can share one table). Accuracy: test, mean ± std over seeds; Δ: paired over
the seeds both share with the first method, in points, with its 95% t-interval (▲/▼ where it
excludes 0); trainable share: trainable / total parameters; wall s: the whole process per run
(start-up, training, evaluation); peak RSS: the process's peak resident memory.
"""

from __future__ import annotations

import statistics

from _tables import by_seed, mean_std, paired_delta, runs_by_method, table_parser


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--task", required=True, help="comma-separated; several give one row group per task")
    parser.add_argument("--methods", required=True, help="comma-separated; the first is the baseline of Δ")
    args = parser.parse_args()
    held = runs_by_method(args.bench)[0]
    tasks, methods = args.task.split(","), args.methods.split(",")
    print(f"| task | method | seeds | {args.metric} | Δ − {methods[0]} | trainable share | wall s / run | peak RSS MiB |")
    print("|---" * 8 + "|")
    for task in tasks:
        runs = {}
        for name in methods:
            runs[name] = held.get((task, args.k), {}).get(name)
            if runs[name] is None:
                raise SystemExit(f"no {name} runs for {task} K={args.k} in {', '.join(map(str, args.bench))}")
        base = by_seed(runs[methods[0]], args.metric)
        for name in methods:
            group = runs[name]
            values = by_seed(group, args.metric)
            share = statistics.fmean(r["parameters"]["trainable"] / r["parameters"]["total"] for r in group.values())
            peaks = [(r.get("peak_memory") or {}).get("peak_rss_mb") for r in group.values()]
            peak = f"{statistics.fmean(peaks):.0f}" if all(peaks) else "–"
            delta = paired_delta(values, base) if name != methods[0] else ""
            print(f"| {task} | {name} | {len(group)} | {mean_std(list(values.values()))} | {delta or '–'} | "
                  f"{100 * share:.1f}% | {statistics.fmean(r['_wall_seconds'] for r in group.values()):.0f} | {peak} |")


if __name__ == "__main__":
    main()
