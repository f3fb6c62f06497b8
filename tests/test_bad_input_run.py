"""Run folders under hostile use: finished runs, foreign folders, failing re-runs, two runs at once.

Each case names the review case it covers (docs/design/reviews/hostile-input-cases.md: O1, O2, C1,
I4). A run never deletes what it did not write and replaces old results only after it succeeded.
"""

from __future__ import annotations

import json

import pytest

from plmtune.cli import main
from test_bad_input import GOOD


def _train(tmp_path, tiny_backbone, toy_task, out, *extra):
    tiny_backbone()
    return main(["run", "baseline", "--data", str(toy_task), "--out", str(out), "--set", "train.epochs=1",
                 "--set", "train.batch_size=16", *extra])


def _one_paragraph(capsys, pattern):
    import re

    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err


def _outputs(out):
    # not the lock file: it records the pid of its last holder
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".plmtune.lock"}


def _broken_task(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n')
    return folder


@pytest.fixture
def finished(tmp_path, tiny_backbone, toy_task, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, tiny_backbone, toy_task, out) == 0
    capsys.readouterr()
    return out, _outputs(out)


def test_re_run_into_a_finished_run_is_refused_without_overwrite(finished, tmp_path, tiny_backbone, toy_task, capsys):
    out, before = finished  # O1
    assert _train(tmp_path, tiny_backbone, toy_task, out) == 2
    _one_paragraph(capsys, r"already holds a finished run \(result.json\)\. Pass --overwrite")
    assert _outputs(out) == before


def test_a_failing_overwrite_leaves_the_old_run_intact(finished, tmp_path, capsys):
    out, before = finished  # O1: the new run fails after the folder was prepared
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "keep.bin").write_text("w")
    code = main(["run", "baseline", "--data", str(_broken_task(tmp_path)), "--out", str(out), "--overwrite",
                 "--set", "train.lr=3e-5"])
    assert code == 2
    _one_paragraph(capsys, r"malformed JSON")
    after = _outputs(out)
    assert after == before and (out / "checkpoint" / "keep.bin").read_text() == "w"
    assert not (out / ".previous").exists()


def test_a_successful_overwrite_replaces_the_old_outputs(finished, tmp_path, tiny_backbone, toy_task, capsys):
    out, before = finished
    (out / "model").mkdir()  # an old --save-model output must not survive next to the new result
    assert _train(tmp_path, tiny_backbone, toy_task, out, "--overwrite", "--set", "train.lr=3e-5") == 0
    assert json.loads((out / "result.json").read_text())["recipe"]["train"]["lr"] == 3e-5
    assert not (out / "model").exists() and not (out / ".previous").exists()


def test_forgetting_resume_keeps_the_checkpoint_until_the_run_succeeds(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "checkpoint.safetensors").write_text("w")
    (out / "recipe.yaml").write_text("name: baseline\n")
    code = main(["run", "baseline", "--data", str(_broken_task(tmp_path)), "--out", str(out)])
    assert code == 2
    assert (out / "checkpoint" / "checkpoint.safetensors").read_text() == "w"
    assert (out / "recipe.yaml").read_text() == "name: baseline\n"


