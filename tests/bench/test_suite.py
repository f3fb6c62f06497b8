"""Suite files: peers that name their backbones, and `k: full` (runs on the task folder's own splits)."""

from __future__ import annotations

import json
import sys

import pytest

from plmtune.bench.layout import FULL, k_order
from plmtune.bench.runner import command, prepare_data
from plmtune.bench.suite import Method, load_suite, run_key
from plmtune.errors import RecipeError

ROWS = "".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8))


def _task(root, name="toy", splits=("train", "dev", "test")):
    folder = root / name
    folder.mkdir(parents=True)
    for split in splits:
        (folder / f"{split}.jsonl").write_text(ROWS)
    return folder


def _suite(tmp_path, methods="  - {name: m, peer: majority}\n", k="[full]", tasks="[toy]"):
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: t\ndata_root: data\ntasks: {tasks}\nk: {k}\nseeds: [1, 2]\nmethods:\n{methods}")
    return path


# ------------------------------------------------------------------ peer backbones


def test_a_peer_without_backbones_keeps_its_identity_and_run_key(tmp_path):
    # Bench folders written before suites could name backbones must still find their runs done.
    _task(tmp_path / "data")
    suite = load_suite(_suite(tmp_path, "  - {name: s, peer: setfit}\n  - {name: d, peer: setfit_distill}\n"))
    assert [m.identity() for m in suite.methods] == [{"peer": "setfit"}, {"peer": "setfit_distill"}]
    assert suite.methods[0] == Method("s", peer="setfit")


def test_peer_backbones_go_into_the_identity_the_run_key_and_the_command(tmp_path):
    _task(tmp_path / "data")
    suite = load_suite(_suite(tmp_path, "  - {name: setfit, peer: setfit}\n"
                                        "  - {name: setfit_mpnet, peer: setfit, backbone: mpnet}\n"
                                        "  - {name: distill, peer: setfit_distill, backbone: minilm, "
                                        "teacher_backbone: mpnet}\n"
                                        "  - {name: distill_t, peer: setfit_distill, "
                                        "teacher_backbone: ./my-teacher}\n"))
    plain, mpnet, distill, teacher = suite.methods
    assert mpnet.identity() == {"peer": "setfit", "backbone": "mpnet"}
    assert distill.identity() == {"peer": "setfit_distill", "backbone": "minilm", "teacher_backbone": "mpnet"}
    assert teacher.identity() == {"peer": "setfit_distill", "teacher_backbone": "./my-teacher"}
    specs = {s.method.name: s for s in suite.expand(tmp_path / "out") if s.seed == 1}
    assert len({run_key(s) for s in specs.values()}) == 4
    assert command(specs["setfit"])[3:] == ["peer", "setfit", "--data", str(tmp_path / "data" / "toy"),
                                            "--out", str(specs["setfit"].out_dir), "--seed", "1"]
    assert command(specs["setfit_mpnet"])[-1:] == ["--backbone=mpnet"]
    assert command(specs["distill"])[-2:] == ["--backbone=minilm", "--teacher-backbone=mpnet"]
    assert command(specs["distill_t"])[-1:] == ["--teacher-backbone=./my-teacher"]


def test_the_peer_command_accepts_what_the_bench_passes(tmp_path):
    from plmtune.cli import build_parser

    args = build_parser().parse_args(["peer", "setfit_distill", "--data", "d", "--out", "o", "--seed", "3",
                                      "--backbone=mpnet", "--teacher-backbone=minilm"])
    assert (args.backbone, args.teacher_backbone, args.seed) == ("mpnet", "minilm", 3)


