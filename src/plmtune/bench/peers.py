"""Peer baselines run inside the same harness, on the same splits, with the same result format.

* ``majority``: always the most frequent class of the original train pool (recorded in
  ``meta.json`` by ``plmtune data fewshot``; the train split where there is none, ties to the
  lowest id). Few-shot train splits are balanced but real test sets are not, so a method that
  merely shifts its class prior can look good on accuracy: every table shows this row.
* ``linear_probe``: logistic regression on frozen, mean-pooled, L2-normalised embeddings of
  the backbone (the way all-MiniLM-L6-v2 was trained to be used); C is picked on dev from
  {0.01, 0.1, 1, 10, 100}.
* ``setfit``: the SetFit library (Tunstall et al. 2022) with its default training arguments on
  the same backbone: contrastive fine-tuning of the sentence encoder, then a logistic-regression
  head. Pair tasks join the two texts with " [SEP] ". Metrics are computed here from its
  predictions (its own evaluate() would fetch metric code from the hub).
* ``setfit_distill``: SetFit's own knowledge distillation (``setfit.DistillationTrainer``), the peer
  of the ``distillation:`` stage: a SetFit teacher on the teacher body (``--teacher-backbone``,
  MPNet by default) trained as ``setfit``, then a student on the student body (``--backbone``)
  distilled on the train texts and the same unlabelled rows the stage uses
  (:func:`plmtune.stages.distillation.distillation_pool`: a seeded sample of 2,048 rows of
  ``unlabeled.jsonl``, none of them a dev or test text), with the settings of SetFit's
  distillation guide (batch size 16, 500 steps: without a step limit it would train on every pair
  of the rows, ~2 million). The student's head is fitted on the teacher's predictions, as SetFit
  does. result.json adds the teacher's test metrics and the seconds of each part.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..data import load_task
from ..metrics import classification_metrics
from ..provenance import git_commit, machine, peak_memory, versions

PEERS = ("majority", "linear_probe", "setfit", "setfit_distill")
DISTILL_STEPS, DISTILL_BATCH, DISTILL_POOL = 500, 16, 2048  # SetFit's distillation guide; the stage's default cap


def _texts(rows: list[dict]) -> list[str]:
    return [r["text"] + (" [SEP] " + r["text_pair"] if "text_pair" in r else "") for r in rows]


def _labels(rows: list[dict]) -> np.ndarray:
    return np.array([r["label"] for r in rows])


def majority(task, seed: int, backbone: str) -> dict[str, Any]:
    import json

    meta = Path(task.path) / "meta.json"
    pool = json.loads(meta.read_text()).get("pool_label_counts") if meta.is_file() else None
    counts = Counter({int(k): v for k, v in pool.items()}) if pool else Counter(r["label"] for r in task.splits["train"])
    top = min(counts, key=lambda c: (-counts[c], c))
    predict = {name: np.full(len(rows), top) for name, rows in task.splits.items()}
    return {"predict": predict, "parameters": {"trainable": 0, "total": 0}}


def _embed(texts: list[str], backbone: str, batch_size: int = 64) -> np.ndarray:
    import torch

    from ..models import load_backbone, pool

    tokenizer, encoder = load_backbone(backbone)
    encoder.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            hidden = encoder(**enc).last_hidden_state
            out.append(torch.nn.functional.normalize(pool(hidden, enc["attention_mask"], "mean"), dim=-1))
    return torch.cat(out).numpy()


def linear_probe(task, seed: int, backbone: str) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    features = {name: _embed(_texts(rows), backbone) for name, rows in task.splits.items()}
    y_train = _labels(task.splits["train"])
    best = None
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(features["train"], y_train)
        score = clf.score(features["dev"], _labels(task.splits["dev"])) if "dev" in features else 0.0
        if best is None or score > best[0]:
            best = (score, c, clf)
    _, c, clf = best
    predict = {name: clf.predict(x) for name, x in features.items()}
    size = clf.coef_.size + clf.intercept_.size
    return {"predict": predict, "parameters": {"trainable": int(size), "total": int(size)}, "chosen": {"C": c}}


def setfit(task, seed: int, backbone: str) -> dict[str, Any]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from ..models import resolve_backbone

    train = Dataset.from_dict({"text": _texts(task.splits["train"]), "label": _labels(task.splits["train"]).tolist()})
    model = SetFitModel.from_pretrained(resolve_backbone(backbone))
    # Its defaults besides, except where files go: by default it saves ~260 MB checkpoints into
    # ./checkpoints of whatever folder the command runs in.
    with tempfile.TemporaryDirectory(prefix="plmtune-setfit-") as scratch:
        args = TrainingArguments(seed=seed, output_dir=scratch, save_strategy="no")
        Trainer(model=model, args=args, train_dataset=train).train()
    predict = {name: np.asarray(model.predict(_texts(rows), as_numpy=True)) for name, rows in task.splits.items()}
    total = sum(p.numel() for p in model.model_body.parameters())
    return {"predict": predict, "parameters": {"trainable": total, "total": total}}


def setfit_distill(task, seed: int, backbone: str, teacher_backbone: str = "mpnet") -> dict[str, Any]:
    from datasets import Dataset
    from setfit import DistillationTrainer, SetFitModel, Trainer, TrainingArguments

    from ..models import resolve_backbone
    from ..stages.distillation import distillation_pool

    train = Dataset.from_dict({"text": _texts(task.splits["train"]), "label": _labels(task.splits["train"]).tolist()})
    pool, dropped = distillation_pool(task.path, DataConfig(), DISTILL_POOL, seed, task)
    unlabelled = Dataset.from_dict({"text": _texts(task.splits["train"]) + _texts(pool)})
    with tempfile.TemporaryDirectory(prefix="plmtune-setfit-") as scratch:
        start = time.perf_counter()
        teacher = SetFitModel.from_pretrained(resolve_backbone(teacher_backbone))
        Trainer(model=teacher, args=TrainingArguments(seed=seed, output_dir=scratch, save_strategy="no"),
                train_dataset=train).train()
        teacher_seconds = time.perf_counter() - start
        start = time.perf_counter()
        student = SetFitModel.from_pretrained(resolve_backbone(backbone))
        args = TrainingArguments(seed=seed, output_dir=scratch, save_strategy="no", batch_size=DISTILL_BATCH,
                                 max_steps=DISTILL_STEPS)
        DistillationTrainer(teacher_model=teacher, student_model=student, args=args, train_dataset=unlabelled).train()
        student_seconds = time.perf_counter() - start
    predict = {name: np.asarray(student.predict(_texts(rows), as_numpy=True)) for name, rows in task.splits.items()}
    teacher_test = None
    if "test" in task.splits:
        rows = task.splits["test"]
        teacher_test = classification_metrics(_labels(rows), np.asarray(teacher.predict(_texts(rows), as_numpy=True)),
                                              task.num_labels)
    total = sum(p.numel() for p in student.model_body.parameters())
    return {"predict": predict, "parameters": {"trainable": total, "total": total},
            "distillation": {"teacher": {"backbone": teacher_backbone, "test": teacher_test},
                             "seconds": {"teacher": round(teacher_seconds, 3), "student": round(student_seconds, 3)},
                             "rows": {"train": len(task.splits["train"]), "pool": len(pool),
                                      "pool_dropped_as_dev_or_test": dropped},
                             "steps": DISTILL_STEPS, "batch_size": DISTILL_BATCH}}


def run_peer(name: str, task_dir: str | Path, seed: int, backbone: str = "minilm",
             teacher_backbone: str = "mpnet") -> dict[str, Any]:
    """Train and evaluate a peer baseline; return a result dict shaped like `plmtune run`'s.

    `teacher_backbone` is setfit_distill's teacher body (the other peers have no teacher)."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    task = load_task(task_dir, DataConfig(), need=("train",))
    start = time.perf_counter()
    peers = {"majority": majority, "linear_probe": linear_probe, "setfit": setfit,
             "setfit_distill": lambda *a: setfit_distill(*a, teacher_backbone=teacher_backbone)}
    out = peers[name](task, seed, backbone)
    seconds = time.perf_counter() - start
    metrics = {split: classification_metrics(_labels(rows), out["predict"][split], task.num_labels)
               for split, rows in task.splits.items() if split in ("dev", "test")}
    recipe = {"name": name, "peer": name, "backbone": backbone}
    if "chosen" in out:
        recipe["chosen"] = out["chosen"]
    if name == "setfit_distill":
        recipe["teacher_backbone"] = teacher_backbone
    return {
        "status": "ok", "peer": name, "task": task.name, "task_dir": str(Path(task_dir).resolve()),
        "num_labels": task.num_labels, "seed": seed, "recipe": recipe,
        "test": metrics.get("test"), "dev": metrics.get("dev"), "train_seconds": round(seconds, 3),
        "eval_seconds": 0.0, "parameters": out["parameters"], "peak_memory": peak_memory(),
        "versions": versions(), "machine": machine(), "git": git_commit(),
        **({"distillation": out["distillation"]} if "distillation" in out else {}),
    }
