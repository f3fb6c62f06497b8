"""LiST on the suite: teacher, student with and without meta re-weighting, vs plain fine-tuning.

    python benchmarks/list_table.py BENCH [BENCH ...] [--k 16] [--list list_cpu] [--no-reweight list_cpu_no_reweight]

Reads bench folders holding the LiST runs and the baseline's on the same splits and seeds (each
method from the first folder that holds it). The
teacher is iteration 0 of the re-weighted runs (prompt + adapters on the K labelled rows); the
student is the last iteration (the paper's rule and `select: last`, the default; training does not
depend on `select`, so runs made under `best_dev` are read the same way). Each Δ is paired over seeds, in
points, with its 95% t-interval (▲/▼ where it excludes 0). Wall time is the whole process
(teacher, pseudo-labelling, students, evaluations); memory is the process's peak RSS.
"""

from __future__ import annotations

import statistics

from _tables import mean_std, paired_delta, runs_by_method, table_parser


def _last(result: dict) -> dict:
    return result["self_training"]["iterations"][-1]["test"]


def _delta(a: dict, b: dict, metric: str) -> str:
    return paired_delta({s: v[metric] for s, v in a.items()}, {s: v[metric] for s, v in b.items()}) or "–"


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--list", default="list_cpu")
    parser.add_argument("--no-reweight", default="list_cpu_no_reweight")
    parser.add_argument("--baseline")
    args = parser.parse_args()
    results, suite = runs_by_method(args.bench)
    baseline, m = args.baseline or suite["baseline"], args.metric
    print(f"| task | {baseline} | teacher | LiST | LiST, no re-weighting | LiST − {baseline} | "
          f"LiST − teacher | re-weighting − none | wall s / run (LiST, none) | peak RSS MiB (LiST) |")
    print("|---" * 10 + "|")
    for task in suite["tasks"]:
        by_method = results.get((task, args.k), {})
        runs, plain, base = by_method.get(args.list), by_method.get(args.no_reweight), by_method.get(baseline)
        if not (runs and plain and base):
            continue
        teacher = {s: r["self_training"]["iterations"][0]["test"] for s, r in runs.items()}
        student = {s: _last(r) for s, r in runs.items()}
        unweighted = {s: _last(r) for s, r in plain.items()}
        vanilla = {s: r["test"] for s, r in base.items()}
        wall = [statistics.fmean(r["_wall_seconds"] for r in group.values()) for group in (runs, plain)]
        peaks = [(r.get("peak_memory") or {}).get("peak_rss_mb") for r in runs.values()]
        peak = f"{statistics.fmean(peaks):.0f}" if all(peaks) else "–"  # runs before peak memory was recorded
        print(f"| {task} | {mean_std([v[m] for v in vanilla.values()])} | {mean_std([v[m] for v in teacher.values()])} | "
              f"{mean_std([v[m] for v in student.values()])} | {mean_std([v[m] for v in unweighted.values()])} | "
              f"{_delta(student, vanilla, m)} | {_delta(student, teacher, m)} | {_delta(student, unweighted, m)} | "
              f"{wall[0]:.0f}, {wall[1]:.0f} | {peak} |")


if __name__ == "__main__":
    main()
