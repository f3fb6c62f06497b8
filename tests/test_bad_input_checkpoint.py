"""Bad checkpoints on `plmtune run --resume`, table-driven like tests/test_bad_input.py: a corrupted,
foreign, pickled or old-format checkpoint, or one made with another recipe or seed, gives one clear
paragraph naming the file and exit 2; nothing is loaded, no payload runs, the file is left as it was.
A full disk while a checkpoint is written names the file and keeps the previous checkpoint."""

from __future__ import annotations

import errno
import random
import re

import pytest
import safetensors.torch
import torch

from plmtune import rundir
from plmtune.cli import main
from plmtune.engine import checkpoint
from test_bad_input import mounted  # noqa: F401 (the real tmpfs fixture)

RUN = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=2"]


class _Stop(Exception):
    """Stands for a kill right after a checkpoint was written."""


@pytest.fixture
def interrupted(toy_task, tmp_path, tiny_backbone, monkeypatch):
    """A call that leaves OUT/checkpoint as a run (seed 13, baseline) killed after its first checkpoint."""
    tiny_backbone()

    def make(out):
        real = checkpoint.save

        def save_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            raise _Stop

        monkeypatch.setattr(checkpoint, "save", save_then_stop)
        with pytest.raises(_Stop):
            main(["run", "baseline", "--data", str(toy_task), "--out", str(out), "--seed", "13", *RUN])
        monkeypatch.setattr(checkpoint, "save", real)
        assert (out / "checkpoint" / checkpoint.FILE).is_file()
        return out / "checkpoint" / checkpoint.FILE

    return make


def _file(out, name=checkpoint.FILE, data=b""):
    path = out / "checkpoint" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _foreign(out):
    path = _file(out)
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path))
    return path


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _pickled(out, name, marker):
    path = _file(out, name)
    torch.save({"model": _Payload(marker), "optimizer": {}, "loop": {"step": 2}}, path)
    return path


CORRUPT = (r"checkpoint\.safetensors is not a plmtune checkpoint, or it is corrupted or truncated \({}\).*"
           r"without --resume")
# name -> (make the checkpoint: (out, interrupted, marker) -> (path, extra argv), expected message)
CASES = {
    "empty checkpoint": (lambda o, i, m: (_file(o), []), CORRUPT.format("the file is empty")),
    "random bytes": (lambda o, i, m: (_file(o, data=random.Random(3).randbytes(70_000)), []), CORRUPT.format(".+")),
    "truncated checkpoint": (lambda o, i, m: (_cut(i(o)), []), CORRUPT.format(".+")),
    "someone else's safetensors": (lambda o, i, m: (_foreign(o), []), CORRUPT.format("no plmtune metadata")),
    "pickle payload at the checkpoint path": (lambda o, i, m: (_pickled(o, checkpoint.FILE, m), []),
                                              r"checkpoint\.safetensors is a pickled file.*no longer loads pickles.*"
                                              r"without --resume"),
    "old-format checkpoint.pt": (lambda o, i, m: (_pickled(o, checkpoint.LEGACY_FILE, m), []),
                                 r"checkpoint/checkpoint\.pt is a checkpoint in the format of an earlier plmtune "
                                 r"version.*not read.*run it again without --resume"),
    "resume with another seed": (lambda o, i, m: (i(o), ["--seed", "21"]),
                                 r"checkpoint\.safetensors was written by a run with another configuration.*"
                                 r"seed: 13 in the checkpoint, 21 now"),
    "resume with another recipe": (lambda o, i, m: (i(o), ["--set", "model.pooling=concat_cls"]),
                                   r"another configuration.*recipe\.model\.pooling: \"mean\" in the checkpoint, "
                                   r"\"concat_cls\" now.*original recipe, overrides and seed"),
    "resume with another learning rate": (lambda o, i, m: (i(o), ["--set", "train.lr=0.001"]),
                                          r"another configuration.*recipe\.train\.lr: 5e-05 in the checkpoint, "
                                          r"0\.001 now"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_bad_checkpoint_on_resume_gives_one_paragraph_and_exit_2(case, toy_task, tmp_path, tiny_backbone, capsys,
                                                                   interrupted):
    tiny_backbone()
    make, pattern = CASES[case]
    out, marker = tmp_path / "out", tmp_path / "ran"
    path, extra = make(out, interrupted, marker)
    (out / rundir.MARKER).write_text("")  # a run folder plmtune wrote, whose checkpoint is then damaged
    before = path.read_bytes()
    capsys.readouterr()
    code = main(["run", "baseline", "--data", str(toy_task), "--out", str(out), "--seed", "13", *RUN, *extra,
                 "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert str(path) in err  # the paragraph names the file
    assert not marker.exists()  # a payload never runs
    assert path.read_bytes() == before and not (out / "result.json").exists()


def test_resume_with_only_the_checkpoint_interval_changed_goes_on(toy_task, tmp_path, tiny_backbone, interrupted):
    tiny_backbone()
    out = tmp_path / "out"
    interrupted(out)
    code = main(["run", "baseline", "--data", str(toy_task), "--out", str(out), "--seed", "13", *RUN,
                 "--set", "train.checkpoint_every=3", "--set", "description=renamed", "--resume"])
    assert code == 0 and (out / "result.json").is_file()


def test_a_full_disk_while_a_checkpoint_is_written_names_it_and_keeps_the_previous_one(
        toy_task, tmp_path, tiny_backbone, monkeypatch, capsys):
    tiny_backbone()
    real, calls = safetensors.torch.save_file, []

    def fills_up(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:
            return real(tensors, filename, metadata=metadata)
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    out = tmp_path / "out"
    code = main(["run", "baseline", "--data", str(toy_task), "--out", str(out), "--seed", "13", *RUN])
    err = capsys.readouterr().err.strip()
    path = out / "checkpoint" / checkpoint.FILE
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert f"Could not write {path}: No space left on device" in err
    assert checkpoint.load_tree(path)["loop"]["step"] == 2  # the first checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == [checkpoint.FILE]  # no temp file left
    assert not (out / "result.json").exists()


def test_a_real_full_disk_while_a_checkpoint_is_written(toy_task, tiny_backbone, capsys, mounted):  # noqa: F811
    tiny_backbone()
    tiny = mounted("tiny", "size=2m")  # holds the logs, not a 12 MB checkpoint of the tiny model
    code = main(["run", "baseline", "--data", str(toy_task), "--out", str(tiny / "run"), "--seed", "13", *RUN])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert re.search(r"Could not write \S+/checkpoint\.safetensors: No space left on device", err), err
    # no torn temp file (a run folder that failed with nothing to resume from is removed whole)
    folder = tiny / "run" / "checkpoint"
    assert not folder.exists() or list(folder.iterdir()) == []

