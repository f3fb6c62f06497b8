"""The distillation stage's teacher: which one a recipe names, what it is, and its cached predictions.

``distillation.teacher`` is either

* a **saved model**: the folder ``plmtune run --save-model`` writes (``OUT/model``; the run folder
  ``OUT`` itself is accepted too) or :meth:`plmtune.Classifier.save`. Its classes must be the task's,
  in the same order. Its identity is the content of its files (names, sizes and SHA-256 of every
  file but the model card), so a copy of the folder is the same teacher and no mtime matters;
* a **recipe** (a shipped name or a file) trained first on the same task, with
  ``distillation.teacher_backbone`` as its backbone where set. It runs through
  :func:`plmtune.run.run_recipe` like any run, into ``OUT/distillation/teacher`` with
  ``save_model``, so none of its stages is skipped. Its identity is what decides its training: the
  resolved recipe (less its name and description) and the seed.

The teacher's logits on the train rows and the unlabelled pool (and its own dev and test metrics)
are cached in one file per (teacher, data) under the cache folder (``distillation.cache``, else
``$PLMTUNE_CACHE/teachers``, else ``~/.cache/plmtune/teachers``), written atomically with
:func:`plmtune.engine.checkpoint.save_tree` (tensors and JSON, never a pickle). The data half of
the key hashes the texts the teacher labels and the labelled splits (texts and labels). A cache
hit loads no teacher and trains none. Two runs that miss at once both label and write the same
file; the last rename wins.

A stage cannot import the recipe loader, the runner or :func:`plmtune.load` (they import the
stages); it reaches them through ``spec.services`` (:class:`plmtune.run.StageServices`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Recipe
from ..data import TaskData
from ..engine.checkpoint import CheckpointError, fingerprint, load_tree, save_tree
from ..errors import PlmtuneError, RecipeError
from ..metrics import classification_metrics
from ..saved import CARD, META, read_meta

logger = logging.getLogger(__name__)

CACHE_FORMAT, CACHE_VERSION = "plmtune-teacher-labels", 1
TEACHER_RUN = Path("distillation") / "teacher"  # a recipe teacher's run folder, inside the student's


def default_cache() -> Path:
    """$PLMTUNE_CACHE/teachers, else ~/.cache/plmtune/teachers (read when called, not at import)."""
    return Path(os.environ.get("PLMTUNE_CACHE") or Path.home() / ".cache" / "plmtune") / "teachers"


@dataclass
class Teacher:
    kind: str  # "folder" (a saved model) or "recipe" (trained first, on the same task)
    source: str  # distillation.teacher as written
    folder: Path | None  # the saved model (a recipe teacher's is only known once it has run)
    recipe: Recipe | None  # a recipe teacher's resolved recipe, backbone included
    identity: dict[str, Any]  # what decides its predictions: the teacher half of the cache key
    backbone: str


def expected_classes(task: TaskData) -> list[str]:
    """The class names a model of this task carries in plmtune.json (ids as strings where the task has none)."""
    return [str(n) for n in task.label_names] if task.label_names else [str(i) for i in range(task.num_labels)]


def check_classes(meta: dict[str, Any], folder: Path, task: TaskData) -> None:
    expected = expected_classes(task)
    if meta["label_names"] != expected:
        raise PlmtuneError(
            f"{folder / META}: field 'label_names' is {meta['label_names']}, but the task {task.path} has the "
            f"classes {expected}; distillation.teacher must be a model of the task's classes, in the same order "
            "(its probabilities are read as the task's class ids).")
    if bool(meta.get("is_pair")) != task.is_pair:
        what = "text pairs" if task.is_pair else "single texts"
        raise PlmtuneError(f"{folder / META}: field 'is_pair' is {bool(meta.get('is_pair'))}, but the task "
                           f"{task.path} classifies {what}; distillation.teacher must be a model of this task.")


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file of a saved model but its card: relative name, size and content hash."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == CARD:
            continue  # the model card describes the model; it changes no prediction
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{name}\0{path.stat().st_size}\0{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def resolve_teacher(cfg: Any, seed: int, task: TaskData, services: Any) -> Teacher:
    """The teacher `cfg.teacher` names, checked before anything is trained or loaded."""
    text = cfg.teacher.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path if (path / META).is_file() else path / "model" if (path / "model" / META).is_file() else None
        if folder is None:
            raise PlmtuneError(
                f"distillation.teacher: {path} is a folder but not a saved model (it has no {META}, nor model/{META}); "
                "give the folder 'plmtune run --save-model' writes (OUT/model, or OUT), or a recipe to train the "
                "teacher first.")
        if cfg.teacher_backbone:
            raise RecipeError(
                f"distillation.teacher_backbone is '{cfg.teacher_backbone}', but the teacher {folder} is a saved "
                "model, which keeps its own backbone; teacher_backbone applies to a recipe teacher only (remove it).")
        meta = read_meta(folder)  # a PlmtuneError naming plmtune.json and the field
        check_classes(meta, folder, task)
        backbone = str(meta["recipe"].get("model", {}).get("backbone", ""))
        return Teacher("folder", text, folder.resolve(), None,
                       {"kind": "folder", "content_sha256": folder_digest(folder)}, backbone)
    if not path.exists() and (path.suffix in (".yaml", ".yml") or "/" in text or os.sep in text):
        raise PlmtuneError(
            f"distillation.teacher: {path} does not exist; give a saved-model folder ('plmtune run --save-model' "
            "writes OUT/model), a recipe file, or a shipped recipe's name.")
    try:
        recipe = services.load_recipe(text)
    except RecipeError as err:
        raise RecipeError(f"distillation.teacher: '{text}' is neither a saved-model folder (there is no such "
                          f"folder) nor a recipe: {err}") from None
    if recipe.stage("distillation") is not None:
        raise RecipeError(f"distillation.teacher: the teacher recipe '{text}' has a distillation section itself; a "
                          "teacher learns from the gold labels (give a recipe without one).")
    if cfg.teacher_backbone:
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, backbone=cfg.teacher_backbone))
    identity = {"kind": "recipe", "fingerprint": fingerprint(recipe, seed)}
    return Teacher("recipe", text, None, recipe, identity, recipe.model.backbone)


def _rows_digest(rows: list[dict], labels: bool) -> str:
    digest = hashlib.sha256()
    for row in rows:
        item = [row["text"], row.get("text_pair"), row.get("label") if labels else None]
        digest.update(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def cache_key(teacher: Teacher, task: TaskData, pool: list[dict]) -> str:
    """The cache file's name: the teacher's identity and the data (texts it labels; labelled splits)."""
    data = {split: _rows_digest(rows, labels=True) for split, rows in sorted(task.splits.items())}
    data["pool"] = _rows_digest(pool, labels=False)
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "teacher": teacher.identity, "data": data}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_cache(path: Path, key: str, train: list[dict], pool: list[dict], num_labels: int) -> dict | None:
    """The cached predictions for `key`, or None (absent, unreadable or not for these rows: labelled again)."""
    if not path.is_file():
        return None
    try:
        entry = load_tree(path)
    except (CheckpointError, OSError) as err:
        logger.warning("ignoring the teacher cache %s (%s); the teacher labels the rows again", path, err)
        return None
    try:
        fits = (entry["format"] == CACHE_FORMAT and entry["version"] == CACHE_VERSION and entry["key"] == key
                and all(entry[part]["sources"] == [r["source"] for r in rows]
                        and tuple(entry[part]["logits"].shape) == (len(rows), num_labels)
                        for part, rows in (("train", train), ("pool", pool))))
    except (KeyError, TypeError, AttributeError):
        fits = False
    if not fits:
        logger.warning("the teacher cache %s does not fit this run's rows; the teacher labels them again", path)
    return entry if fits else None


def write_cache(path: Path, entry: dict) -> None:
    save_tree(path, entry)  # atomic: a temp file, fsync, rename


def _metrics(logits: torch.Tensor, rows: list[dict], num_labels: int) -> dict[str, float]:
    labels = torch.tensor([r["label"] for r in rows])
    metrics = classification_metrics(labels.numpy(), logits.argmax(-1).numpy(), num_labels)
    metrics["loss"] = float(F.cross_entropy(logits.float(), labels))
    return metrics


def label(teacher: Teacher, spec: Any, task: TaskData, pool: list[dict], key: str, services: Any) -> dict:
    """Train a recipe teacher (or reuse the one an interrupted run finished), then label the rows with it."""
    start = time.perf_counter()
    dev = test = None
    folder = teacher.folder
    if teacher.kind == "recipe":
        run_dir = spec.out / TEACHER_RUN
        finished = spec.resume and (run_dir / "result.json").is_file() and (run_dir / "model" / META).is_file()
        if finished:  # --resume after the teacher's run had finished: its model and result are there
            result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        else:
            result = services.run_recipe(teacher.recipe, spec.task_dir, run_dir, seed=spec.seed,
                                         progress=spec.progress, save_model=True,
                                         resume=spec.resume and run_dir.is_dir(), overwrite=True)
        folder, dev, test = run_dir / "model", result.get("dev"), result.get("test")
    classifier = services.load_model(folder)
    check_classes(classifier.meta, folder, task)
    train = task.splits["train"]
    texts = [{k: v for k, v in row.items() if k != "label"} for row in train + pool]  # the gold labels stay here
    logits = classifier.logits(texts, progress=spec.progress)
    if teacher.kind == "folder":  # its own metrics on this task, through the code that tests any model
        dev, test = ((_metrics(classifier.logits(task.splits[s]), task.splits[s], task.num_labels)
                      if task.splits.get(s) else None) for s in ("dev", "test"))
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "identity": teacher.identity,
            "teacher": {"kind": teacher.kind, "source": teacher.source, "backbone": teacher.backbone,
                        "model": str(folder)},
            "label_names": list(classifier.meta["label_names"]),
            "train": {"sources": [r["source"] for r in train], "logits": logits[:len(train)].float().contiguous()},
            "pool": {"sources": [r["source"] for r in pool], "logits": logits[len(train):].float().contiguous()},
            "teacher_dev": dev, "teacher_test": test, "seconds": round(time.perf_counter() - start, 3)}