@pytest.mark.parametrize("where", ["data folder", "empty --out (the cwd)"])
def test_a_folder_plmtune_did_not_write_is_refused_and_untouched(where, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "data"  # O2
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "model.bin").write_text("w")
    (folder / "result.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("{}\n")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    out = str(folder)
    if where.startswith("empty"):
        monkeypatch.chdir(folder)
        out = ""
    code = main(["run", "baseline", "--data", str(folder), "--out", out, "--overwrite"])
    assert code == 2
    _one_paragraph(capsys, r"--out is empty" if out == "" else r"files plmtune did not write.*not a plmtune run folder")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_a_second_run_on_one_folder_is_refused_naming_the_holder(tmp_path, toy_task, capsys):
    from plmtune.locking import FolderLock

    out = tmp_path / "run"  # C1: flock conflicts between two open files, even in one process
    with FolderLock(out, "run"):
        code = main(["run", "baseline", "--data", str(toy_task), "--out", str(out)])
    assert code == 2
    _one_paragraph(capsys, r"in use by another run process \(pid \d+ on host")
    assert not (out / "recipe.yaml").exists()


def test_a_refused_resume_leaves_recipe_yaml_as_it_was(tmp_path, tiny_backbone, toy_task, capsys, monkeypatch):
    from plmtune.stages.finetune import FineTune

    out = tmp_path / "run"  # I4: keep the checkpoint of a finished run, drop its result: an interrupted run
    monkeypatch.setattr(FineTune, "cleanup", lambda self, spec: None)
    assert _train(tmp_path, tiny_backbone, toy_task, out, "--set", "train.checkpoint_every=1") == 0
    (out / "result.json").unlink()
    recipe = (out / "recipe.yaml").read_text()
    capsys.readouterr()
    code = _train(tmp_path, tiny_backbone, toy_task, out, "--set", "train.checkpoint_every=1", "--set",
                  "train.lr=3e-5", "--resume")
    assert code == 2
    _one_paragraph(capsys, r"written by a run with another configuration")
    assert (out / "recipe.yaml").read_text() == recipe


def test_checkpoint_files_get_the_mode_an_ordinary_write_would(tmp_path):
    import os

    import torch

    from plmtune.engine.checkpoint import save_tree

    old = os.umask(0o022)  # O8: mkstemp alone gives 0600, unreadable to the group on a shared machine
    try:
        save_tree(tmp_path / "state.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "state.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_failing_tune_trial_prints_one_paragraph_not_optunas_traceback(tmp_path, toy_task, capfd, monkeypatch):
    from plmtune import tune
    from plmtune.errors import PlmtuneError

    def fail(*args, **kwargs):  # T4: e.g. a backbone that cannot be loaded
        raise PlmtuneError("Could not load backbone 'nobody/none'.")

    monkeypatch.setattr(tune, "run_recipe", fail)
    code = main(["tune", "baseline", "--data", str(toy_task), "--out", str(tmp_path / "t"), "--budget", "1"])
    err = capfd.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and "Trial 0 failed" not in err and err.count("\n") == 0, err


def test_a_non_utf8_pretraining_corpus_is_one_paragraph_naming_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "latin.txt"  # PT2
    corpus.write_bytes(b"fine line\nanother\n\xff\xfe bad\n")
    code = main(["pretrain", "tapt", "--data", str(corpus), "--out", str(tmp_path / "o")])
    assert code == 2
    _one_paragraph(capsys, r"latin.txt, line 3: the file is not valid UTF-8")


def test_a_nan_pretraining_loss_stops_with_a_training_error_and_writes_no_json(tmp_path, tokenizer, monkeypatch,
                                                                             capsys):
    from plmtune.models import tiny_bert
    from plmtune.stages import pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "load_backbone", lambda name: (tokenizer, tiny_bert(vocab_size=30522, seed=0)))
    real = pretrain_module.MaskedLM.forward
    monkeypatch.setattr(pretrain_module.MaskedLM, "forward", lambda self, **kw: real(self, **kw) * float("nan"))
    corpus = tmp_path / "corpus.txt"  # PT3: e.g. texts too short to mask any token
    corpus.write_text("".join(f"text number {i} is here\n" for i in range(8)))
    code = main(["pretrain", "tapt", "--data", str(corpus), "--out", str(tmp_path / "o"),
                 "--set", "pretrain.max_steps=2"])
    assert code == 2
    _one_paragraph(capsys, r"pre-training \(MLM\) loss became nan at step 1")
    assert not (tmp_path / "o" / "pretrain.json").exists()


def test_the_atomic_json_writer_refuses_nan_rather_than_writing_invalid_json(tmp_path):
    from plmtune.rundir import write_json_atomic

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []
