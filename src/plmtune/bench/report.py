"""`plmtune report DIR`: tables and plots from a bench folder, as report.md and report.html.

Per task and K, each method's accuracy and macro-F1 (mean ± std over seeds), its worst seed,
and its paired difference to the suite's baseline over the seeds both finished: the mean
difference with a 95% t-interval and the paired t-test's two-sided p-value. Failed runs are
listed, never dropped silently. Plots (matplotlib, embedded as PNG in the HTML): accuracy with
95% intervals per method, per-seed accuracy, learning curves from metrics.jsonl, and wall time
against gain over the baseline.

A bench folder is read as data that may be damaged (a killed run, a full disk): a file that is
not valid JSON stops the report with one paragraph naming it, except a cut-off last line of a
``metrics.jsonl``, which a run killed mid-write leaves and which is skipped with a warning.
report.html (first) and report.md are each written to a temp file and renamed, so a failed write
leaves the previous file as it was.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import PlmtuneError
from ..rundir import write_text_atomic

logger = logging.getLogger(__name__)
REDO = "Delete it (or its run folder) and run 'plmtune bench' again to redo that run."


def _read_json(path: Path, hint: str = REDO) -> Any:
    """Parse a JSON file the bench wrote; a damaged one is named, never a traceback."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"byte 0x{err.object[err.start]:02x} at offset {err.start} is not UTF-8"
    except json.JSONDecodeError as err:
        problem = f"{err.msg} at line {err.lineno}, column {err.colno}"
    except RecursionError:
        problem = "nested too deeply"
    raise PlmtuneError(f"{path} is not valid JSON ({problem}); it was probably cut off by a killed process or a "
                       f"full disk. {hint}")


def _mapping(path: Path, data: Any, fields: dict[str, type | tuple[type, ...]], hint: str = REDO) -> dict:
    """Check that `data` is a mapping whose dotted `fields` have the given types."""
    for dotted, kind in fields.items():
        node: Any = data
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, bool) or not isinstance(node, kind):
            raise PlmtuneError(f"{path}: field '{dotted}' is missing or has the wrong type (got {node!r}); it is not "
                               f"a file a finished plmtune bench wrote. {hint}")
    return data


NUMBER = (int, float)
RESULT_FIELDS = {"test.accuracy": NUMBER}  # what every reader of a bench (the table scripts too) needs
SUMMARY_FIELDS = {"test.accuracy": NUMBER, "test.macro_f1": NUMBER, "test.mcc": NUMBER,
                  "parameters.trainable": NUMBER}  # what the report's summary needs besides
RECORD_FIELDS = {"method": str, "task": str, "k": int, "seed": int, "status": str}
SUITE_HINT = "Run 'plmtune bench' on this folder again to rewrite it."
SUITE_FIELDS = {"name": str, "baseline": str, "methods": list, "seeds": list}


def collect(out: Path) -> tuple[dict, list[dict], dict]:
    """results[(task, k)][method][seed] = result; failures; suite info."""
    suite_file = out / "suite.json"
    if not suite_file.is_file():
        raise PlmtuneError(f"{out} is not a bench folder (no suite.json); run 'plmtune bench' first.")
    suite = _mapping(suite_file, _read_json(suite_file, SUITE_HINT), SUITE_FIELDS, SUITE_HINT)
    results: dict = defaultdict(lambda: defaultdict(dict))
    failures = []
    for record_file in sorted((out / "runs").glob("*/k*/*/seed-*/bench.json")):
        record = _mapping(record_file, _read_json(record_file), RECORD_FIELDS)
        if record["method"] not in suite["methods"]:
            continue
        result_file = record_file.parent / "result.json"
        if record["status"] == "ok" and result_file.is_file():
            result = _mapping(result_file, _read_json(result_file), RESULT_FIELDS)
            result["_dir"] = str(record_file.parent)
            result["_wall_seconds"] = record.get("seconds")  # the whole process, start-up included
            results[(record["task"], record["k"])][record["method"]][record["seed"]] = result
        else:
            failures.append(record)
    return results, failures, suite


def paired(diffs: list[float]) -> dict[str, float]:
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "lo": math.nan, "hi": math.nan, "p": math.nan}
    sd = statistics.stdev(diffs)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 1.0 if sd == 0 and mean == 0 else (0.0 if sd == 0 else float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "p": p}


