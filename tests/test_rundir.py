"""The run folder's writers: atomic, with ordinary file modes, and only the main process writes."""

from __future__ import annotations

import json
import os
import stat

import pytest

from plmtune import rundir


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_json_gets_the_mode_an_ordinary_write_would(tmp_path, umask):
    previous = os.umask(umask)
    try:
        rundir.write_json_atomic(tmp_path / "result.json", {"a": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "result.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask
    assert json.loads((tmp_path / "result.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.json", "result.json"]  # no temp file left


def test_run_folder_sets_only_what_a_run_writes_aside_and_drops_it_on_success(tmp_path):
    out = tmp_path / "run"
    (out / "self_training").mkdir(parents=True)
    (out / rundir.MARKER).write_text("")
    for name in ("metrics.jsonl", "notes.txt", "self_training/state.safetensors"):
        (out / name).write_text("x")
    with rundir.run_folder(out, resume=True, stage_dirs=("self_training",)):  # resume: continued in place
        assert (out / "metrics.jsonl").exists() and (out / "self_training" / "state.safetensors").exists()
    with rundir.run_folder(out, stage_dirs=("self_training",)):
        assert sorted(p.name for p in (out / rundir.ASIDE).iterdir()) == ["metrics.jsonl", "self_training"]
        (out / "result.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "notes.txt", "result.json", "self_training"]
    assert list((out / "self_training").iterdir()) == []


def test_only_rank_zero_is_the_main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert rundir.is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not rundir.is_main_process()
