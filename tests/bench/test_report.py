"""`plmtune report` on damaged bench folders (P2) and on a full disk (O7)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from plmtune.cli import main
from test_bad_input import mounted  # noqa: F401  (the tmpfs fixture)

RUN = "runs/toy/k8/vanilla/seed-1"


def _bench_folder(out):
    """A small finished bench: two methods x two seeds, with learning curves."""
    for method, accs in {"vanilla": [0.6, 0.7], "other": [0.65, 0.8]}.items():
        for seed, acc in zip((1, 2), accs):
            d = out / "runs" / "toy" / "k8" / method / f"seed-{seed}"
            d.mkdir(parents=True)
            (d / "bench.json").write_text(json.dumps({"method": method, "task": "toy", "k": 8, "seed": seed,
                                                      "status": "ok", "seconds": 4.0}))
            (d / "result.json").write_text(json.dumps({"status": "ok", "test": {"accuracy": acc, "macro_f1": acc,
                                                       "mcc": 0.1}, "train_seconds": 3, "parameters": {"trainable": 5}}))
            (d / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "step": s, "loss": 1.0 / s}) + "\n"
                                                     for s in range(1, 6)))
    (out / "suite.json").write_text(json.dumps({"name": "toy", "baseline": "vanilla", "seeds": [1, 2],
                                                "methods": ["vanilla", "other"], "tasks": ["toy"], "k": [8]}))
    return out


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _report(out, capsys):
    code = main(["report", str(out)])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("name", ["suite.json", f"{RUN}/bench.json", f"{RUN}/result.json"])
def test_a_truncated_json_file_is_named_in_one_paragraph(tmp_path, capsys, name):
    out = _bench_folder(tmp_path / "b")
    _cut(out / name)
    code, err = _report(out, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(rf"{re.escape(str(out / name))} is not valid JSON \(.* at line 1, column \d+\)", err), err
    assert not (out / "report.html").exists() and not (out / "report.md").exists()


def test_a_result_json_of_the_wrong_shape_is_named(tmp_path, capsys):
    out = _bench_folder(tmp_path / "b")
    (out / RUN / "result.json").write_text(json.dumps({"status": "ok", "test": None}))
    code, err = _report(out, capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert f"{out / RUN / 'result.json'}: field 'test.accuracy' is missing" in err


def test_a_cut_off_last_metrics_line_is_skipped_with_a_warning(tmp_path, capsys, caplog):
    out = _bench_folder(tmp_path / "b")
    log = out / RUN / "metrics.jsonl"
    log.write_text(log.read_text() + '{"type": "train", "st')  # a run killed while writing a record
    code, err = _report(out, capsys)
    assert code == 0, err
    assert "skipped the cut-off last line 6" in caplog.text
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 2


def test_a_corrupt_line_inside_metrics_jsonl_is_named(tmp_path, capsys):
    out = _bench_folder(tmp_path / "b")
    log = out / RUN / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = lines[2][:10]
    log.write_text("\n".join(lines) + "\n")
    code, err = _report(out, capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert f"{log}, line 3: not valid JSON" in err


def test_disk_full_while_writing_the_report_leaves_the_old_report_whole(tmp_path, capsys, mounted):  # noqa: F811
    tiny = mounted("tiny", "size=1m")
    out = tiny / "b"
    shutil.copytree(_bench_folder(tmp_path / "b"), out)
    (out / "report.md").write_text("old md\n")
    (out / "report.html").write_text("old html\n")
    # Fill the disk but for 16 KiB: room for report.md (1 KiB), not for report.html (~60 KiB of PNGs).
    stat = os.statvfs(tiny)
    (tiny / "filler").write_bytes(b"x" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
    code, err = _report(out, capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert "No space left on device" in err and "report.html" in err and "Nothing partial" not in err
    assert (out / "report.md").read_text() == "old md\n" and (out / "report.html").read_text() == "old html\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]  # no temp file left behind


def test_the_report_is_readable_by_others(tmp_path, capsys):
    out = _bench_folder(tmp_path / "b")
    assert _report(out, capsys)[0] == 0
    assert (out / "report.html").stat().st_mode & 0o044 == 0o044
