"""`plmtune report DIR`: tables and plots from a bench folder, as report.md and report.html.

Per task and K, each method's accuracy, macro-F1 and MCC (mean ± std over seeds) and, in the
metric the task is judged by (``metric``: accuracy, macro_f1 or mcc; by default MCC for CoLA,
the GLUE convention, and accuracy elsewhere: ``DEFAULT_METRICS``), its worst seed, the 95%
t-interval of its mean and its paired difference to the suite's baseline over the seeds both
finished, with a 95% t-interval and the paired t-test's two-sided p-value. Every interval, in
the tables and the figures alike, is that Student-t interval. The intro warns when a method has
fewer than 5 seeds and notes how many comparisons the report makes. Failed runs are listed,
never dropped silently. The environment is that of the runs (their result.json files),
identical records counted once, not that of the machine running the report. Figures: see
``bench.figures``; they are embedded in report.html and written beside it as
``figures/TASK-KK-KIND.png`` and ``.svg``.

A bench folder is read as data that may be damaged (a killed run, a full disk): a file that is
not valid JSON stops the report with one paragraph naming it, except a cut-off last line of a
``metrics.jsonl``, which a run killed mid-write leaves and which is skipped with a warning.
report.html (first), the figure files and report.md are each written to a temp file and renamed,
so a failed write leaves the previous file as it was. The same bench folder gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..errors import PlmtuneError
from ..rundir import write_text_atomic
from . import figures
from .layout import k_order

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
RECORD_FIELDS = {"method": str, "task": str, "k": (int, str), "seed": int, "status": str}  # k: an int or "full"
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


METRICS = tuple(figures.LABELS)  # accuracy, macro_f1, mcc: the keys of result.json's "test"
DEFAULT_METRICS = {"cola": "mcc"}  # the task's conventional metric where it is not accuracy (GLUE: MCC for CoLA)
FEW_SEEDS = 5


def metric_for(task: str, metric: str | None) -> str:
    """The metric a task's differences are computed in: `metric` if given, else the task's default."""
    return metric or DEFAULT_METRICS.get(task.lower(), "accuracy")


def t_critical(n: int) -> float:
    """Student's t quantile for a two-sided 95% interval from n values (n - 1 degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% t-interval (NaN under 2 values): the report's one interval."""
    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2:
        return mean, math.nan
    return mean, t_critical(len(values)) * statistics.stdev(values) / math.sqrt(len(values))


def paired(diffs: list[float]) -> dict[str, float]:
    from scipy import stats

    n = len(diffs)
    mean, half = mean_interval(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "lo": math.nan, "hi": math.nan, "p": math.nan}
    sd = statistics.stdev(diffs)
    p = 1.0 if sd == 0 and mean == 0 else (0.0 if sd == 0 else float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "p": p}


def summarise(results: dict, baseline: str, methods: list[str], metric: str | None = None) -> list[dict[str, Any]]:
    """One row per task, K and method; differences in `metric` (None: each task's default)."""
    rows = []
    for (task, k), by_method in sorted(results.items(), key=lambda item: (item[0][0], k_order(item[0][1]))):
        chosen = metric_for(task, metric)
        for runs in by_method.values():  # the baseline's too, before a difference reads it
            for r in runs.values():
                _mapping(Path(r["_dir"]) / "result.json", r, SUMMARY_FIELDS)
        base = by_method.get(baseline, {})
        for method in methods:
            runs = by_method.get(method)
            if not runs:
                continue
            acc = [r["test"]["accuracy"] for r in runs.values()]
            f1 = [r["test"]["macro_f1"] for r in runs.values()]
            mcc = [r["test"]["mcc"] for r in runs.values()]
            common = sorted(set(runs) & set(base))
            diff = paired([runs[s]["test"][chosen] - base[s]["test"][chosen] for s in common]) \
                if method != baseline else None
            values = [r["test"][chosen] for r in runs.values()]
            m_mean, m_half = mean_interval(values)
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
                "diff": diff, "metric": chosen, "m_mean": m_mean, "m_half": m_half, "m_worst": min(values),
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


def columns(metric: str) -> tuple[str, ...]:
    label = figures.LABELS[metric]
    return ("method", "seeds", "accuracy", "macro-F1", "MCC", f"worst {label}", f"{label} 95% CI",
            f"Δ {label} [95% CI]", "train+eval s", "wall s", "peak RSS MiB", "trainable")


COLUMNS = columns("accuracy")


def _interval_text(mean: float, half: float) -> str:
    return f"[{_pct(mean - half)}, {_pct(mean + half)}]" if math.isfinite(half) else "–"


def _cells(r: dict) -> list[str]:
    """One summary row as the text of each column (the Markdown and HTML tables share it)."""
    return [r["method"], str(r["n"]), f"{_pct(r['acc_mean'])} ± {_pct(r['acc_std'])}",
            f"{_pct(r['f1_mean'])} ± {_pct(r['f1_std'])}", _pct(r["mcc_mean"]), _pct(r["m_worst"]),
            _interval_text(r["m_mean"], r["m_half"]), _diff_text(r["diff"]), f"{r['seconds']:.0f}",
            _number(r.get("wall_seconds")), _number(r.get("peak_mb")), f"{r['trainable']:,.0f}"]


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _by_task(rows: list[dict]) -> list[tuple[str, int, list[dict]]]:
    keys = sorted({(r["task"], r["k"]) for r in rows}, key=lambda key: (key[0], k_order(key[1])))
    return [(task, k, [r for r in rows if r["task"] == task and r["k"] == k]) for task, k in keys]


def intro(rows: list[dict], suite: dict, metric: str | None) -> list[str]:
    """The paragraphs above the tables, shared by report.md and report.html (``**bold**``, ``code``)."""
    paragraphs = [(
        f"Accuracy, macro-F1 and MCC in %, mean ± std over seeds {suite['seeds']}. Then, in the metric named in "
        f"each table's header: the worst seed, the 95% t-interval of the mean, and the paired difference (Δ) to "
        f"**{suite['baseline']}** in points over the seeds both finished, with its 95% t-interval and the paired "
        "t-test's two-sided p-value. A difference whose interval contains 0 is not shown to help or hurt. Every "
        "interval in the tables and the figures is the same Student-t interval (t with n − 1 degrees of freedom, "
        "not 1.96).")]
    tasks = sorted({r["task"] for r in rows})
    if metric:
        paragraphs.append(f"Differences are in {figures.LABELS[metric]} for every task (`--metric {metric}`).")
    else:
        other = {t: metric_for(t, None) for t in tasks if metric_for(t, None) != "accuracy"}
        named = ", ".join(f"{figures.LABELS[m]} for {t}" for t, m in other.items())
        where = (f"each task's conventional metric: {named} (the GLUE convention), accuracy for the others"
                 if named else "accuracy")
        paragraphs.append(f"Differences are in {where}; `--metric macro_f1` (where classes are imbalanced) or "
                          "`--metric mcc` puts every task in one metric.")
    counts = sorted({r["n"] for r in rows} | {r["diff"]["n"] for r in rows if r["diff"]})
    few = [n for n in counts if n < FEW_SEEDS]
    if few:
        t_values = ", ".join(f"{t_critical(n):.2f} for {n} seeds" for n in few if n >= 2)
        paragraphs.append(
            f"**Few seeds: the intervals are wide.** Some methods have only {few[0]} seed{'s' * (few[0] != 1)}"
            f"{' (one seed gives no interval)' if few[0] < 2 else ''}. A 95% t-interval is t × sd / √n"
            f"{f' with t = {t_values}' if t_values else ''}, where many seeds would give 1.96; run at least "
            f"{FEW_SEEDS} seeds before drawing conclusions.")
    compared = [r for r in rows if r["diff"] and r["diff"]["n"] >= 2]
    if compared:
        methods, groups = len({r["method"] for r in compared}), len({(r["task"], r["k"]) for r in compared})
        comparisons = len(compared)
        paragraphs.append(
            f"**Many comparisons.** This report makes {comparisons} paired comparison{'s' * (comparisons != 1)} (up to {methods} "
            f"method{'s' * (methods != 1)} × {groups} task/K pair{'s' * (groups != 1)}). When nothing differs, "
            f"each 95% interval still excludes 0 one time in 20, so some intervals will exclude 0 by chance "
            f"(about {comparisons / 20:.1f} here): trust an effect that repeats across tasks, K and seeds more than "
            "any single interval.")
    return paragraphs


def environment(results: dict) -> dict[str, Any]:
    """The runs' machines, libraries and commits (from their result.json), identical ones counted once."""
    sections = {"machine": Counter(), "versions": Counter(), "git": Counter()}
    unrecorded, first = Counter(), {}  # first: each record as the first run holding it wrote it (its key order)
    runs = [r for by_method in results.values() for seeds in by_method.values() for r in seeds.values()]
    for result in runs:
        for key, counter in sections.items():
            value = result.get(key)
            if isinstance(value, dict):
                text = json.dumps(value, sort_keys=True)
                counter[text] += 1
                first.setdefault(text, value)
            else:
                unrecorded[key] += 1
    return {"runs": len(runs), "unrecorded": dict(unrecorded),
            **{key: [(n, first[text]) for text, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
               for key, counter in sections.items()}}


ENV_HEADINGS = {"machine": "Machines", "versions": "Libraries", "git": "Code (git commit)"}


def _environment_items(env: dict) -> list[tuple[str, list[str]]]:
    def runs(n: int) -> str:
        return f"{n} run{'s' * (n != 1)}"

    out = []
    for key, heading in ENV_HEADINGS.items():
        items = [f"{runs(n)}: " + "; ".join(f"{field}: {value}" for field, value in record.items())
                 for n, record in env[key]]
        if env["unrecorded"].get(key):
            items.append(f"{runs(env['unrecorded'][key])}: not recorded")
        out.append((heading, items))
    return out


ENV_INTRO = ("The machines, libraries and code that ran the {runs} finished runs, from their result.json files "
             "(identical records counted once), not the machine that wrote this report.")


def _failure_text(f: dict) -> str:
    error = f.get("error")
    return (f"{f['task']} K={f['k']} {f['method']} seed {f['seed']}: "
            f"{error.splitlines()[-1] if error else 'exit ' + str(f.get('returncode'))}")


def markdown(rows: list[dict], failures: list[dict], suite: dict, env: dict, metric: str | None = None) -> str:
    lines = [f"# Benchmark report: {suite['name']}", ""]
    for paragraph in intro(rows, suite, metric):
        lines += [paragraph, ""]
    for task, k, group in _by_task(rows):
        heads = columns(group[0]["metric"])
        lines += [f"## {task}, K={k}", "", "| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in group]
        lines.append("")
    lines += ["## Failed runs", ""]
    lines += [f"- {_failure_text(f)}" for f in failures] or ["None."]
    lines += ["", "## Environment", "", ENV_INTRO.format(runs=env["runs"]), ""]
    for heading, items in _environment_items(env):
        lines += [f"**{heading}**", "", *[f"- {item}" for item in items], ""]
    return "\n".join(lines)


def _majority(by_method: dict, metric: str) -> float | None:
    """The mean test metric of the majority-class peer, where it ran."""
    for runs in by_method.values():
        if runs and all(r.get("peer") == "majority" for r in runs.values()):
            return statistics.fmean(r["test"][metric] for r in runs.values())
    return None


def _curves(by_method: dict, methods: list[str], metric: str) -> dict:
    """method → seed → {"dev": [(epoch, dev metric)], "loss": [(step, training loss)]}, every seed."""
    curves: dict = {}
    for name in methods:
        for seed, result in sorted(by_method.get(name, {}).items()):
            dev = [(h["epoch"], h[metric]) for h in result.get("dev_history") or [] if isinstance(h, dict)
                   and isinstance(h.get("epoch"), NUMBER) and isinstance(h.get(metric), NUMBER)]
            log = Path(result["_dir"]) / "metrics.jsonl"
            loss = [(p["step"], p["loss"]) for p in (read_log(log) if log.is_file() else [])
                    if p.get("type") == "train" and isinstance(p.get("step"), NUMBER)
                    and isinstance(p.get("loss"), NUMBER)]
            curves.setdefault(name, {})[seed] = {"dev": dev, "loss": loss}
    return curves


CAPTIONS = {
    "interval": "test {label}, mean and 95% t-interval per method{majority}",
    "seeds": "test {label} per seed; a line joins one seed's runs (the pairs of the paired test){majority}",
    "cost": "train+eval seconds per run against Δ {label} vs {baseline}, with its 95% t-interval",
    "curves": "learning curves of every seed: dev {label} per epoch (dev_history) and training loss per step",
}


def draw(rows: list[dict], results: dict, baseline: str) -> list[dict[str, Any]]:
    """Every figure as {task, k, kind, stem, title, png, svg}, in the order of the tables."""
    drawn = []
    with figures.drawing():
        for task, k, group in _by_task(rows):
            by_method, metric = results[(task, k)], group[0]["metric"]
            majority = _majority(by_method, metric)
            curves = _curves(by_method, [r["method"] for r in group], metric)
            for kind, fig in figures.group_figures(group, by_method, curves, metric, baseline, majority):
                png, svg = figures.render(fig)
                title = CAPTIONS[kind].format(label=figures.LABELS[metric], baseline=baseline,
                                              majority="; dashed: the majority class" if majority is not None else "")
                drawn.append({"task": task, "k": k, "kind": kind, "stem": figures.file_stem(task, k, kind),
                              "title": f"{task}, K={k}: {title}", "png": png, "svg": svg})
    return drawn


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


def write_report_files(files: dict[Path, str | bytes]) -> None:
    """Write each file through a temp file and a rename, in order; a failure names the file.

    Callers put the large report.html first: if the disk fills up there, nothing has been replaced.
    """
    for path, data in files.items():
        try:
            path.parent.mkdir(exist_ok=True)
            if isinstance(data, bytes):
                figures.write_bytes_atomic(path, data)
            else:
                write_text_atomic(path, data)
        except OSError as err:
            raise PlmtuneError(f"Could not write {path}: {err.strerror or err}. {path.name} was left as it was "
                               "(it is written to a temp file and renamed only when complete).") from err


CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:1500px}.scroll{overflow-x:auto}table{border-collapse:"
       "collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;"
       "white-space:nowrap}"
       "td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}figure{margin:1em 0}"
       "figcaption{font-size:90%;color:#333}code{white-space:nowrap}")


def _inline(text: str) -> str:
    """A Markdown paragraph of ours (only **bold** and `code`) as HTML."""
    text = html.escape(text)
    text = "".join(f"<b>{part}</b>" if i % 2 else part for i, part in enumerate(text.split("**")))
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(text.split("`")))


def _figure_html(figure: dict) -> str:
    width = round(int.from_bytes(figure["png"][16:20], "big") * 96 / figures.DPI)  # CSS px, from the PNG header
    data = base64.b64encode(figure["png"]).decode()
    links = " · ".join(f"<a href='figures/{figure['stem']}.{ext}'>{ext.upper()}</a>" for ext in ("png", "svg"))
    return (f"<figure><img alt='{html.escape(figure['title'])}' width='{width}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(figure['title'])} ({links})</figcaption></figure>")


def html_page(md_rows: list[dict], failures: list[dict], suite: dict, drawn: list[dict], env: dict,
              metric: str | None = None) -> str:
    name = html.escape(suite["name"])
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>plmtune report: {name}</title>"
              f"<style>{CSS}</style></head><body>"), f"<h1>Benchmark report: {name}</h1>"]
    parts += [f"<p>{_inline(p)}</p>" for p in intro(md_rows, suite, metric)]
    for task, k, group in _by_task(md_rows):
        parts.append(f"<h2>{html.escape(task)}, K={html.escape(str(k))}</h2><div class='scroll'><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in columns(group[0]["metric"])) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in group]
        parts.append("</table></div>")
        parts += [_figure_html(f) for f in drawn if (f["task"], f["k"]) == (task, k)]
    parts.append("<h2>Failed runs</h2><ul>" + "".join(f"<li>{html.escape(_failure_text(f))}</li>" for f in failures)
                 + ("" if failures else "<li>None.</li>") + "</ul>")
    parts.append(f"<h2>Environment</h2><p>{html.escape(ENV_INTRO.format(runs=env['runs']))}</p>")
    for heading, items in _environment_items(env):
        parts.append(f"<h3>{html.escape(heading)}</h3><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in items)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: Path, baseline: str | None = None, metric: str | None = None) -> tuple[Path, Path]:
    """Write report.html, figures/*.png and *.svg, and report.md; `metric` None: each task's default."""
    if metric is not None and metric not in METRICS:
        raise PlmtuneError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}.")
    results, failures, suite = collect(out)
    if not results:
        raise PlmtuneError(f"{out} holds no finished runs yet.")
    if baseline:
        suite["baseline"] = baseline
    rows = summarise(results, suite["baseline"], suite["methods"], metric)
    env = environment(results)
    drawn = draw(rows, results, suite["baseline"])
    md_path, html_path = out / "report.md", out / "report.html"
    files: dict[Path, str | bytes] = {html_path: html_page(rows, failures, suite, drawn, env, metric)}
    for figure in drawn:
        files[out / "figures" / f"{figure['stem']}.png"] = figure["png"]
        files[out / "figures" / f"{figure['stem']}.svg"] = figure["svg"]
    files[md_path] = markdown(rows, failures, suite, env, metric)
    write_report_files(files)
    return md_path, html_path
