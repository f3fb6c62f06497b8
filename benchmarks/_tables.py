"""Cell formats and bench-folder merging shared by the Markdown table scripts."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from plmtune.bench.report import collect, paired


def _k(value: str):
    if value == "full":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes a whole number or 'full', not {value!r}") from None


def table_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every table script takes: bench folders (each method from the first that holds
    it), K and the metric; scripts add their own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, nargs="+",
                        help="bench folders or exported runs.jsonl files; each run from the first that holds it")
    parser.add_argument("--k", type=_k, default=16, help="labels per class, or 'full' (a suite's k: full)")
    parser.add_argument("--metric", default="accuracy")
    return parser


def by_seed(runs: dict, metric: str) -> dict:
    """seed → the run's test metric, for one method's runs (seed → result)."""
    return {seed: r["test"][metric] for seed, r in runs.items()}


STAGE_FIELDS = ("self_training", "self_distillation", "pretrain", "embedding_head", "distillation")


def to_record(suite: str | None, task: str, k, method: str, seed: int, r: dict) -> dict:
    """One finished run as the line benchmarks/export_runs.py writes into results/NAME/runs.jsonl."""
    return {"suite": suite, "task": task, "k": k, "method": method, "seed": seed,
            "test": r["test"], "dev": r.get("dev"), "train_seconds": r.get("train_seconds"),
            "process_seconds": r.get("_wall_seconds"), "peak_memory": r.get("peak_memory"),
            "trainable": r["parameters"]["trainable"], "total": r["parameters"].get("total"),
            **{f: r[f] for f in STAGE_FIELDS if f in r},
            "versions": r.get("versions"), "machine": r.get("machine")}


def from_records(path: Path) -> tuple[dict, dict]:
    """An exported runs.jsonl read back as collect() gives a bench folder: (task, k) → method → seed →
    result (the fields the table scripts read), and the suite's name. So a table can be rebuilt from the
    raw files committed under benchmarks/results/, or mix them with a live bench folder."""
    results: dict = {}
    names = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key, method, seed = (rec["task"], rec["k"]), rec["method"], int(rec["seed"])
            result = {"test": rec["test"], "dev": rec.get("dev"), "train_seconds": rec.get("train_seconds"),
                      "_wall_seconds": rec.get("process_seconds"), "peak_memory": rec.get("peak_memory"),
                      "parameters": {"trainable": rec.get("trainable"), "total": rec.get("total")},
                      **{f: rec[f] for f in STAGE_FIELDS if f in rec},
                      "versions": rec.get("versions"), "machine": rec.get("machine")}
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}, line {n}: not an exported run record ({type(e).__name__}: {e}); "
                             "expected a line written by benchmarks/export_runs.py.") from None
        names.add(rec.get("suite"))
        results.setdefault(key, {}).setdefault(method, {})[seed] = result
    return results, {"name": ",".join(sorted(str(x) for x in names))}


def runs_by_method(benches: list[Path]) -> tuple[dict, dict]:
    """(task, k) → method → seed → result over several sources, and the first source's suite.

    A source is a bench folder or a runs.jsonl exported from one (benchmarks/results/...). Each
    (task, k, method, seed) is read from the first source that holds it, so runs made in separate
    folders on the same splits (another machine, a later slice, a seed added later) share one table.
    """
    merged: dict = {}
    suite = None
    for path in benches:
        if path.is_file() and path.suffix == ".jsonl":
            results, info = from_records(path)
        else:
            results, _, info = collect(path)
        suite = suite or info
        for key, by_method in results.items():
            for method, runs in by_method.items():
                seeds = merged.setdefault(key, {}).setdefault(method, {})
                for seed, run in runs.items():
                    seeds.setdefault(seed, run)
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
