"""The report's figures, one set per task and K, drawn with matplotlib and kept as PNG and SVG.

Four kinds (``KINDS``), each its own figure so it can go into a paper or slides as it is:

* ``interval``: each method's mean of the task's metric with the 95% t-interval of the mean (the
  same Student-t interval as the report's table), a dashed majority-class line where the
  ``majority`` peer ran, and an axis around the data rather than from 0;
* ``seeds``: every seed's value, one marker and colour per seed, joined across methods so the
  pairing the paired test relies on is visible;
* ``cost``: seconds per run against the paired difference to the baseline, with its 95% t-interval;
* ``curves``: the dev metric per epoch (``dev_history``) and the training loss per step
  (``metrics.jsonl``) for every seed of every method.

Labels never overlap: methods are named on an axis or in a legend beside it, never in free text,
and every figure uses constrained layout and is saved with a tight bounding box. Output is
deterministic: the default style whatever the user's matplotlibrc, no date in the SVG, fixed SVG
ids. Files are written through a temp file and a rename (``write_bytes_atomic``).

The figures take the report's summary rows and data, never read the bench folder themselves.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

KINDS = ("interval", "seeds", "cost", "curves")
LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC"}
RANGES = {"mcc": (-100.0, 100.0)}  # in points; the others are 0..100
DPI = 150
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_STYLE = {"svg.hashsalt": "plmtune-report", "svg.fonttype": "path", "font.size": 9}


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def axis_range(values: list[float], metric: str) -> tuple[float, float]:
    """A range around `values` (in points) with a margin, inside the metric's possible range."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low_bound, high_bound = RANGES.get(metric, (0.0, 100.0))
    if not finite:
        return low_bound, high_bound
    low, high = min(finite), max(finite)
    pad = max(0.08 * (high - low), 1.0)
    return max(low - pad, low_bound), min(high + pad, high_bound)


def _majority_line(ax, majority: float | None) -> None:
    if majority is not None and math.isfinite(majority):
        ax.axvline(100 * majority, color="#555555", ls="--", lw=1, label=f"majority class ({100 * majority:.1f})")


def _legend_right(ax, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8,
                  frameon=False, ncol=1 if len(labels) <= 16 else 2, **kwargs)


def interval_figure(rows: list[dict], by_method: dict, metric: str, majority: float | None):
    """Means with their 95% t-interval (``m_half`` in each row: the same as the table's)."""
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.3 * len(names)), layout="constrained")
    means = [100 * r["m_mean"] for r in rows]
    halves = [100 * r["m_half"] if math.isfinite(r["m_half"]) else 0.0 for r in rows]
    ax.errorbar(means, range(len(names)), xerr=halves, fmt="o", color="#4c72b0", ecolor="#4c72b0", capsize=3,
                label="mean, 95% t-interval")
    seeds = [100 * r["test"][metric] for name in names for r in by_method.get(name, {}).values()]
    spread = [m - h for m, h in zip(means, halves)] + [m + h for m, h in zip(means, halves)]
    _methods_axis(ax, names, spread + seeds, metric, majority,
                  f"test {LABELS[metric]}, points (mean over seeds, 95% t-interval)")
    return fig


def _methods_axis(ax, names: list[str], values: list[float], metric: str, majority: float | None, xlabel: str) -> None:
    """One row per method (top to bottom), the majority line, an x-range around `values`, the legend."""
    _majority_line(ax, majority)
    ax.set_xlim(*axis_range(values + ([100 * majority] if majority is not None else []), metric))
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    _legend_right(ax)


def seeds_figure(rows: list[dict], by_method: dict, metric: str, majority: float | None):
    """Every seed's value; a seed keeps its marker and colour and is joined across methods."""
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    seeds = sorted({s for name in names for s in by_method.get(name, {})})
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.3 * len(names)), layout="constrained")
    values = []
    for j, (seed, colour) in enumerate(zip(seeds, _colours(len(seeds)))):
        offset = 0.0 if len(seeds) == 1 else 0.25 * (j / (len(seeds) - 1) - 0.5)
        points = [(100 * by_method[n][seed]["test"][metric], i + offset) for i, n in enumerate(names)
                  if seed in by_method.get(n, {})]
        values += [x for x, _ in points]
        ax.plot(*zip(*points), color=colour, lw=0.7, alpha=0.5, marker=MARKERS[j % len(MARKERS)], ms=5,
                label=f"seed {seed}")
    _methods_axis(ax, names, values, metric, majority,
                  f"test {LABELS[metric]} per seed, points (a line joins one seed's runs)")
    return fig