def summarise(results: dict, baseline: str, methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for (task, k), by_method in sorted(results.items()):
        base = by_method.get(baseline, {})
        for method in methods:
            runs = by_method.get(method)
            if not runs:
                continue
            for r in runs.values():
                _mapping(Path(r["_dir"]) / "result.json", r, SUMMARY_FIELDS)
            acc = [r["test"]["accuracy"] for r in runs.values()]
            f1 = [r["test"]["macro_f1"] for r in runs.values()]
            mcc = [r["test"]["mcc"] for r in runs.values()]
            common = sorted(set(runs) & set(base))
            diff = paired([runs[s]["test"]["accuracy"] - base[s]["test"]["accuracy"] for s in common]) \
                if method != baseline else None
            rows.append({
                "task": task, "k": k, "method": method, "n": len(acc),
                "acc_mean": statistics.fmean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "acc_worst": min(acc), "f1_mean": statistics.fmean(f1),
                "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0, "mcc_mean": statistics.fmean(mcc),
                "seconds": statistics.fmean(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0)
                                            for r in runs.values()),
                "wall_seconds": _mean_of(r.get("_wall_seconds") for r in runs.values()),
                "peak_mb": _mean_of((r.get("peak_memory") or {}).get("peak_rss_mb") for r in runs.values()),
                "trainable": statistics.fmean(r["parameters"]["trainable"] for r in runs.values()),
                "diff": diff,
            })
    return rows


