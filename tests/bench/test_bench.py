from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from shared_data import REPO, shared_dataset
from plmtune.bench.report import paired
from plmtune.bench.suite import load_suite, run_key
from plmtune.errors import RecipeError


def _suite(tmp_path, methods, tasks="[sst2]", extra=""):
    root = shared_dataset("sst2").parent
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: t\ndata_root: {root}\ntasks: {tasks}\nk: [4]\nseeds: [1, 2]\nbaseline: vanilla\n"
                    f"methods:\n{methods}{extra}")
    return path


def test_paired_interval_matches_a_hand_computed_t_interval():
    d = [0.02, 0.04, 0.00, 0.06, 0.03]
    out = paired(d)
    # mean 0.03; squared deviations sum to 0.002, so sd = sqrt(0.002/4) = 0.0223607; t_{4,0.975} = 2.776445
    assert out["mean"] == pytest.approx(0.03)
    assert out["hi"] - out["mean"] == pytest.approx(2.776445 * 0.0223607 / math.sqrt(5), rel=1e-4)
    assert 0 < out["p"] < 0.05
    assert math.isnan(paired([0.1])["lo"])


@pytest.mark.parametrize(("methods", "message"), [
    ("  - {name: vanilla, recipe: baseline, peer: majority}\n", "exactly one of recipe or peer"),
    ("  - {name: vanilla, peer: majorty}\n", "Did you mean 'majority'"),
    ("  - {name: vanilla, recipe: baseline, set: ['train.lr=7']}\n", "train.lr = 7.0 is out of range"),
    ("  - {name: vanilla, recipe: baseline}\n  - {name: vanilla, peer: majority}\n", "must be unique"),
])
def test_bad_suites_are_rejected_before_any_run(tmp_path, methods, message):
    with pytest.raises(RecipeError, match=message):
        load_suite(_suite(tmp_path, methods))


def test_shipped_suites_load(monkeypatch):
    # Shipped suites read data_root from the current folder (the repository root in the README).
    monkeypatch.chdir(REPO)
    for name in ("fewshot", "smoke", "cost"):
        suite = load_suite(REPO / "benchmarks" / "suites" / f"{name}.yaml")
        assert suite.baseline in [m.name for m in suite.methods]
        assert suite.data_root == shared_dataset("sst2").parent.resolve()


def test_shipped_suites_live_in_the_package_and_take_a_data_root_from_anywhere(tmp_path, monkeypatch):
    from plmtune.bench.suite import SUITES_DIR

    monkeypatch.chdir(tmp_path)  # no ../shared/data here
    with pytest.raises(RecipeError, match=r"tasks\[0\]: task folder .* does not exist.*--data-root"):
        load_suite("smoke")
    suite = load_suite("smoke", data_root=shared_dataset("sst2").parent)
    assert suite.path.parent == SUITES_DIR and SUITES_DIR.parent.name == "bench"
    assert (REPO / "benchmarks" / "suites").resolve() == SUITES_DIR  # the repo's old path still works


def test_run_key_changes_with_recipe_data_and_seed(tmp_path):
    from plmtune.fewshot import make_fewshot

    suite = load_suite(_suite(tmp_path, "  - {name: vanilla, recipe: baseline}\n"
                                        "  - {name: lr, recipe: baseline, set: ['train.lr=1e-5']}\n"))
    make_fewshot(suite.data_root / "sst2", tmp_path / "out" / "data" / "sst2", 4, [1, 2])
    specs = suite.expand(tmp_path / "out")
    keys = {(s.method.name, s.seed): run_key(s) for s in specs}
    assert len(set(keys.values())) == 4
    assert run_key(specs[0]) == keys[(specs[0].method.name, specs[0].seed)]  # stable


def test_a_bench_stopped_part_way_can_still_be_reported(tmp_path, monkeypatch):
    # A deadline or Ctrl-C ends `plmtune bench` mid-run; the runs finished before it must stay readable.
    from plmtune.bench import runner
    from plmtune.bench.report import collect

    def interrupted(argv, threads, timeout, on_start):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_local", interrupted)
    out = tmp_path / "bench"
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(load_suite(_suite(tmp_path, "  - {name: vanilla, recipe: baseline}\n")), out, progress=False)
    results, failures, suite = collect(out)
    assert suite["baseline"] == "vanilla" and suite["tasks"] == ["sst2"] and not results and not failures


@pytest.mark.slow
def test_bench_skips_finished_runs_retries_broken_ones_records_failures_and_reports(tmp_path):
    suite = _suite(tmp_path, "  - {name: vanilla, recipe: baseline, set: ['train.max_steps=2', 'train.eval_every=50']}\n"
                             "  - {name: majority, peer: majority}\n"
                             "  - {name: broken, recipe: baseline, set: ['model.backbone=/nonexistent/model']}\n")
    out = tmp_path / "bench"

    def bench():
        return subprocess.run([sys.executable, "-m", "plmtune", "bench", str(suite), "--out", str(out)],
                              capture_output=True, text=True, timeout=900)

    first = bench()
    assert first.returncode == 1  # failures make the exit code non-zero, after every other run
    assert "6 runs, 0 already done, 6 ran, 2 failed" in first.stdout
    record = json.loads((out / "runs/sst2/k4/broken/seed-1/bench.json").read_text())
    assert record["status"] == "failed" and "/nonexistent/model" in record["error"]
    for method in ("vanilla", "majority"):  # every run records its peak memory (a process runs the model: > 100 MiB)
        memory = json.loads((out / f"runs/sst2/k4/{method}/seed-1/result.json").read_text())["peak_memory"]
        assert memory["peak_rss_mb"] > 100 and "peak_cuda_mb" in memory
    # A run that crashed mid-way (no result.json) and the failed ones run again; the rest are skipped.
    (out / "runs/sst2/k4/vanilla/seed-2/result.json").unlink()
    second = bench()
    assert "6 runs, 3 already done, 3 ran, 2 failed" in second.stdout, second.stdout
    report = subprocess.run([sys.executable, "-m", "plmtune", "report", str(out)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    md = (out / "report.md").read_text()
    assert "## sst2, K=4" in md and "| majority | 2 |" in md and "(baseline)" in md
    assert "sst2 K=4 broken seed 1" in md
    assert "| wall s | peak RSS MiB |" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (setup.sh installs it)")
def test_report_html_renders_in_a_headless_browser(tmp_path):
    from plmtune.bench import report as rep

    out = tmp_path / "b"
    seed_dir = out / "runs" / "toy" / "k8"
    for method, accs in {"vanilla": [0.6, 0.7], "other": [0.65, 0.8]}.items():
        for seed, acc in zip((1, 2), accs):
            d = seed_dir / method / f"seed-{seed}"
            d.mkdir(parents=True)
            (d / "bench.json").write_text(json.dumps({"method": method, "task": "toy", "k": 8, "seed": seed,
                                                      "status": "ok"}))
            (d / "result.json").write_text(json.dumps({"status": "ok", "test": {"accuracy": acc, "macro_f1": acc,
                                                       "mcc": 0.1}, "train_seconds": 3, "parameters": {"trainable": 5}}))
    (out / "suite.json").write_text(json.dumps({"name": "toy", "baseline": "vanilla", "seeds": [1, 2],
                                                "methods": ["vanilla", "other"]}))
    _, page = rep.write_report(out)
    shot = tmp_path / "shot.png"
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "<table>" in dom.stdout and "other" in dom.stdout and "+7.5" in dom.stdout
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", "--window-size=1200,900",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
