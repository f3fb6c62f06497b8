"""Checkpoint and state files are data, never code: the tree format round-trips exactly, refuses
whatever it did not write (pickles above all, whose payload must not run) and never leaves a torn
file behind, even when the disk fills up while writing."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from plmtune.engine import checkpoint
from plmtune.engine.checkpoint import CheckpointError, load_tree, save_tree
from plmtune.errors import PlmtuneError
from test_bad_input import mounted  # noqa: F401 (the real tmpfs fixture of the main bad-input table)


def same(a, b) -> bool:
    """Exact equality: same Python types (tuple is not list), tensors bitwise with dtype and shape.

    The one normalisation: a dict subclass (a state_dict's OrderedDict) comes back as a dict, in order."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def first_difference(a, b, where="tree") -> str:
    """Where `same` fails first (for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)[:8]} vs {list(b)[:8]}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{where}[{k!r}]"))), "")
    if isinstance(a, (list, tuple)) and type(a) is type(b) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{where}[{i}]"))), "")
    if same(a, b):
        return ""
    show = (lambda v: (type(v).__name__, v.dtype, tuple(v.shape), str(v.device)) if isinstance(v, torch.Tensor)
            else (type(v).__name__, repr(v)[:80]))
    return f"{where}: {show(a)} vs {show(b)}"


def _random_bits(dtype: torch.dtype, n: int = 37, seed: int = 0) -> torch.Tensor:
    """Every bit pattern is fair game (NaNs with payloads, subnormals, -0.0): bitwise round trips."""
    size = torch.empty(0, dtype=dtype).element_size()
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        return raw % 2 == 1
    return raw.view(dtype)


def _sample_tree() -> dict:
    x = torch.randn(4, 3)
    return {
        "scalars": [0, -1, 2**70, 1.5, -0.0, float("nan"), float("inf"), -float("inf"), True, False, None, "ü\n"],
        "bytes": b"\x00\xff\x80",
        "tuples": (1, (2, [3, (4,)]), ()),
        "empty": [{}, [], ()],
        7: {"int keys": "kept", 0: [1]},  # optimizer.state_dict()["state"] is keyed by ints
        "tensors": {"plain": x, "view": x[1:], "transposed": x.t(), "again": x, "zero-d": torch.tensor(3),
                    "empty": torch.zeros(0, 5), "param": torch.nn.Parameter(torch.ones(2))},
        "python rng": random.getstate(),
        "numpy rng": np.random.get_state(),
        "torch rng": torch.get_rng_state(),
        "numpy": {"f8": np.arange(6.0).reshape(2, 3), "u4": np.array([1, 2**32 - 1], dtype=np.uint32),
                  "big-endian": np.array([1, 2], dtype=">i2"), "bool": np.array([True, False]),
                  "scalar f8": np.float64(0.25), "scalar i8": np.int64(-3), "scalar bool": np.bool_(True)},
    }


def test_a_nested_tree_round_trips_exactly(tmp_path):
    tree = _sample_tree()
    save_tree(tmp_path / "t.safetensors", tree)
    back = load_tree(tmp_path / "t.safetensors")
    expected = dict(tree)
    expected["tensors"] = {k: v.detach().clone() if isinstance(v, torch.nn.Parameter) else v
                           for k, v in tree["tensors"].items()}  # a Parameter comes back as a plain tensor
    assert same(back, expected)
    assert isinstance(back["python rng"][1], tuple) and isinstance(back["numpy rng"], tuple)
    assert list(tmp_path.iterdir()) == [tmp_path / "t.safetensors"]  # no temp file left


@pytest.mark.parametrize("dtype", sorted(set(safetensors.torch._TYPES.values()), key=str), ids=str)
def test_tensors_of_every_dtype_round_trip_bitwise(tmp_path, dtype):
    tree = {"a": _random_bits(dtype), "b": [_random_bits(dtype, 6, seed=1).reshape(2, 3)]}
    save_tree(tmp_path / "t", tree)
    assert same(load_tree(tmp_path / "t"), tree)


def test_restored_rng_states_draw_the_same_numbers(tmp_path):
    save_tree(tmp_path / "rng", {"python": random.getstate(), "numpy": np.random.get_state(),
                                 "torch": torch.get_rng_state()})
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    saved = load_tree(tmp_path / "rng")
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


@pytest.mark.parametrize("value", [object(), {1.5: "float key"}, {True: "bool key"}, {"s": {1, 2}},
                                   np.array([object()]), lambda: 0],
                         ids=["object", "float key", "bool key", "set", "object array", "function"])
def test_what_the_format_cannot_hold_is_refused_when_saving(tmp_path, value):
    save_tree(tmp_path / "t", {"old": 1})
    with pytest.raises(TypeError):
        save_tree(tmp_path / "t", {"x": value})
    assert load_tree(tmp_path / "t") == {"old": 1} and len(list(tmp_path.iterdir())) == 1


# --------------------------------------------------------------------------- refusing foreign files


def _crafted(path, tree_json, tensors=None, **meta):
    metadata = {"format": "plmtune-tree", "version": "1", "tree": tree_json, **meta}
    safetensors.torch.save_file(tensors or {}, str(path), metadata={k: v for k, v in metadata.items() if v is not None})
    return path


def _raw(path, data):
    path.write_bytes(data)
    return path


def _valid_then_cut(path):
    save_tree(path, {"w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


FOREIGN = {
    "empty file": lambda p: _raw(p, b""),
    "a few bytes": lambda p: _raw(p, b"\x05\x00\x00"),
    "random bytes": lambda p: _raw(p, random.Random(1).randbytes(5000)),
    "text file": lambda p: _raw(p, b"hello, I am a checkpoint\n" * 20),
    "truncated checkpoint": _valid_then_cut,
    "safetensors without plmtune metadata": lambda p: safetensors.torch.save_file({"w": torch.ones(2)}, str(p)) or p,
    "a numeric header length": lambda p: _raw(p, (2**40).to_bytes(8, "little") + b"{}"),
    "newer format version": lambda p: _crafted(p, "1", version="99"),
    "no skeleton": lambda p: _crafted(p, None),
    "skeleton not JSON": lambda p: _crafted(p, "{oops"),
    "unknown tag": lambda p: _crafted(p, json.dumps({"pickle": "gASV"})),
    "tag with extra keys": lambda p: _crafted(p, json.dumps({"tuple": [], "call": "os.system"})),
    "bare NaN": lambda p: _crafted(p, "NaN"),
    "missing tensor": lambda p: _crafted(p, json.dumps({"tensor": "0"})),
    "tensor nothing refers to": lambda p: _crafted(p, json.dumps([]), {"0": torch.ones(1)}),
    "object-dtype array": lambda p: _crafted(p, json.dumps({"ndarray": "0", "dtype": "|O8", "shape": [1]}),
                                            {"0": torch.zeros(8, dtype=torch.uint8)}),
    "array of the wrong size": lambda p: _crafted(p, json.dumps({"ndarray": "0", "dtype": "<f8", "shape": [2]}),
                                                 {"0": torch.zeros(8, dtype=torch.uint8)}),
    "malformed dict entry": lambda p: _crafted(p, json.dumps({"dict": [["a"]]})),
    "nesting too deep": lambda p: _crafted(p, "[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("case", list(FOREIGN), ids=list(FOREIGN))
def test_a_file_plmtune_did_not_write_is_refused_naming_it(tmp_path, case):
    path = FOREIGN[case](tmp_path / "state.safetensors")
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as caught:
        load_tree(path)
    message = str(caught.value)
    assert isinstance(caught.value, PlmtuneError) and str(path) in message
    assert "not a plmtune checkpoint, or it is corrupted or truncated" in message and "\n" not in message
    assert path.read_bytes() == before  # refused, not "repaired" or deleted


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _plant_pickle(path, marker, how="torch"):
    payload = {"model": _Payload(marker), "loop": {"step": 3}}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    return path


def test_the_planted_payload_is_live(tmp_path):
    """Control for the tests below: loading the planted file the old way does run its code."""
    marker = tmp_path / "ran"
    torch.load(_plant_pickle(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_a_pickle_is_refused_and_its_payload_never_runs(tmp_path, how):
    marker = tmp_path / "ran"
    path = _plant_pickle(tmp_path / "state.pt", marker, how)
    with pytest.raises(CheckpointError, match="pickled file.*no longer loads pickles") as caught:
        load_tree(path)
    assert str(path) in str(caught.value) and not marker.exists()


@pytest.mark.parametrize("name", [checkpoint.FILE, checkpoint.LEGACY_FILE])
def test_a_pickled_loop_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, tiny_model, name):
    folder, marker = tmp_path / "checkpoint", tmp_path / "ran"
    folder.mkdir()
    _plant_pickle(folder / name, marker)
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(CheckpointError, match=r"without --resume") as caught:
        checkpoint.load(folder, tiny_model, optimizer, scheduler, [])
    assert str(folder / name) in str(caught.value) and not marker.exists()
    assert (folder / name).is_file()  # left for the user to inspect or remove


# --------------------------------------------------------------------------- writes that cannot tear


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, "
                                                                 "kind: StorageFull, message: \"No space left on "
                                                                 "device\" })")], ids=["OSError", "SafetensorError"])
def test_a_full_disk_while_saving_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint.safetensors"
    save_tree(path, {"step": 1, "w": torch.ones(3)})

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"half")  # the disk fills up mid-file
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointError) as caught:
        save_tree(path, {"step": 2, "w": torch.zeros(3)})
    message = str(caught.value)
    assert isinstance(caught.value, PlmtuneError) and str(path) in message and "No space left on device" in message
    assert "previous version of this file, if any, is intact" in message
    assert same(load_tree(path), {"step": 1, "w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == [path]  # the temp file is gone


def test_a_real_full_disk_keeps_the_previous_checkpoint(mounted):
    tiny = mounted("tiny", "size=64k")
    path = tiny / "checkpoint.safetensors"
    save_tree(path, {"step": 1, "w": torch.ones(10)})
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_tree(path, {"step": 2, "w": torch.zeros(100_000)})  # 400 kB
    assert same(load_tree(path), {"step": 1, "w": torch.ones(10)})
    assert sorted(os.listdir(tiny)) == ["checkpoint.safetensors"]
