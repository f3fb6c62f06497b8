"""Cell formats and bench-folder merging shared by the Markdown table scripts."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from plmtune.bench.report import collect, paired


def table_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every table script takes: bench folders (each method from the first that holds
    it), K and the metric; scripts add their own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, nargs="+")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--metric", default="accuracy")
    return parser


def by_seed(runs: dict, metric: str) -> dict:
    """seed → the run's test metric, for one method's runs (seed → result)."""
    return {seed: r["test"][metric] for seed, r in runs.items()}


def runs_by_method(benches: list[Path]) -> tuple[dict, dict]:
    """(task, k) → method → seed → result over several bench folders, and the first folder's suite.

    Each (task, k, method) is read from the first folder that holds it, so runs made in separate
    folders on the same splits (another machine, a later slice) can share one table.
    """
    merged: dict = {}
    suite = None
    for path in benches:
        results, _, info = collect(path)
        suite = suite or info
        for key, by_method in results.items():
            for method, runs in by_method.items():
                merged.setdefault(key, {}).setdefault(method, runs)
    return merged, suite


def mean_std(values: list[float]) -> str:
    """'63.4 ± 2.0' in percent (one value: no ±; none: '–')."""
    if len(values) > 1:
        return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    return f"{100 * values[0]:.1f}" if values else "–"


def paired_delta(a: dict, b: dict) -> str:
    """a − b over their common seeds (seed → value), in points with its 95% t-interval; ▲/▼ where
    the interval excludes 0; '' with fewer than two common seeds."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return ""
    d = paired([a[s] - b[s] for s in common])
    mark = " ▲" if d["lo"] > 0 else (" ▼" if d["hi"] < 0 else "")
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]{mark}"