def _mean_of(values) -> float | None:
    """Mean of the values present (runs from older versions lack some fields); None if none are."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _diff_text(diff: dict | None) -> str:
    if diff is None:
        return "(baseline)"
    if math.isnan(diff["lo"]):
        return f"{100 * diff['mean']:+.1f} (n={diff['n']})"
    return f"{100 * diff['mean']:+.1f} [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}] p={diff['p']:.2f}"


COLUMNS = ("method", "seeds", "accuracy", "macro-F1", "MCC", "worst acc", "Δ acc vs baseline [95% CI]",
           "train+eval s", "wall s", "peak RSS MiB", "trainable")


def _cells(r: dict) -> list[str]:
    """One summary row as the text of each column (the Markdown and HTML tables share it)."""
    return [r["method"], str(r["n"]), f"{_pct(r['acc_mean'])} ± {_pct(r['acc_std'])}",
            f"{_pct(r['f1_mean'])} ± {_pct(r['f1_std'])}", _pct(r["mcc_mean"]), _pct(r["acc_worst"]),
            _diff_text(r["diff"]), f"{r['seconds']:.0f}", _number(r.get("wall_seconds")), _number(r.get("peak_mb")),
            f"{r['trainable']:,.0f}"]


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _by_task(rows: list[dict]) -> list[tuple[str, int, list[dict]]]:
    keys = sorted({(r["task"], r["k"]) for r in rows})
    return [(task, k, [r for r in rows if r["task"] == task and r["k"] == k]) for task, k in keys]


def markdown(rows: list[dict], failures: list[dict], suite: dict, env: dict) -> str:
    lines = [f"# Benchmark report: {suite['name']}", "",
             f"Accuracy and macro-F1 in %, mean ± std over seeds {suite['seeds']}; worst seed; paired accuracy "
             f"difference to **{suite['baseline']}** in points with a 95% t-interval and the paired t-test p-value. "
             "A difference whose interval contains 0 is not shown to help or hurt.", ""]
    for task, k, group in _by_task(rows):
        lines += [f"## {task}, K={k}", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in group]
        lines.append("")
    lines += ["## Failed runs", ""]
    lines += [f"- {f['task']} K={f['k']} {f['method']} seed {f['seed']}: "
              f"{(f.get('error') or '').splitlines()[-1] if f.get('error') else 'exit ' + str(f.get('returncode'))}"
              for f in failures] or ["None."]
    lines += ["", "## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    return "\n".join(lines)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(rows: list[dict], results: dict, baseline: str) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    for (task, k), by_method in sorted(results.items()):
        sub = [r for r in rows if r["task"] == task and r["k"] == k]
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
        names = [r["method"] for r in sub]
        means = [100 * r["acc_mean"] for r in sub]
        errs = [100 * 1.96 * r["acc_std"] / math.sqrt(r["n"]) if r["n"] > 1 else 0 for r in sub]
        axes[0].barh(names, means, xerr=errs, color="#4c72b0")
        axes[0].set_xlabel("test accuracy % (mean, 95% interval)")
        for i, name in enumerate(names):
            seeds = by_method[name]
            axes[1].scatter([100 * r["test"]["accuracy"] for r in seeds.values()], [i] * len(seeds), s=18)
        axes[1].set_yticks(range(len(names)), names)
        axes[1].set_xlabel("test accuracy % per seed")
        for r in sub:
            gain = 100 * r["diff"]["mean"] if r["diff"] else 0.0
            axes[2].scatter(r["seconds"], gain)
            axes[2].annotate(r["method"], (r["seconds"], gain), fontsize=7)
        axes[2].axhline(0, color="grey", lw=0.8)
        axes[2].set_xlabel("seconds per run")
        axes[2].set_ylabel(f"Δ accuracy vs {baseline} (points)")
        fig.suptitle(f"{task}, K={k}")
        images.append((f"{task}, K={k}: accuracy, seeds, cost vs gain", _png(fig)))
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for name, seeds in by_method.items():
            first = next(iter(seeds.values()))
            log = Path(first["_dir"]) / "metrics.jsonl"
            if not log.is_file():
                continue
            train = [(p["step"], p["loss"]) for p in read_log(log) if p.get("type") == "train"
                     and isinstance(p.get("step"), NUMBER) and isinstance(p.get("loss"), NUMBER)]
            if train:
                ax.plot(*zip(*train), label=name, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (first seed)")
        if ax.lines:
            ax.legend(fontsize=7)
        images.append((f"{task}, K={k}: learning curves", _png(fig)))
        plt.close(fig)
    return images


def read_log(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a cut-off last line (a run killed mid-write) is skipped."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and friends
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            if number == len(lines):  # no newline after it: the writer was stopped mid-line
                logger.warning("%s: skipped the cut-off last line %d (the run was stopped while writing it).",
                               path, number)
                break
            raise PlmtuneError(f"{path}, line {number}: not valid JSON ({getattr(err, 'msg', err)}). "
                               f"{REDO}") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def write_report_files(files: dict[Path, str]) -> None:
    """Write each file through a temp file and a rename, in order; a failure names the file.

    Callers put the large report.html first: if the disk fills up there, nothing has been replaced.
    """
    for path, text in files.items():
        try:
            write_text_atomic(path, text)
        except OSError as err:
            raise PlmtuneError(f"Could not write {path}: {err.strerror or err}. {path.name} was left as it was "
                               "(it is written to a temp file and renamed only when complete).") from err


def html_page(md_rows: list[dict], failures: list[dict], suite: dict, images: list[tuple[str, str]], env: dict) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>plmtune report: {html.escape(suite['name'])}"
             "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>Benchmark report: {html.escape(suite['name'])}</h1>",
             f"<p>Accuracy and macro-F1 in %, mean ± std over seeds {suite['seeds']}; paired accuracy difference to "
             f"<b>{html.escape(suite['baseline'])}</b> with a 95% t-interval.</p>"]
    for task, k, group in _by_task(md_rows):
        parts.append(f"<h2>{html.escape(task)}, K={k}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in group]
        parts.append("</table>")
    for title, data in images:
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    failed = [html.escape(f"{f['task']} K={f['k']} {f['method']} seed {f['seed']}") for f in failures]
    parts.append("<h2>Failed runs</h2><ul>" + "".join(f"<li>{x}</li>" for x in failed)
                 + ("" if failures else "<li>None.</li>") + "</ul>")
    parts.append(f"<h2>Environment</h2><pre>{html.escape(json.dumps(env, indent=1))}</pre></body></html>")
    return "\n".join(parts)


def write_report(out: Path, baseline: str | None = None) -> tuple[Path, Path]:
    from ..provenance import machine, versions

    results, failures, suite = collect(out)
    if not results:
        raise PlmtuneError(f"{out} holds no finished runs yet.")
    if baseline:
        suite["baseline"] = baseline
    rows = summarise(results, suite["baseline"], suite["methods"])
    env = {"versions": versions(), "machine": machine()}
    md_path, html_path = out / "report.md", out / "report.html"
    page = html_page(rows, failures, suite, plots(rows, results, suite["baseline"]), env)
    write_report_files({html_path: page, md_path: markdown(rows, failures, suite, env)})
    return md_path, html_path
