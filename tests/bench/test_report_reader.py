"""`plmtune report` as a reader needs it (issue 19): one interval everywhere, warnings, the task's metric,
majority line, axes around the data, every seed's curves, the runs' machines, PNG/SVG files."""

from __future__ import annotations

import base64
import errno
import math
import platform
import re
import shutil
import statistics
import xml.etree.ElementTree as ET

import pytest
from bench_folder import ACCURACY, H100, SEEDS, mcc_of, write_bench

from plmtune.bench import figures, report
from plmtune.errors import PlmtuneError


def _t_half(values):
    from scipy import stats

    return stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _group(out, metric=None):
    results, _, suite = report.collect(out)
    rows = report.summarise(results, suite["baseline"], suite["methods"], metric)
    return rows, results[("toy", 8)]


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))


def test_the_charts_whiskers_are_the_tables_t_interval(tmp_path):
    out = write_bench(tmp_path / "b")
    rows, by_method = _group(out)
    fig = figures.interval_figure(rows, by_method, "accuracy", None)
    segments = fig.axes[0].containers[0].lines[2][0].get_segments()
    halves = {r["method"]: (s[1][0] - s[0][0]) / 2 for r, s in zip(rows, segments)}
    for method, accs in ACCURACY.items():
        assert halves[method] == pytest.approx(100 * _t_half(accs), abs=1e-9), method
    # vanilla: sd 5.033, t(2) = 4.3027 → ±12.50 points (1.96·sd/√n would give ±5.70); the table says the same
    assert halves["vanilla"] == pytest.approx(12.50, abs=0.01)
    report.write_report(out)
    assert "| vanilla | 3 | 65.3 ± 5.0 | 60.3 ± 5.0 | 31.0 | 60.0 | [52.8, 77.8] | (baseline) |" \
        in (out / "report.md").read_text()
    # the cost plot's error bar on the gain is the paired difference's t-interval, as in the table
    cost = figures.cost_figure(rows, "accuracy", "vanilla")
    llrd = next(r for r in rows if r["method"] == "llrd")
    segment = cost.axes[0].containers[1].lines[2][0].get_segments()[0]
    assert (segment[1][1] - segment[0][1]) / 2 == pytest.approx(100 * (llrd["diff"]["hi"] - llrd["diff"]["mean"]))
    assert llrd["diff"]["hi"] - llrd["diff"]["mean"] == pytest.approx(
        _t_half([a - b for a, b in zip(ACCURACY["llrd"], ACCURACY["vanilla"])]))


def test_few_seeds_and_many_comparisons_are_flagged_in_both_report_files(tmp_path):
    out = write_bench(tmp_path / "b")
    report.write_report(out)
    md, page = (out / "report.md").read_text(), _text((out / "report.html").read_text())
    for text in (md.replace("**", ""), page):
        assert "A difference whose interval contains 0 is not shown to help or hurt" in text
        assert "the worst seed" in text and "p-value" in text
        assert "Few seeds: the intervals are wide. Some methods have only 3 seeds" in text
        assert "with t = 4.30 for 3 seeds, where many seeds would give 1.96" in text
        assert "This report makes 2 paired comparisons" in text and "some intervals will exclude 0 by chance" in text
    five = write_bench(tmp_path / "five", accuracy={m: (a * 2)[:5] for m, a in ACCURACY.items()},
                       seeds=(1, 2, 3, 4, 5))
    report.write_report(five)
    assert "Few seeds" not in (five / "report.md").read_text()
    assert "Few seeds" not in (five / "report.html").read_text()


def test_differences_are_in_the_chosen_metric_and_cola_defaults_to_mcc(tmp_path):
    out = write_bench(tmp_path / "b", tasks=("toy", "cola"))
    report.write_report(out)
    md = (out / "report.md").read_text()
    toy, cola = md.split("## toy, K=8")[1], md.split("## cola, K=8")[1].split("## toy")[0]
    assert "Δ accuracy [95% CI]" in toy and "| llrd | 3 |" in toy and "+6.3 [-1.7, +14.3] p=0.08" in toy
    # llrd's MCC is 10 points below vanilla's on every seed, though its accuracy is higher
    assert "Δ MCC [95% CI]" in cola and "-10.0 [-10.0, -10.0] p=0.00" in cola
    assert "MCC for cola (the GLUE convention)" in md
    report.write_report(out, metric="mcc")
    md = (out / "report.md").read_text()
    assert md.count("Δ MCC [95% CI]") == 2 and "Differences are in MCC for every task" in md
    report.write_report(out, "vanilla", metric="macro_f1")
    assert (out / "report.md").read_text().count("Δ macro-F1 [95% CI]") == 2
    rows, _ = _group(out, "mcc")
    llrd = next(r for r in rows if r["method"] == "llrd")
    assert llrd["diff"]["mean"] == pytest.approx(-0.10) and llrd["m_mean"] == pytest.approx(
        statistics.fmean(mcc_of("llrd", i) for i in range(3)))
    with pytest.raises(PlmtuneError, match="--metric must be one of accuracy, macro_f1, mcc, got 'f1'"):
        report.write_report(out, metric="f1")


