"""Issue 18's distillation table: the MiniLM student, its MPNet teacher, SetFit and the majority class.

    python benchmarks/distill_table.py bench/distill [--k 16] [--metric accuracy]
           [--student distill] [--setfit setfit] [--setfit-distill setfit_distill]

For each task: per method the test metric as mean ± std over seeds and the worst seed; the teacher's
own test metric is read from each distillation run's result.json (details under ``distillation``),
so teacher and student are paired by seed on the same split. Then the paired differences, with
95% t-intervals: student − SetFit, student − teacher (and student − setfit_distill where it ran);
and the wall time of each part (teacher training + labelling, student training, whole process)
and the peak memory of the distillation runs.
"""

from __future__ import annotations

import statistics

from _tables import by_seed, mean_std, paired_delta, runs_by_method, table_parser


def worst(values: dict) -> str:
    return f"{100 * min(values.values()):.1f}" if values else "–"


def seconds(values: list[float]) -> str:
    return f"{statistics.fmean(values):.0f}" if values else "–"


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--student", default="distill")
    parser.add_argument("--setfit", default="setfit")
    parser.add_argument("--setfit-distill", default="setfit_distill")
    args = parser.parse_args()
    merged, _ = runs_by_method(args.bench)
    metric = args.metric
    print(f"Test {metric} (%), mean ± std over seeds, worst seed in brackets; Δ in points with 95% t-interval.\n")
    print("| task | seeds | majority | SetFit-MiniLM | setfit_distill | MPNet teacher | MiniLM student "
          "| student − SetFit | student − teacher | student − setfit_distill |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cost_rows = []
    for (task, k), methods in sorted(merged.items()):
        if k != args.k or args.student not in methods:
            continue
        runs = methods[args.student]
        student = by_seed(runs, metric)
        teacher = {s: r["distillation"]["teacher"]["test"][metric] for s, r in runs.items()}
        cells = {}
        for name in ("majority", args.setfit, args.setfit_distill):
            cells[name] = by_seed(methods[name], metric) if name in methods else {}

        def cell(values: dict) -> str:
            return f"{mean_std(list(values.values()))} ({worst(values)})" if values else "–"

        print(f"| {task} | {len(student)} | {cell(cells['majority'])} | {cell(cells[args.setfit])} "
              f"| {cell(cells[args.setfit_distill])} | {cell(teacher)} | {cell(student)} "
              f"| {paired_delta(student, cells[args.setfit]) or '–'} | {paired_delta(student, teacher) or '–'} "
              f"| {paired_delta(student, cells[args.setfit_distill]) or '–'} |")
        parts = [r["distillation"]["seconds"] for r in runs.values()]
        cost_rows.append((task, len(runs), seconds([p["teacher_when_labelled"] for p in parts]),
                          seconds([p["student"] for p in parts]),
                          seconds([r["_wall_seconds"] for r in runs.values() if r.get("_wall_seconds")]),
                          seconds([r["peak_memory"]["peak_rss_mb"] for r in runs.values()]),
                          seconds([r["_wall_seconds"] for r in methods.get(args.setfit, {}).values()
                                   if r.get("_wall_seconds")])))
    print("\nWall time (s, mean over seeds) and peak memory of the distillation runs:\n")
    print("| task | runs | teacher: train + label | student | whole process | peak RSS (MB) | SetFit process |")
    print("|---|---|---|---|---|---|---|")
    for row in cost_rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
