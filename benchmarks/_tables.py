"""Cell formats shared by the Markdown table scripts (suite_table, list_table, tapt_table)."""

from __future__ import annotations

import statistics

from plmtune.bench.report import paired


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
