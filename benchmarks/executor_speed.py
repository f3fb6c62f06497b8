"""Runs per hour of one suite under each bench executor, side by side (issue 19).

    python benchmarks/executor_speed.py smoke --out /tmp/executors [--data-root ../shared/data] [-j 2]
           [--executors local,warm,ray] [--only GLOB]

Each executor runs the whole suite (or the --only slice) from scratch into its own folder
(OUT/EXECUTOR; an existing one is refused, so nothing is skipped). Printed per executor: the wall
time of the bench (the warm workers' imports and Ray's start inside it), runs per hour, the mean
seconds per run as the bench recorded them, and the mean share of a run
spent outside training and evaluation (bench.json's process seconds minus result.json's train+eval
seconds: start-up, model load, data; over the runs that train). Then whether every run's test metrics equal the first executor's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from plmtune.bench.runner import run_suite
from plmtune.bench.suite import load_suite


def _runs(out: Path) -> dict:
    found = {}
    for path in sorted((out / "runs").rglob("bench.json")):
        record = json.loads(path.read_text())
        result_path = path.parent / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        found[str(path.parent.relative_to(out))] = (record, result)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--executors", default="local,warm,ray")
    parser.add_argument("--only")
    args = parser.parse_args()
    suite = load_suite(args.suite, data_root=args.data_root)
    rows, tests = [], {}
    for executor in args.executors.split(","):
        out = args.out / executor
        if out.exists():
            raise SystemExit(f"{out} exists: give a new --out so that every run is made again.")
        start = time.perf_counter()
        counts = run_suite(suite, out, jobs=args.jobs, only=args.only, progress=False, executor=executor)
        wall = time.perf_counter() - start
        runs = _runs(out)
        seconds = [r["seconds"] for r, _ in runs.values()]
        before = [(rec["seconds"] - res["train_seconds"] - res.get("eval_seconds", 0)) / rec["seconds"]
                  for rec, res in runs.values() if rec.get("seconds") and res.get("train_seconds")]
        rows.append((executor, counts["ran"], counts["failed"], wall, 3600 * counts["ran"] / wall,
                     statistics.fmean(seconds) if seconds else float("nan"),
                     statistics.fmean(before) if before else float("nan")))
        tests[executor] = {k: res.get("test") for k, (_, res) in runs.items()}
    print(f"suite {suite.name}, -j {args.jobs}\n")
    print("| executor | runs | failed | bench wall s | runs / hour | mean s / run (bench.json) "
          "| share of a run before training |")
    print("|---|---|---|---|---|---|---|")
    for executor, ran, failed, wall, per_hour, mean, share in rows:
        print(f"| {executor} | {ran} | {failed} | {wall:.0f} | {per_hour:.0f} | {mean:.1f} | {100 * share:.0f}% |")
    first = next(iter(tests))
    for executor in tests:
        same = tests[executor] == tests[first]
        print(f"\n{executor}: test metrics {'equal to' if same else 'DIFFER from'} {first}'s, run by run")


if __name__ == "__main__":
    main()