def _majority_lines(ax):
    return [line for line in ax.lines if line.get_label().startswith("majority class")]


def test_plots_have_a_majority_line_and_an_axis_around_the_data(tmp_path):
    rows, by_method = _group(write_bench(tmp_path / "b"))
    for make in (figures.interval_figure, figures.seeds_figure):
        ax = make(rows, by_method, "accuracy", 0.52).axes[0]
        (line,) = _majority_lines(ax)
        assert list(line.get_xdata()) == [52.0, 52.0] and line.get_label() == "majority class (52.0)"
        low, high = ax.get_xlim()
        assert 45 < low < 52 and 80 <= high < 100, (low, high)  # around 52..90, not from 0
        assert not _majority_lines(make(rows, by_method, "accuracy", None).axes[0])
    # The report finds the majority peer itself (result.json's "peer") and uses its mean in the task's metric.
    assert report._majority(by_method, "accuracy") == pytest.approx(0.52)
    assert report._majority(by_method, "mcc") == pytest.approx(0.01)
    assert report._majority({m: r for m, r in by_method.items() if m != "majority"}, "accuracy") is None
    assert figures.axis_range([-40.0, -30.0], "mcc")[0] < -40 and figures.axis_range([99.5], "accuracy")[1] == 100


def test_learning_curves_show_the_dev_metric_of_every_seed(tmp_path):
    out = write_bench(tmp_path / "b")
    _, by_method = _group(out)
    curves = report._curves(by_method, ["vanilla", "llrd", "majority"], "accuracy")
    dev_ax, loss_ax = figures.curves_figure(curves, "accuracy").axes
    assert len(dev_ax.lines) == 6 and len(loss_ax.lines) == 6  # 2 trained methods × 3 seeds each
    for line, (method, i) in zip(dev_ax.lines, [(m, i) for m in ("vanilla", "llrd") for i in range(3)]):
        acc = ACCURACY[method][i]
        assert list(line.get_xdata()) == [1, 2, 3]
        assert list(line.get_ydata()) == pytest.approx([100 * (acc - 0.1 / e) for e in (1, 2, 3)])
    assert dev_ax.get_ylabel() == "dev accuracy, points" and loss_ax.get_xlabel() == "step"
    assert [h.get_label() for h in dev_ax.figure.legends[0].legend_handles] == ["vanilla", "llrd"]
    assert figures.curves_figure({"majority": {1: {"dev": [], "loss": []}}}, "accuracy") is None


def test_the_per_seed_plot_identifies_each_seed_and_joins_its_runs(tmp_path):
    rows, by_method = _group(write_bench(tmp_path / "b"))
    ax = figures.seeds_figure(rows, by_method, "accuracy", None).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"seed {s}" for s in SEEDS]
    markers = {line.get_marker() for line in ax.lines}
    assert len(markers) == 3  # a marker per seed, as well as a colour
    for j, line in enumerate(ax.lines):  # one line per seed through its value under every method
        assert list(line.get_xdata()) == pytest.approx([100 * ACCURACY[m][j] for m in ("vanilla", "llrd", "majority")])


def test_the_environment_is_that_of_the_runs_counted_once(tmp_path):
    out = write_bench(tmp_path / "b", tasks=("toy",))
    laptop = dict(H100, gpu=None, cuda=False, cpu_model="Laptop CPU")
    write_bench(tmp_path / "other", tasks=("cola",), machine=laptop)
    shutil.copytree(tmp_path / "other" / "runs" / "cola", out / "runs" / "cola")
    (out / "runs/cola/k8/vanilla/seed-13/result.json").write_text(
        (out / "runs/cola/k8/vanilla/seed-13/result.json").read_text().replace('"machine"', '"old_machine"'))
    report.write_report(out)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    env = md.split("## Environment")[1]
    assert "the 18 finished runs" in env and "not the machine that wrote this report" in env
    assert "- 9 runs: platform: Linux-5.15-x86_64; processor: x86_64; cpu_model: Intel Xeon Platinum 8480+" in env
    assert "gpu: NVIDIA H100 80GB HBM3" in env and "cpu_model: Laptop CPU" in env and "- 8 runs: " in env
    assert "- 1 run: not recorded" in env and "- 18 runs: python: 3.11.7; plmtune: 0.1.0" in env
    assert platform.platform() not in md and platform.platform() not in page
    assert "NVIDIA H100 80GB HBM3" in page and "Laptop CPU" in page