def cost_figure(rows: list[dict], metric: str, baseline: str):
    """Seconds per run against the paired difference to the baseline, with its 95% t-interval."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    seconds = [r["seconds"] for r in rows]
    for j, (r, colour) in enumerate(zip(rows, _colours(len(rows)))):
        diff = r["diff"]
        gain = 100 * diff["mean"] if diff else 0.0
        half = 100 * (diff["hi"] - diff["mean"]) if diff and math.isfinite(diff["hi"]) else 0.0
        ax.errorbar([r["seconds"]], [gain], yerr=[half], fmt=MARKERS[j % len(MARKERS)], color=colour, capsize=3,
                    label=r["method"] + (" (baseline)" if diff is None else ""))
    ax.axhline(0, color="grey", lw=0.8)
    positive = [s for s in seconds if s > 0]
    if positive and max(positive) / min(positive) > 20 and len(positive) == len(seconds):
        ax.set_xscale("log")
    ax.set_xlabel("train+eval seconds per run (mean over seeds)")
    ax.set_ylabel(f"Δ {LABELS[metric]} vs {baseline}\n(points, 95% t-interval)")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return fig


def curves_figure(curves: dict, metric: str):
    """Dev metric per epoch and training loss per step, one thin line per seed, a colour per method.

    `curves`: method → seed → {"dev": [(epoch, value)], "loss": [(step, loss)]}; None if it is empty.
    """
    import matplotlib.pyplot as plt

    if not any(c["dev"] or c["loss"] for seeds in curves.values() for c in seeds.values()):
        return None
    fig, (dev_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for (name, seeds), colour in zip(curves.items(), _colours(len(curves))):
        for panel, key in ((dev_ax, "dev"), (loss_ax, "loss")):
            labelled = False
            for curve in seeds.values():
                if curve[key]:
                    xs, ys = zip(*curve[key])
                    ys = [100 * y for y in ys] if key == "dev" else ys
                    panel.plot(xs, ys, color=colour, lw=1, alpha=0.8, marker="." if key == "dev" else None,
                               label=None if labelled else name)
                    labelled = True
    for panel, key, what in ((dev_ax, "dev", "dev_history in result.json"), (loss_ax, "loss", "metrics.jsonl")):
        if not panel.lines:
            panel.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=panel.transAxes, color="grey")
    from matplotlib.ticker import MaxNLocator

    for panel in (dev_ax, loss_ax):  # epochs and steps are whole numbers, even where there is only one
        panel.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    dev_ax.set_xlabel("epoch")
    dev_ax.set_ylabel(f"dev {LABELS[metric]}, points")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss")
    for panel in (dev_ax, loss_ax):
        panel.grid(alpha=0.3)
    handles, labels = (dev_ax if dev_ax.lines else loss_ax).get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False,
               title="every seed", title_fontsize=8)
    return fig


def group_figures(rows: list[dict], by_method: dict, curves: dict, metric: str, baseline: str,
                  majority: float | None) -> list[tuple[str, Any]]:
    """(kind, figure) for one task and K; the caller closes them (``render`` does)."""
    figures = [("interval", interval_figure(rows, by_method, metric, majority)),
               ("seeds", seeds_figure(rows, by_method, metric, majority)),
               ("cost", cost_figure(rows, metric, baseline)),
               ("curves", curves_figure(curves, metric))]
    return [(kind, fig) for kind, fig in figures if fig is not None]


@contextlib.contextmanager
def drawing():
    """Matplotlib's default style (whatever the user's matplotlibrc) and the report's settings, on Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"), matplotlib.rc_context(_STYLE):
        yield


def render(fig) -> tuple[bytes, bytes]:
    """The figure as PNG and SVG bytes (no date, fixed ids: the same figure gives the same bytes)."""
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    # Constrained layout keeps every label inside the figure, so no tight bounding box (a second
    # draw per file) is needed; the SVG reuses the layout the PNG's draw settled.
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.set_layout_engine("none")
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png.getvalue(), svg.getvalue()


def file_stem(task: str, k: int, kind: str) -> str:
    """``TASK-KK-KIND``, with anything but letters, digits, '.', '_' and '-' made '_' (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{task}-K{k}-{kind}").lstrip(".") or "figure"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder and rename; the mode an ordinary open() gives."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