@pytest.mark.parametrize(("method", "message"), [
    ("{name: m, recipe: baseline, backbone: mpnet}",
     r"suite.yaml: methods\[0\]\.backbone is for peer methods only .*set: \[\"model.backbone=mpnet\"\]"),
    ("{name: m, recipe: baseline, teacher_backbone: mpnet}",
     r"methods\[0\]\.teacher_backbone is for peer methods only"),
    ("{name: m, peer: setfit, backbone: ''}", r"methods\[0\]\.backbone must be a non-empty string.*got ''"),
    ("{name: m, peer: setfit, backbone: '  '}", r"methods\[0\]\.backbone must be a non-empty string"),
    ("{name: m, peer: setfit, backbone: 5}", r"methods\[0\]\.backbone must be a non-empty string.*got 5"),
    ("{name: m, peer: setfit_distill, teacher_backbone: [mpnet]}",
     r"methods\[0\]\.teacher_backbone must be a non-empty"),
    ("{name: m, peer: setfit, teacher_backbone: mpnet}", r"methods\[0\]\.teacher_backbone: only peer 'setfit_distill'"),
    ("{name: m, peer: majority, backbone: mpnet}", r"methods\[0\]\.backbone: peer 'majority' has no backbone"),
    ("{name: m, peer: setfit, backbone_: mpnet}", r"methods\[0\] has unknown key.*Did you mean 'backbone'"),
])
def test_bad_backbones_are_refused_with_the_file_and_the_field(tmp_path, method, message):
    _task(tmp_path / "data")
    with pytest.raises(RecipeError, match=message):
        load_suite(_suite(tmp_path, f"  - {method}\n"))


# ------------------------------------------------------------------ k: full


def test_k_full_runs_on_the_task_folder_itself(tmp_path):
    task = _task(tmp_path / "data")
    suite = load_suite(_suite(tmp_path, "  - {name: m, peer: majority}\n  - {name: v, recipe: baseline}\n",
                              k="[4, full]"))
    assert suite.k == (4, FULL)
    out = tmp_path / "out"
    full = [s for s in suite.expand(out) if s.k == FULL]
    assert [s.label for s in full] == ["toy K=full m seed 1", "toy K=full m seed 2",
                                       "toy K=full v seed 1", "toy K=full v seed 2"]
    assert {s.data_dir for s in full} == {task}
    assert full[0].out_dir == out / "runs" / "toy" / "kfull" / "m" / "seed-1"
    cmd = command(full[2])
    assert cmd[:4] == [sys.executable, "-m", "plmtune", "run"]
    assert cmd[cmd.index("--data") + 1] == str(task) and cmd[cmd.index("--seed") + 1] == "1"
    # The int K is as before: its own few-shot folder below the bench folder.
    four = [s for s in suite.expand(out) if s.k == 4]
    assert four[0].data_dir == out / "data" / "toy" / "4-1" and four[0].out_dir.parent.parent.name == "k4"