def test_figures_are_png_and_svg_files_beside_the_report_and_embedded_in_it(tmp_path):
    out = write_bench(tmp_path / "b")
    report.write_report(out)
    page = (out / "report.html").read_text()
    for kind in figures.KINDS:
        png, svg = out / "figures" / f"toy-K8-{kind}.png", out / "figures" / f"toy-K8-{kind}.svg"
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert ET.fromstring(svg.read_bytes()).tag.endswith("svg")
        assert base64.b64encode(png.read_bytes()).decode() in page  # the same image
        assert f"href='figures/toy-K8-{kind}.svg'" in page
        assert png.stat().st_mode & 0o044 == 0o044  # readable by others, like the report
    assert not [p for p in (out / "figures").iterdir() if p.name.startswith(".")]  # no temp file left
    assert figures.file_stem("../x y", 8, "seeds") == "_x_y-K8-seeds"


def test_the_same_bench_gives_the_same_report_bytes_wherever_it_lies(tmp_path):
    first, second = write_bench(tmp_path / "one"), write_bench(tmp_path / "two" / "deeper")
    report.write_report(first)
    report.write_report(second)
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*")
                   if p.suffix in (".md", ".html", ".png", ".svg"))
    assert len(names) == 2 + 2 * len(figures.KINDS)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_failed_figure_write_leaves_the_old_figure_whole(tmp_path, monkeypatch):
    out = write_bench(tmp_path / "b")
    report.write_report(out)
    svg = out / "figures" / "toy-K8-seeds.svg"
    svg.write_text("old svg")
    real = figures.os.replace

    def replace(src, dst):
        if str(dst).endswith("seeds.svg"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(figures.os, "replace", replace)
    with pytest.raises(PlmtuneError, match=rf"Could not write {re.escape(str(svg))}: No space left on device"):
        report.write_report(out)
    assert svg.read_text() == "old svg" and not [p for p in svg.parent.iterdir() if p.name.startswith(".")]


def _texts(fig):
    """(text, extent) of every label drawn in the figure: ticks in view, axis labels, legends, notes."""
    import matplotlib.text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = []
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks():
                if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9 and tick.label1.get_visible() and tick.label1.get_text():
                    shown.append(tick.label1)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    shown += [ax.xaxis.label for ax in fig.axes] + [ax.yaxis.label for ax in fig.axes]
    shown += [t for legend in legends for t in [*legend.get_texts(), legend.get_title()]]
    shown += [t for ax in fig.axes for t in ax.texts]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in shown
            if isinstance(t, matplotlib.text.Text) and t.get_visible() and t.get_text().strip()]


def test_labels_neither_overlap_nor_leave_the_figure(tmp_path):
    names = ["vanilla", "linear_probe", "setfit", "majority", "child_tuning_d_reserve_0.3", "llrd", "mixout_0.9",
             "r3f", "lora_r8_alpha16", "prompt_tuning", "a_method_with_a_long_name_that_might_clip", "eda"]
    accuracy = {n: [0.5 + 0.03 * i, 0.55 + 0.02 * i, 0.6 + 0.01 * i] for i, n in enumerate(names)}
    out = write_bench(tmp_path / "b", accuracy=accuracy)
    rows, by_method = _group(out)
    curves = report._curves(by_method, names, "accuracy")
    with figures.drawing():
        for kind, fig in figures.group_figures(rows, by_method, curves, "accuracy", "vanilla", 0.5):
            texts = _texts(fig)
            assert len(texts) > len(names), kind
            box = fig.bbox
            for text, extent in texts:
                assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
                    (kind, text, extent, box)
            for i, (a, ea) in enumerate(texts):
                for b, eb in texts[i + 1:]:
                    overlap = min(ea.x1, eb.x1) - max(ea.x0, eb.x0), min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
                    assert min(overlap) <= 0.5, (kind, a, b)  # half a pixel: touching is not overlapping
            figures.render(fig)
