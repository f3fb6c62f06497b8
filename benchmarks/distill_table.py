"""Issue 18's distillation table: the MiniLM student, its MPNet teacher, SetFit and the majority class.

    python benchmarks/distill_table.py bench/distill [more folders or runs.jsonl] [--k 16] [--metric accuracy]
           [--student distill] [--setfit setfit] [--setfit-distill setfit_distill]

For each task: per method the test metric as mean ± std over seeds and the worst seed; the teacher's
own test metric is read from each distillation run's result.json (details under ``distillation``),
so teacher and student are paired by seed on the same split. Then the paired differences, with
95% t-intervals: student − SetFit, student − teacher, student − setfit_distill, and the plmtune
teacher − SetFit on the teacher's backbone (setfit_distill's own teacher, read from its record);
and the wall time of each part (teacher training + labelling, student training, whole process)
and the peak memory of the distillation runs. Sources may be bench folders or the runs.jsonl files
exported into benchmarks/results/ (e.g. a finished slice beside a live bench).
"""

from __future__ import annotations

import statistics

from _tables import by_seed, mean_std, paired_delta, runs_by_method, table_parser


def worst(values: dict) -> str:
    return f"{100 * min(values.values()):.1f}" if values else "–"


def seconds(values: list[float]) -> str:
    return f"{statistics.fmean(values):.0f}" if values else "–"


def _teacher(runs: dict, metric: str) -> dict:
    """seed → the teacher's test metric, from each distillation run's record."""
    return {s: r["distillation"]["teacher"]["test"][metric] for s, r in runs.items()
            if (r.get("distillation") or {}).get("teacher", {}).get("test")}


def tables(merged: dict, k, metric: str, student: str = "distill", setfit: str = "setfit",
           setfit_distill: str = "setfit_distill") -> str:
    """The three Markdown tables (metrics, paired differences, cost) for every task with `student` runs."""
    def cell(values: dict) -> str:
        return f"{mean_std(list(values.values()))} ({worst(values)})" if values else "–"

    def delta(a: dict, b: dict) -> str:
        return paired_delta(a, b) or "–"

    out = [f"Test {metric} (%), mean ± std over seeds, worst seed in brackets; Δ in points with 95% t-interval "
           "over the seeds both sides ran.", "",
           "| task | seeds | majority | SetFit-MiniLM | SetFit-MPNet (setfit_distill's teacher) | setfit_distill "
           "(MiniLM) | plmtune MPNet teacher | plmtune MiniLM student |",
           "|---|---|---|---|---|---|---|---|"]
    deltas = ["| task | student − SetFit-MiniLM | student − its teacher | student − setfit_distill "
              "| plmtune teacher − SetFit-MPNet |", "|---|---|---|---|---|"]
    cost = ["| task | runs | teacher: train + label | student | whole process | peak RSS (MB) | SetFit-MiniLM "
            "process | setfit_distill: teacher / student / process |", "|---|---|---|---|---|---|---|---|"]
    for (task, task_k), methods in sorted(merged.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        if str(task_k) != str(k) or student not in methods:
            continue
        runs = methods[student]
        ours, teacher = by_seed(runs, metric), _teacher(runs, metric)
        majority, base = by_seed(methods.get("majority", {}), metric), by_seed(methods.get(setfit, {}), metric)
        peer_runs = methods.get(setfit_distill, {})
        peer, peer_teacher = by_seed(peer_runs, metric), _teacher(peer_runs, metric)
        out.append(f"| {task} | {len(ours)} | {cell(majority)} | {cell(base)} | {cell(peer_teacher)} | {cell(peer)} "
                   f"| {cell(teacher)} | {cell(ours)} |")
        deltas.append(f"| {task} | {delta(ours, base)} | {delta(ours, teacher)} | {delta(ours, peer)} "
                      f"| {delta(teacher, peer_teacher)} |")
        parts = [r["distillation"]["seconds"] for r in runs.values()]
        peer_parts = [r["distillation"]["seconds"] for r in peer_runs.values()]

        def wall(group: dict) -> str:
            return seconds([r["_wall_seconds"] for r in group.values() if r.get("_wall_seconds")])

        peer_cost = (f"{seconds([p['teacher'] for p in peer_parts])} / {seconds([p['student'] for p in peer_parts])}"
                     f" / {wall(peer_runs)}") if peer_parts else "–"
        cost.append(f"| {task} | {len(runs)} | {seconds([p['teacher_when_labelled'] for p in parts])} "
                    f"| {seconds([p['student'] for p in parts])} | {wall(runs)} "
                    f"| {seconds([r['peak_memory']['peak_rss_mb'] for r in runs.values() if r.get('peak_memory')])} "
                    f"| {wall(methods.get(setfit, {}))} | {peer_cost} |")
    return "\n".join(out + ["", "Paired differences:", ""] + deltas
                     + ["", "Wall time (s, mean over seeds) and peak memory:", ""] + cost) + "\n"


def main() -> None:
    parser = table_parser(__doc__)
    parser.add_argument("--student", default="distill")
    parser.add_argument("--setfit", default="setfit")
    parser.add_argument("--setfit-distill", default="setfit_distill")
    args = parser.parse_args()
    merged, _ = runs_by_method(args.bench)
    print(tables(merged, args.k, args.metric, args.student, args.setfit, args.setfit_distill), end="")


if __name__ == "__main__":
    main()
