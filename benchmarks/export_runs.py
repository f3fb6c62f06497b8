"""Export a bench folder's finished runs as one JSON line each (the raw files kept in results/).

    python benchmarks/export_runs.py bench/fewshot benchmarks/results/NAME/runs.jsonl [--methods a,b]

Each line: task, K, method, seed, test and dev metrics, train and whole-process seconds, peak
memory, trainable/total parameters, and for stage recipes their per-iteration or pre-training
record; plus the versions and machine the run recorded. Runs that failed are left out (the
report lists them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _tables import to_record

from plmtune.bench.report import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--methods", help="comma-separated; default: all")
    args = parser.parse_args()
    results, _, suite = collect(args.bench)
    wanted = set(args.methods.split(",")) if args.methods else None
    lines = []
    for (task, k), by_method in sorted(results.items()):
        for method, runs in sorted(by_method.items()):
            if wanted is not None and method not in wanted:
                continue
            for seed, r in sorted(runs.items()):
                record = to_record(suite.get("name"), task, k, method, seed, r)
                lines.append(json.dumps(record, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} runs -> {args.out}")


if __name__ == "__main__":
    main()
