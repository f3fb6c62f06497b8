"""Checkpoints that let a killed run resume where it stopped and end as if never interrupted.

A checkpoint holds the model, the optimiser (with wrapper state such as ChildTuning's), the
schedule, every technique's ``state_dict``, the loop's position (step, epoch, batches consumed
in the epoch, the data-order generator's state at the epoch start, best dev result and weights,
patience counter, history), the Python, NumPy and torch RNG states, and a fingerprint of the
configuration that made it (the resolved recipe and the seed), so a resume with another one is
refused instead of silently mixing two runs.

Checkpoints and other state files come from disk, and a run folder may come from someone else:
they are data, never code. :func:`save_tree` stores a nested structure as one safetensors file,
every tensor and array in its tensor section and a JSON skeleton of the rest in its metadata;
:func:`load_tree` reads it back exactly (tensors bitwise with their dtype and shape, tuples as
tuples, NaN as NaN) and never unpickles anything. Whatever does not match the schema is refused
with a :class:`CheckpointError` naming the file. Files are written to a temp file, flushed to disk
and renamed, so a crash or a full disk while saving leaves the previous file intact.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import os
import random
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import safetensors
import safetensors.torch
import torch

from ..errors import PlmtuneError

FILE = "checkpoint.safetensors"
LEGACY_FILE = "checkpoint.pt"  # pickled by torch.save by earlier plmtune versions; never loaded
FORMAT, VERSION = "plmtune-tree", "1"
# Recipe fields that may change between a run and its resume without changing what it trains:
# wording, how often checkpoints are written, and train.seed (the seed actually used is recorded
# on its own, and --seed overrides train.seed).
RESUMABLE_CHANGES = ("name", "description", "train.checkpoint_every", "train.seed", "train.report_to")


class CheckpointError(PlmtuneError):
    """A checkpoint or state file cannot be written, or is not one plmtune can trust and read."""


# --------------------------------------------------------------------------- the tree format
#
# Skeleton grammar (JSON): null, true/false, integers, strings and finite floats stand for
# themselves; a list is a list; anything else is an object with one tag:
#   {"float": "nan" | "inf" | "-inf"}      {"tuple": [node, ...]}     {"bytes": base64}
#   {"dict": [[key, node], ...]}  (key: string or integer; order kept)
#   {"tensor": name}                       (a tensor of the file, dtype and shape included)
#   {"ndarray": name, "dtype": "<u4", "shape": [...]} / {"npscalar": name, "dtype": "<f8"}
#                                          (a numpy array or scalar, its raw bytes as a uint8 tensor)

_NUMPY_DTYPE = re.compile(r"^[<>|=][biuf?c][0-9]{1,2}$")  # plain numbers only: no objects, no records


def _encode(value: Any, tensors: dict[str, torch.Tensor], seen: set[tuple[int, int]], where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an int subclass (an IntEnum, say) comes back as a plain int
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return {"npscalar": _add_array(np.asarray(value), tensors), "dtype": _dtype_name(value.dtype, where)}
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
        if tensor.dtype not in safetensors.torch._TYPES.values():
            raise TypeError(f"{where}: tensors of dtype {tensor.dtype} cannot be stored")
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        # safetensors refuses tensors sharing memory (views of one buffer): store copies of those
        if key in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(key)
        name = str(len(tensors))
        tensors[name] = tensor
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        return {"ndarray": _add_array(value, tensors), "dtype": _dtype_name(value.dtype, where),
                "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict keys must be strings or integers, got {k!r}")
            items.append([k if isinstance(k, str) else int(k), _encode(v, tensors, seen, f"{where}[{k!r}]")])
        return {"dict": items}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a checkpoint")


def _dtype_name(dtype: np.dtype, where: str) -> str:
    if not _NUMPY_DTYPE.match(dtype.str):
        raise TypeError(f"{where}: numpy arrays of dtype {dtype} cannot be stored")
    return dtype.str


def _add_array(array: np.ndarray, tensors: dict[str, torch.Tensor]) -> str:
    name = str(len(tensors))
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    tensors[name] = torch.from_numpy(raw.copy())
    return name


class _Refused(Exception):
    """The skeleton does not follow the grammar above (turned into a CheckpointError)."""


def _decode(node: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if node is None or isinstance(node, (bool, str, int)):
        return node
    if isinstance(node, float):
        if not math.isfinite(node):
            raise _Refused("a non-finite number outside its tag")
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, used) for v in node]
    if not isinstance(node, dict) or not node:
        raise _Refused(f"an unexpected {type(node).__name__}")
    tag = next(iter(node))
    body = node[tag]
    if tag == "float" and len(node) == 1 and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "tuple" and len(node) == 1 and isinstance(body, list):
        return tuple(_decode(v, tensors, used) for v in body)
    if tag == "dict" and len(node) == 1 and isinstance(body, list):
        out = {}
        for item in body:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
                    and not isinstance(item[0], bool)):
                raise _Refused("a malformed dict entry")
            out[item[0]] = _decode(item[1], tensors, used)
        return out
    if tag == "bytes" and len(node) == 1 and isinstance(body, str):
        try:
            return base64.b64decode(body.encode("ascii"), validate=True)
        except ValueError as err:
            raise _Refused("malformed bytes") from err
    if tag == "tensor" and len(node) == 1:
        return _tensor(body, tensors, used)
    if tag in ("ndarray", "npscalar") and set(node) == ({tag, "dtype", "shape"} if tag == "ndarray"
                                                         else {tag, "dtype"}):
        dtype = node["dtype"]
        shape = node.get("shape", [])
        if not (isinstance(dtype, str) and _NUMPY_DTYPE.match(dtype)) or not (
                isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                for n in shape)):
            raise _Refused("a malformed array description")
        raw = _tensor(body, tensors, used)
        dtype = np.dtype(dtype)
        if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != math.prod(shape) * dtype.itemsize:
            raise _Refused(f"array {body} does not match its description")
        array = np.frombuffer(raw.numpy().tobytes(), dtype=dtype).reshape(shape).copy()
        return array if tag == "ndarray" else array[()]
    raise _Refused(f"an unknown entry {sorted(node)[:3]}")


def _tensor(name: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise _Refused(f"a reference to a missing tensor {name!r}")
    used.add(name)
    return tensors[name]


def save_tree(path: str | Path, tree: Any) -> None:
    """Write `tree` to `path` atomically: the old file stays whole until the new one is complete.

    The tree may nest dicts (string or integer keys), lists, tuples, None, bools, ints, floats
    (NaN and infinities included), strings, bytes, numpy arrays and scalars, and torch tensors of
    any dtype safetensors knows (tensors on another device are stored from a CPU copy). Anything
    else raises TypeError. A failing write raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(tree, tensors, set(), "tree"), allow_nan=False, separators=(",", ":"))
    metadata = {"format": FORMAT, "version": VERSION, "tree": skeleton}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        mask = os.umask(0)
        os.umask(mask)
        # the mode an ordinary open() would give (0644 under the usual umask), not mkstemp's 0600;
        # after save_file, which writes a new file in place of the temp one
        os.chmod(tmp, 0o666 & ~mask)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # on disk before the rename: a power cut leaves old or new, not a hole
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except (OSError, safetensors.SafetensorError, RuntimeError) as err:  # a full disk is a SafetensorError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        full = isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in reason
        raise CheckpointError(
            f"Could not write {path}: {'No space left on device' if full else reason}. The previous "
            f"version of this file, if any, is intact; {'free some space' if full else 'fix the cause'} "
            "and run again with --resume.") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _refuse(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a plmtune checkpoint, or it is corrupted or truncated ({detail}); nothing was "
        "loaded from it. Delete it, or run again without --resume, to start afresh.")


