"""Bad input to `bench` (its suite files and folder) and to the command-line arguments, table-driven.

Each case gives exit code 2 and one line on stderr that names the file and the field (or the
argument), and writes nothing: neither the bench folder nor anything outside it. The suite cases
are Q1-Q4 of the hostile-input review, the argument cases Q2, DM1, T2, T3 and T5.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shared_data import shared_dataset
from plmtune.cli import main
from test_bad_input import GOOD, _task


def _suite(root, body: str | bytes, data_root=None) -> str:
    """A suite file in `root`; `body` follows a valid data_root line unless it brings its own."""
    path = root / "suite.yaml"
    if isinstance(body, bytes):
        path.write_bytes(body)
        return str(path)
    if "data_root" not in body:
        body = f"data_root: {data_root or shared_dataset('sst2').parent}\n{body}"
    path.write_text(body)
    return str(path)


OK_TAIL = "k: [2]\nseeds: [1]\nmethods: [{name: m, peer: majority}]\n"
OK = "tasks: [sst2]\n" + OK_TAIL


def _bench(body, *extra, data_root=None):
    return lambda t: ["bench", _suite(t, body, data_root), "--out", t / "b", *extra]


CASES = {
    # Q4: names that become folder names must not leave the bench folder.
    "method name climbing out of the bench folder": (
        _bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: ../../../../escaped, peer: majority}]\n"),
        r"suite.yaml: methods\[0\]\.name '\.\./.*must not contain '/'"),
    "method name '..'": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: '..', peer: majority}]\n"),
                         r"suite.yaml: methods\[0\]\.name '\.\.' must not start with '\.'"),
    "method name with a backslash": (
        _bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: 'a\\b', peer: majority}]\n"),
        r"methods\[0\]\.name .*must not contain '/' or '\\'"),
    "method name with NUL": (_bench('tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: "a\\0b", peer: majority}]\n'),
                             r"methods\[0\]\.name .*control characters or NUL"),
    "empty method name": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: '', peer: majority}]\n"),
                          r"methods\[0\]\.name must not be empty"),
    "absurdly long method name": (
        _bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: " + "a" * 300 + ", peer: majority}]\n"),
        r"methods\[0\]\.name is 300 characters long"),
    "task name climbing out of data_root and the bench folder": (
        lambda t: ["bench", _suite(t, "tasks: ['../sst2']\n" + OK_TAIL, shared_dataset("sst2")), "--out", t / "b"],
        r"suite.yaml: tasks\[0\] '\.\./sst2' must not contain '/'"),
    "baseline that is not a string": (_bench(OK + "baseline: 5\n"), r"suite.yaml: baseline must be a string"),
    # Q1: malformed suites.
    "k not an integer": (_bench("tasks: [sst2]\nk: [eight]\nseeds: [1]\nmethods: [{name: m, peer: majority}]\n"),
                         r"suite.yaml: k\[0\] must be a positive integer, got 'eight'"),
    "k a float": (_bench("tasks: [sst2]\nk: [2.5]\nseeds: [1]\nmethods: [{name: m, peer: majority}]\n"),
                  r"suite.yaml: k\[0\] must be a positive integer, got 2.5"),
    "k zero": (_bench("tasks: [sst2]\nk: [0]\nseeds: [1]\nmethods: [{name: m, peer: majority}]\n"),
               r"suite.yaml: k\[0\] must be a positive integer, got 0"),
    "seed a boolean": (_bench("tasks: [sst2]\nk: [2]\nseeds: [true]\nmethods: [{name: m, peer: majority}]\n"),
                       r"suite.yaml: seeds\[0\] must be a non-negative integer, got True"),
    "task not a string": (_bench("tasks: [5]\n" + OK_TAIL), r"suite.yaml: tasks\[0\] must be a string, got 5"),
    "YAML syntax error": (_bench("tasks: [sst2\n" + OK_TAIL), r"suite.yaml is not valid YAML: .* at line \d+, column"),
    "non-UTF-8 suite": (lambda t: ["bench", _suite(t, b"tasks: [sst\xe92]\n"), "--out", t / "b"],
                        r"suite.yaml is not UTF-8 text \(byte 0xe9 at offset 11\)"),
    "top level not a mapping": (_bench(b"- tasks\n- k\n"), r"suite.yaml must be a YAML mapping"),
    "missing methods": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\n"), r"suite.yaml: 'methods' must be a non-empty list"),
    "suite name not a string": (_bench("name: [a]\n" + OK), r"suite.yaml: name must be a string, got \['a'\]"),
    "data_root not a string": (_bench("data_root: 5\n" + OK), r"suite.yaml: data_root must be a string"),
    "method not a mapping": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [majority]\n"),
                             r"methods\[0\] must be a mapping"),
    "recipe not a string": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: m, recipe: 5}]\n"),
                            r"methods\[0\]\.recipe must be a string, got 5"),
    "peer not a string": (_bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: m, peer: [majority]}]\n"),
                          r"methods\[0\]\.peer must be a string"),
    # Q3: `set` as a string, or holding a non-string.
    "set written as a string": (
        _bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: m, recipe: baseline, set: 'train.epochs=1'}]\n"),
        r"suite.yaml: methods\[0\]\.set must be a list of overrides"),
    "set holding a number": (
        _bench("tasks: [sst2]\nk: [2]\nseeds: [1]\nmethods: [{name: m, recipe: baseline, set: [5]}]\n"),
        r"methods\[0\]\.set\[0\] must be an override string"),
    # Q2: -j checked while parsing, before data/ or suite.json are written.
    "bench -j 0": (_bench(OK, "-j", "0"), r"plmtune bench: error: -j/--jobs must be a positive integer, got '0'"),
    "bench -j -1": (_bench(OK, "-j", "-1"), r"-j/--jobs must be a positive integer, got '-1'"),
    # X1-X5: the executors' options, checked before the suite is read or anything is written.
    "bench --cpus-per-run without ray": (
        _bench(OK, "--cpus-per-run", "2"),
        r"plmtune: error: --ray-address, --cpus-per-run and --gpus-per-run are for --executor ray\."),
    "bench --ray-address without ray": (
        _bench(OK, "--ray-address", "auto"),
        r"--ray-address, --cpus-per-run and --gpus-per-run are for --executor ray\."),
    "bench --executor threads": (_bench(OK, "--executor", "threads"),
                                 r"plmtune bench: error: argument --executor: invalid choice: 'threads' "
                                 r"\(choose from 'local', 'warm', 'ray'\)"),
    "bench --timeout 0": (_bench(OK, "--timeout", "0"), r"--timeout must be a positive, finite number, got '0'"),
    "bench --timeout nan": (_bench(OK, "--timeout", "nan"), r"--timeout must be a positive, finite number, got 'nan'"),
    "bench --gpus-per-run -1": (_bench(OK, "--executor", "ray", "--gpus-per-run", "-1"),
                                r"--gpus-per-run must be a non-negative, finite number, got '-1'"),
    # DM1: demo shares the seed-list check with `data fewshot`.
    "demo --seeds a,b": (lambda t: ["demo", "--out", t / "b", "--seeds", "a,b"],
                         r"plmtune demo: error: --seeds must be comma-separated integers, got 'a,b'"),
    "demo --seeds ''": (lambda t: ["demo", "--out", t / "b", "--seeds", ""], r"--seeds must list at least one seed"),
    "fewshot --seeds ','": (lambda t: ["data", "fewshot", _task(t), t / "b", "--seeds", ","],
                            r"--seeds must list at least one seed"),
    # T2, T3, T5: tune's budget, trials and data folder.
    "tune --trials -1": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b", "--budget",
                                    "1", "--trials", "-1"], r"--trials must be a positive integer, got '-1'"),
    "tune --trials 0": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b", "--budget",
                                   "1", "--trials", "0"], r"--trials must be a positive integer, got '0'"),
    "tune --budget nan": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b",
                                     "--budget", "nan"], r"--budget must be a positive, finite number of minutes, got 'nan'"),
    "tune --budget inf": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b",
                                     "--budget", "inf"], r"--budget must be a positive, finite number"),
    "tune --budget -1": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b",
                                    "--budget", "-1"], r"--budget must be a positive, finite number"),
    "tune --budget 0": (lambda t: ["tune", "baseline", "--data", _task(t, GOOD, GOOD), "--out", t / "b",
                                   "--budget", "0"], r"--budget must be a positive, finite number"),
    "tune on a missing data folder": (lambda t: ["tune", "baseline", "--data", t / "nope", "--out", t / "b",
                                                 "--budget", "1"], r"--data: .*nope is not a directory"),
}


def _snapshot(root):
    return {p.relative_to(root) for p in root.rglob("*")}


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's exit, should main() let it through
        return exit_.code


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_bench_input_gives_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    make_args, pattern = CASES[case]
    work = tmp_path / "work"  # the suite and the bench folder live here; tmp_path around it must stay as it was
    work.mkdir()
    args = [str(a) for a in make_args(work)]
    before = _snapshot(tmp_path)
    code = _exit_code(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert not (work / "b").exists()  # the bench / output folder was never created
    assert _snapshot(tmp_path) == before  # and nothing was written anywhere else


def _hold_lock(folder):
    """A second process that takes the folder's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from plmtune.locking import FolderLock; "
                             "FolderLock(sys.argv[1], 'bench').acquire(); print('locked', flush=True); time.sleep(600)",
                             str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_bench_on_one_folder_is_refused_before_writing(tmp_path, capsys):
    # C2: two benches on one folder ran every job twice and interleaved their logs.
    suite = _suite(tmp_path, OK)
    out = tmp_path / "b"
    holder = _hold_lock(out)
    try:
        code = _exit_code(["bench", suite, "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert re.search(rf"{re.escape(str(out))} is in use by another bench process \(pid {holder.pid} on host ", err), err
    assert sorted(p.name for p in out.iterdir()) == [".plmtune.lock"]  # no data/, no suite.json, no runs/


def test_a_killed_bench_leaves_no_lock_behind(tmp_path, monkeypatch):
    from plmtune.bench import runner
    from plmtune.bench.suite import load_suite

    out = tmp_path / "b"
    holder = _hold_lock(out)
    holder.kill()  # SIGKILL: no cleanup code runs in the holder
    holder.wait()
    ran = []
    monkeypatch.setattr(runner, "run_local", lambda argv, threads, timeout, on_start: ran.append(argv) or
                        runner.Outcome(0, 0.1))
    counts = runner.run_suite(load_suite(_suite(tmp_path, OK)), out, progress=False)
    assert counts["ran"] == 1 and len(ran) == 1


def test_bench_cli_takes_a_data_root(tmp_path, capsys):
    # Shipped suites cannot know where the data is once installed; --data-root says so.
    suite = _suite(tmp_path, "data_root: /nowhere\n" + OK)
    code = _exit_code(["bench", suite, "--out", str(tmp_path / "b"), "--data-root", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.search(r"--data-root: .*nope is not a directory", err), err



def test_an_os_error_names_the_file_and_promises_nothing_partial(tmp_path, capsys, monkeypatch):
    # O7: the generic message claimed "Nothing partial was left behind" for every command.
    import errno

    from plmtune.bench import report

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b" / "some.file"))

    monkeypatch.setattr(report, "write_report", full)
    code = _exit_code(["report", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"could not read or write {tmp_path / 'b' / 'some.file'}: No space left on device" in err
    assert "Nothing partial" not in err