def test_k_full_makes_and_copies_no_data(tmp_path):
    _task(tmp_path / "data")
    suite = load_suite(_suite(tmp_path))
    prepare_data(suite, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()


def test_k_full_run_key_hashes_the_task_files_and_the_seed(tmp_path):
    task = _task(tmp_path / "data")
    suite = load_suite(_suite(tmp_path))
    one, two = suite.expand(tmp_path / "out")
    before = run_key(one)
    assert before == run_key(one) and before != run_key(two)  # stable; the seed is in it
    (task / "test.jsonl").write_text(ROWS + json.dumps({"text": "new", "label": 0}) + "\n")
    assert run_key(one) != before
    after = run_key(one)
    (task / "unlabeled.jsonl").write_text('{"text": "more"}\n')  # read by distillation and self-training
    assert run_key(one) != after


def test_k_full_without_dev_is_accepted(tmp_path):
    # Nothing is selected on dev then (the recipe's train.epochs, its last epoch); see the suite docstring.
    _task(tmp_path / "data", splits=("train", "test"))
    assert load_suite(_suite(tmp_path)).k == (FULL,)


@pytest.mark.parametrize(("splits", "message"), [
    (("train", "dev"), r"tasks\[0\] \(k: full\): task folder .*toy has no test file .*Its labelled evaluation set "
                       r"is dev.jsonl.*as test.jsonl"),
    (("dev", "test"), r"tasks\[0\] \(k: full\): task folder .*toy has no train file"),
    (("all",), r"no train file .*single-file dataset: use an integer K"),
])
def test_k_full_needs_a_train_and_a_test_file(tmp_path, splits, message):
    _task(tmp_path / "data", splits=splits)
    with pytest.raises(RecipeError, match=message):
        load_suite(_suite(tmp_path))
    load_suite(_suite(tmp_path, k="[2]"))  # an integer K makes its own splits: no such need


@pytest.mark.parametrize(("k", "message"), [
    ("[fool]", r"suite.yaml: k\[0\] must be a positive integer, got 'fool' \(or full: .*\). Did you mean 'full'\?"),
    ("[Full]", r"k\[0\] must be a positive integer, got 'Full'.*Did you mean 'full'\?"),
    ("[0]", r"k\[0\] must be a positive integer, got 0 \(or full"),
    ("[8, -1]", r"k\[1\] must be a positive integer, got -1"),
    ("[true]", r"k\[0\] must be a positive integer, got True"),
    ("[full, full]", r"k lists full more than once"),
    ("full", r"'k' must be a non-empty list, got 'full'"),
])
def test_bad_k_values_are_refused(tmp_path, k, message):
    _task(tmp_path / "data")
    with pytest.raises(RecipeError, match=message):
        load_suite(_suite(tmp_path, k=k))


def test_k_order_sorts_integers_then_full():
    assert sorted([FULL, 16, 8, "other"], key=k_order) == [8, 16, FULL, "other"]


def test_report_groups_k_full_after_the_integers(tmp_path):
    from bench_folder import write_bench
    from plmtune.bench.report import collect, summarise, write_report

    out = write_bench(tmp_path / "b")
    for bench_json in sorted((out / "runs").glob("toy/k8/*/seed-*/bench.json")):
        target = out / "runs" / "toy" / "kfull" / bench_json.parent.parent.name / bench_json.parent.name
        target.mkdir(parents=True)
        record = json.loads(bench_json.read_text())
        (target / "bench.json").write_text(json.dumps({**record, "k": FULL}))
        (target / "result.json").write_text((bench_json.parent / "result.json").read_text())
    results, failures, suite = collect(out)
    assert sorted(results, key=lambda key: k_order(key[1])) == [("toy", 8), ("toy", FULL)] and not failures
    rows = summarise(results, suite["baseline"], suite["methods"])
    assert [r["k"] for r in rows] == [8] * 3 + [FULL] * 3
    md = write_report(out)[0].read_text()
    assert md.index("## toy, K=8") < md.index("## toy, K=full")
    assert (out / "figures" / "toy-Kfull-interval.png").is_file()


def test_a_k_full_bench_runs_reads_the_task_folder_and_reports(tmp_path):
    # End to end with the cheapest peer: the task folder lies outside the bench folder and is only read.
    from plmtune.bench.report import collect
    from plmtune.bench.runner import run_suite

    task = _task(tmp_path / "data")
    before = sorted(p.name for p in task.iterdir())
    path = tmp_path / "suite.yaml"
    path.write_text("data_root: data\ntasks: [toy]\nk: [full]\nseeds: [1]\nmethods: [{name: m, peer: majority}]\n")
    out = tmp_path / "out"
    counts = run_suite(load_suite(path), out, progress=False)
    assert counts == {"total": 1, "skipped": 0, "ran": 1, "failed": 0}, \
        json.loads((out / "runs/toy/kfull/m/seed-1/bench.json").read_text()).get("error")
    assert sorted(p.name for p in task.iterdir()) == before and not (out / "data").exists()
    record = json.loads((out / "runs/toy/kfull/m/seed-1/bench.json").read_text())
    result = json.loads((out / "runs/toy/kfull/m/seed-1/result.json").read_text())
    assert record["k"] == FULL and result["task_dir"] == str(task.resolve()) and result["test"]["accuracy"] == 0.5
    assert json.loads((out / "suite.json").read_text())["k"] == [FULL]
    results, failures, _ = collect(out)
    assert list(results) == [("toy", FULL)] and not failures
    assert run_suite(load_suite(path), out, progress=False)["skipped"] == 1  # done: its key still matches