def load_tree(path: str | Path) -> Any:
    """Read a tree written by :func:`save_tree`; never runs code from the file.

    Raises :class:`CheckpointError` naming the file where it is not such a file (an old pickled
    checkpoint, another format, a truncated or corrupted one); OSError where it cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        raise _refuse(path, "the file is empty" if not head else "the file is cut short")
    try:
        with safetensors.safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise _Refused("no plmtune metadata")
            if metadata.get("version") != VERSION:
                raise _Refused(f"format version {metadata.get('version')!r}, this plmtune reads {VERSION}")
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        skeleton = json.loads(metadata.get("tree", ""), parse_constant=_no_constant)
        used: set[str] = set()
        tree = _decode(skeleton, tensors, used)
        if used != set(tensors):
            raise _Refused(f"{len(set(tensors) - used)} tensor(s) that nothing refers to")
        return tree
    except _Refused as err:
        raise _refuse(path, str(err)) from None
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError, RecursionError, UnicodeError) as err:
        # Checked only now: a valid header length may begin with these bytes too.
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
            raise CheckpointError(
                f"{path} is a pickled file (torch.save), written by an earlier plmtune version or by "
                "something else. plmtune no longer loads pickles, because loading one can run any code "
                "it holds; nothing was loaded from it. Restart the run without --resume (delete the "
                "file to keep no trace of it).") from None
        raise _refuse(path, f"{type(err).__name__}: {str(err)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise _Refused(f"a bare {name} in the skeleton")


# --------------------------------------------------------------------------- the loop's checkpoint


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches of the current epoch already consumed
    epoch_rng: torch.Tensor | None = None  # data-order generator state at the start of `epoch`
    epoch_extra: list[dict[str, Any]] = field(default_factory=list)  # EpochReplay's `keep` states then
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


_PARTS = ("model", "optimizer", "scheduler", "techniques", "loop", "rng", "fingerprint")


def fingerprint(recipe: Any, seed: int, train: Any = None) -> dict[str, Any]:
    """What a checkpoint must have been made with to be resumed: the resolved recipe and the seed.

    `train` is the TrainConfig the loop really runs with, where it is not the recipe's own. The
    fields of RESUMABLE_CHANGES are left out: changing them does not change what is trained.
    """
    recipe_dict = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe or {})
    found: dict[str, Any] = {"recipe": _without(recipe_dict, RESUMABLE_CHANGES), "seed": int(seed)}
    if train is not None and train != getattr(recipe, "train", None):
        found["train"] = _without({f.name: getattr(train, f.name) for f in fields(train)},
                                  [c.split(".", 1)[1] for c in RESUMABLE_CHANGES if c.startswith("train.")])
    return json.loads(json.dumps(found, default=str))  # plain JSON values, as they come back from the file


def _without(tree: dict[str, Any], dotted: Iterable[str]) -> dict[str, Any]:
    tree = json.loads(json.dumps(tree, default=str))
    for path in dotted:
        parts, node = path.split("."), tree
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return tree


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix or "(value)": tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    if not out and prefix:
        out[prefix] = tree  # an empty list or dict is a value of its own
    return out


def describe_difference(saved: Any, current: Any, limit: int = 5) -> str:
    """'seed: 13 in the checkpoint, 21 now; recipe.train.lr: …' for the first `limit` differences."""
    old, new = _flat(saved), _flat(current)
    missing = object()
    # the seed first, then values changed in place, then fields present on one side only
    keys = sorted(set(old) | set(new), key=lambda k: (not k.startswith("seed"), (k in old) != (k in new), k))
    diffs = [f"{k}: {_show(old.get(k, missing), missing)} in the checkpoint, {_show(new.get(k, missing), missing)} now"
             for k in keys if old.get(k, missing) != new.get(k, missing)]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _show(value: Any, missing: object) -> str:
    return "absent" if value is missing else json.dumps(value)


def save(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, techniques: list,
         state: LoopState, fingerprint: dict[str, Any] | None = None) -> None:
    """Write the checkpoint; `fingerprint` (from :func:`fingerprint`) is checked when resuming."""
    save_tree(Path(directory) / FILE, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "techniques": [t.state_dict() for t in techniques],
        # not dataclasses.asdict: that deep-copies every tensor (the best weights) on every save
        "loop": {f.name: getattr(state, f.name) for f in fields(LoopState)},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "fingerprint": fingerprint,
    })


def load(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, techniques: list,
         fingerprint: dict[str, Any] | None = None) -> tuple[LoopState, dict] | None:
    """Restore the model, optimiser, schedule and techniques from `directory`'s checkpoint.

    Returns the loop state and the RNG states, which the caller restores with `restore_rng`
    right before the first batch it trains on (creating the data iterator in between may draw
    random numbers); None where there is no checkpoint. With `fingerprint`, a checkpoint made
    with another configuration is refused (CheckpointError saying what differs) before anything
    is loaded; so is an old pickled checkpoint.pt, which is never unpickled.
    """
    directory = Path(directory)
    path = directory / FILE
    if not path.is_file():
        legacy = directory / LEGACY_FILE
        if legacy.is_file():
            raise CheckpointError(
                f"{legacy} is a checkpoint in the format of an earlier plmtune version, which is "
                "pickled and could run code when loaded, so it is not read. This run cannot be "
                "resumed: run it again without --resume (that starts afresh and removes the old "
                "checkpoint).")
        return None
    payload = load_tree(path)
    if not (isinstance(payload, dict) and set(payload) == set(_PARTS)):
        raise _refuse(path, "not a training-loop checkpoint")
    saved = payload["fingerprint"]
    if fingerprint is not None and saved != fingerprint:  # a checkpoint without one cannot be trusted to match
        raise CheckpointError(
            f"{path} was written by a run with another configuration, so resuming from it would mix "
            f"two runs ({describe_difference(saved, fingerprint)}). Resume with the original recipe, "
            "overrides and seed, or run again without --resume to start afresh.")
    loop, rng = payload["loop"], payload["rng"]
    names = {f.name for f in fields(LoopState)}
    if not (isinstance(loop, dict) and set(loop) == names and isinstance(rng, dict)
            and set(rng) == {"python", "numpy", "torch", "cuda"}
            and isinstance(payload["techniques"], list)):
        raise _refuse(path, "its loop state does not have the expected fields")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        # zip: the recipe's techniques are in the fingerprint; helpers with no state may follow them
        for technique, technique_state in zip(techniques, payload["techniques"]):
            technique.load_state_dict(technique_state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(
            f"{path} does not fit this run's model or optimiser ({str(err).splitlines()[0][:300]}); it was "
            "probably written with another recipe. Resume with the original one, or run again without "
            "--resume to start afresh.") from None
    return LoopState(**loop), rng


class EpochReplay:
    """Walks a shuffled loader one epoch per call, such that a run resumed from a checkpoint trains on
    exactly the batches (order, masks, dropout) an uninterrupted run would have.

    At an epoch's start it records the data-order generator's state and the ``state_dict`` of each
    object in `keep` (a masking collator, say) in the loop state, which the checkpoint saves.
    Resuming mid-epoch, it restores those, skips the batches consumed before the checkpoint, and
    restores the global RNG states (`pending_rng`, from :func:`load`) right before the first batch
    it yields — after the loader's iterator is made, which may draw random numbers.
    """

    def __init__(self, state: LoopState, generator: torch.Generator | None, pending_rng: dict | None = None,
                 keep: Iterable[Any] = ()):
        self.state, self.generator, self.pending_rng, self.keep = state, generator, pending_rng, list(keep)

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        state = self.state
        if state.position == 0:
            state.epoch_rng = self.generator.get_state() if self.generator is not None else None
            state.epoch_extra = [obj.state_dict() for obj in self.keep]
        else:
            if self.generator is not None:
                self.generator.set_state(state.epoch_rng)
            for obj, saved in zip(self.keep, state.epoch_extra):
                obj.load_state_dict(saved)
        for index, batch in enumerate(loader):
            if index < state.position:
                continue  # consumed before the checkpoint
            if self.pending_rng is not None:
                restore_rng(self.pending_rng)  # dropout and masks continue as if never stopped
                self.pending_rng = None
            yield index, batch


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def truncate_log(path: Path, step: int) -> None:
    """Drop metrics.jsonl records written after the checkpoint at `step` (they will be redone)."""
    keep_log_records(path, lambda record: (record.get("type") == "train" and record["step"] <= step) or
                     (record.get("type") == "eval" and record.get("split") == "dev" and record["step"] < step))


def keep_log_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL log with the records `keep` accepts, atomically; a line cut short by a kill ends it."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if keep(record):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
