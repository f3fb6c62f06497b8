"""Bad input, table-driven: each case gives one clear paragraph, exit code 2 and nothing half-written."""

from __future__ import annotations

import errno
import json

import pytest

from shared_data import shared_dataset
from plmtune.cli import main

GOOD = [{"text": "fine", "label": 0}, {"text": "great", "label": 1}]


def _task(root, train=GOOD, dev=None, raw_train=None):
    folder = root / "task"
    folder.mkdir(exist_ok=True)
    if raw_train is not None:
        (folder / "train.jsonl").write_bytes(raw_train)
    else:
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    if dev is not None:
        (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    return folder


def _with_unlabelled(root, text):
    folder = _task(root, GOOD, GOOD)
    if text is not None:
        (folder / "unlabeled.jsonl").write_text(text)
    return folder


def _corpus(root, text):
    path = root / "corpus.txt"
    path.write_text(text)
    return path


def _recipe(root, text):
    path = root / "r.yaml"
    path.write_text(text)
    return str(path)


CASES = {
    "malformed JSON": (lambda t: ["run", "baseline", "--data", _task(t, raw_train=b'{"text": "a", "label": 0}\n{oops\n')],
                       r"train.jsonl, line 2: malformed JSON"),
    "missing field": (lambda t: ["run", "baseline", "--data", _task(t, train=[GOOD[0], {"label": 1}])],
                      r"line 2, field 'text': missing field"),
    "unknown label name": (lambda t: ["run", "baseline", "--data", _task(
        t, [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}], [{"text": "c", "label": "meh"}])],
                           r"dev.jsonl, line 1, field 'label': unknown label name 'meh'"),
    "empty split": (lambda t: ["run", "baseline", "--data", _task(t, raw_train=b"\n")], r"train.jsonl: the split is empty"),
    "non-UTF-8 bytes": (lambda t: ["run", "baseline", "--data", _task(t, raw_train=b'{"text": "\xff", "label": 0}\n')],
                        r"line 1: the file is not valid UTF-8"),
    "pair task without text_pair": (lambda t: ["run", "baseline", "--data", _task(
        t, [{"text": "a", "text_pair": "b", "label": 0}, {"text": "c", "label": 1}])], r"field 'text_pair': missing"),
    "class absent from train": (lambda t: ["run", "baseline", "--data", _task(t, GOOD, [{"text": "x", "label": 2}])],
                                r"dev.jsonl, line 1, field 'label': label id 2 is outside 0..1"),
    "label ids with a gap": (lambda t: ["run", "baseline", "--data", _task(t, [GOOD[0], {"text": "z", "label": 2}])],
                             r"class\(es\) 1 never occur in train"),
    "not a task folder": (lambda t: ["run", "baseline", "--data", t / "nope"], r"not a directory"),
    "single-file dataset": (lambda t: ["run", "baseline", "--data", shared_dataset("subj")], r"plmtune data fewshot"),
    "unknown recipe key": (lambda t: ["validate", _recipe(t, "trian: {lr: 1e-5}\n")], r"Did you mean 'train'"),
    "unknown technique": (lambda t: ["validate", _recipe(t, "techniques: [{name: noisytun}]\n")],
                          r"Did you mean 'noisytune'"),
    "out-of-range value": (lambda t: ["run", "baseline", "--data", _task(t), "--set", "train.lr=5"],
                           r"train.lr = 5.0 is out of range; allowed: \(0, 1\]"),
    "out-of-range technique value": (lambda t: ["validate", "noisytune", "--set", "techniques.0.lam=-1"],
                                     r"noisytune.lam = -1.0 is out of range"),
    "incompatible techniques": (lambda t: ["validate", "lora", "--set", "techniques=[{name: lora}, {name: mixout}]"],
                                r"cannot be combined with 'lora'"),
    "override without =": (lambda t: ["show", "baseline", "--set", "train.lr"], r"must look like key.sub=value"),
    "override of a missing index": (lambda t: ["show", "llrd", "--set", "techniques.3.decay=0.5"],
                                    r"'3' is not an index of a list of 1"),
    "unknown recipe name": (lambda t: ["run", "baseline2", "--data", _task(t)], r"Did you mean 'baseline'"),
    "YAML syntax error": (lambda t: ["validate", _recipe(t, "train: {lr: [\n")], r"is not valid YAML"),
    "backbone folder without config": (lambda t: ["run", "baseline", "--data", _task(t), "--set",
                                                  f"model.backbone={t}"], r"has no config.json"),
    "backbone offline hub name": (lambda t: ["run", "baseline", "--data", _task(t), "--set",
                                             "model.backbone=nobody/no-such-model"], r"Could not load backbone"),
    "output path that cannot be created": (lambda t: ["run", "baseline", "--data", _task(t), "--out",
                                                      (t / "r.yaml" if (t / "r.yaml").write_text("x") else t) / "o"],
                                           r"Cannot write to the output folder"),
    "few-shot K too large": (lambda t: ["data", "fewshot", _task(t, GOOD, GOOD), t / "few", "--k", "4"],
                             r"K=4 needs 8 train examples per class"),
    "few-shot bad seeds": (lambda t: ["data", "fewshot", _task(t), t / "few", "--seeds", "1,a"],
                           r"--seeds must be comma-separated integers"),
    "knowledge injection without vectors": (lambda t: ["run", "inject", "--data", _task(t)],
                                            r"line 1, field 'features': missing field"),
    "bench suite with an unknown peer": (lambda t: ["bench", _recipe(t, f"tasks: [sst2]\ndata_root: "
                                                    f"{shared_dataset('sst2').parent}\nk: [2]\nseeds: [1]\n"
                                                    "methods: [{name: x, peer: setfitt}]\n"), "--out", t / "b"],
                                         r"Did you mean 'setfit'"),
    "empty unlabelled pool for self-training": (lambda t: ["run", "list_cpu", "--data", _with_unlabelled(t, "\n")],
                                                r"unlabeled.jsonl: the unlabelled pool is empty"),
    "self-training without an unlabelled file": (lambda t: ["run", "list_cpu", "--data", _with_unlabelled(t, None)],
                                                 r"no unlabeled.jsonl: self-training needs a pool"),
    "prompt for a task without a built-in template": (lambda t: ["run", "prompt", "--data", _task(t, GOOD, GOOD)],
                                                      r"no built-in prompt for task 'task'.*prompt.template"),
    "two stages in one recipe": (lambda t: ["validate", "self_distill", "--set", "self_training={}"],
                                 r"at most one stage"),
    "pre-training on a path that does not exist": (lambda t: ["pretrain", "tapt", "--data", t / "corpus.txt",
                                                              "--out", t / "out"],
                                                   r"corpus.txt: TAPT needs a task folder"),
    "pre-training with a recipe that has no pretrain section": (lambda t: ["pretrain", "baseline", "--data",
                                                                           _task(t), "--out", t / "out"],
                                                                r"has no pretrain section"),
    "pre-training corpus of one line": (lambda t: ["pretrain", "tapt", "--data", _corpus(t, "just one\n"),
                                                   "--out", t / "out"], r"corpus.txt: the pre-training corpus has 1"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gives_one_paragraph_exit_2_and_writes_nothing(case, tmp_path, capsys):
    make_args, pattern = CASES[case]
    args = [str(a) for a in make_args(tmp_path)]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 0, err
    import re

    assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "result.json").exists()
    assert not (tmp_path / "few").exists() or not any((tmp_path / "few").iterdir())


def test_full_disk_during_few_shot_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    from plmtune import fewshot

    real = fewshot._write_jsonl
    calls = []

    def full_disk(path, rows):
        calls.append(path)
        if len(calls) == 3:  # the disk fills up while writing the third file
            real(path, rows[:1])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, rows)

    monkeypatch.setattr(fewshot, "_write_jsonl", full_disk)
    task = _task(tmp_path, [{"text": str(i), "label": i % 2} for i in range(8)], None)
    (task / "test.jsonl").write_text(json.dumps(GOOD[0]) + "\n")
    code = main(["data", "fewshot", str(task), str(tmp_path / "few"), "--k", "2", "--seeds", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "No space left on device" in err and err.count("\n") == 0
    assert list((tmp_path / "few").iterdir()) == []  # no seed folder, no temp folder


def test_full_disk_when_writing_a_result_leaves_no_partial_file(tmp_path, monkeypatch):
    from plmtune import rundir

    real_fdopen = rundir.os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])  # half of it reaches the temp file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError):
        rundir.write_json_atomic(tmp_path / "result.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_at_least_twenty_cases():
    assert len(CASES) + 2 >= 20


@pytest.fixture
def mounted(tmp_path):
    """Mount a small tmpfs (read-only or tiny) for real read-only and full-disk cases."""
    import subprocess

    mounts = []

    def mount(name: str, options: str):
        point = tmp_path / name
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root with CAP_SYS_ADMIN")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_read_only_output_folder(tmp_path, capsys, mounted):
    read_only = mounted("ro", "ro,size=1m")
    code = main(["run", "baseline", "--data", str(_task(tmp_path)), "--out", str(read_only / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Cannot write to the output folder" in err and "Read-only file system" in err
    assert err.count("\n") == 0 and list(read_only.iterdir()) == []


def test_disk_full_while_writing_few_shot_splits(tmp_path, capsys, mounted):
    tiny = mounted("tiny", "size=64k")
    code = main(["data", "fewshot", str(shared_dataset("sst2")), str(tiny / "few"), "--k", "8", "--seeds", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "No space left on device" in err and err.count("\n") == 0
    assert list((tiny / "few").iterdir()) == []  # neither the seed folder nor its temp folder remains
