"""A logistic-regression head on the body's embeddings, self-trained on the unlabelled pool.

SetFit's second phase, plus two things SetFit does not do: the unlabelled pool and the class
prior. A recipe with ``embedding_head:``

1. trains the body with the recipe's techniques (e.g. ``contrastive``), without dev selection
   (the head it would select by is not trained yet), or keeps the pretrained body
   (``train_body: false``);
2. fits a logistic-regression head on the pooled embeddings of the labelled rows, C picked on
   dev (accuracy, then log-loss) from :data:`C_GRID`;
3. with ``rounds > 0``, self-trains the head (Schröder et al. 2024, "HAST"; Xie et al. 2020): the
   current head labels the pool (``unlabeled.jsonl``, a seeded sample of ``pool_size``); a
   pseudo-label is kept where the head's confidence is at least ``min_confidence`` *and* the
   majority label of the row's ``knn`` nearest pool neighbours (cosine) agrees; the ``per_class``
   × round most confident kept rows of each class join the labelled rows, and the head is refitted
   from scratch. The round (0 = no pseudo-labels) is picked on dev, ties to the earlier round;
4. estimates the class prior of the pool by EM (Saerens, Latinne & Decaestecker 2002) and, with
   ``prior: em``, moves the head's bias by log(prior / train prior), the matching logit adjustment.
   Both variants are always reported (``details.embedding_head.test_without_prior`` /
   ``test_with_prior``), so that a shift of the class prior is never sold as a better model.

The head is written into the model's linear classifier (binary: logits [0, w·x + b]), so the
saved model (``--save-model``) predicts exactly what was tested, in plmtune and in transformers.
Pool text is never dev or test text. The body fit itself has no resume: a run is minutes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..assemble import Prepared, prepare
from ..data import load_task
from ..errors import DataError
from ..metrics import classification_metrics
from ..record import RunRecord
from ..rundir import MetricLog, is_main_process
from ..validate import bounded, check_declared, one_of
from .base import RunSpec, Stage, register_stage
from .self_training import read_unlabelled

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class EmbeddingHeadConfig:
    """A logistic-regression head on the body's embeddings (plmtune.stages.embedding_head).

    Args:
    train_body: train the body with the recipe's techniques first (false: the pretrained body).
    rounds: self-training rounds of the head on the unlabelled pool (0: none).
    per_class: pseudo-labels per class added in round 1; round r adds r × this many.
    knn: neighbours whose majority label must agree with a pseudo-label (0: no kNN filter).
    min_confidence: a pseudo-label's head probability must be at least this.
    pool_size: at most this many rows of unlabeled.jsonl (a seeded sample) are used.
    prior: 'none' or 'em' (correct the head for the pool's class prior estimated by EM).
    """

    train_body: bool = True
    rounds: int = bounded(0, 0, 20)
    per_class: int = bounded(64, 1, 1_000_000)
    knn: int = bounded(10, 0, 1000)
    min_confidence: float = bounded(0.0, 0.0, 1.0)
    pool_size: int = bounded(3000, 1, 10_000_000)
    prior: str = one_of("none", ("none", "em"))

    def __post_init__(self) -> None:
        check_declared(self, "embedding_head")

    @property
    def needs_pool(self) -> bool:
        return self.rounds > 0 or self.prior == "em"


# ---------------------------------------------------------------------- the head, in numpy


def fit_head(x: np.ndarray, y: np.ndarray, x_dev: np.ndarray | None, y_dev: np.ndarray | None, num_labels: int,
             seed: int) -> tuple[Any, dict[str, float]]:
    """Logistic regression, C picked on dev (accuracy, then lower log-loss; C=1 without dev)."""
    from sklearn.linear_model import LogisticRegression

    def make(c: float) -> Any:
        return LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(x, y)

    if x_dev is None or y_dev is None or len(y_dev) == 0:
        return make(1.0), {"C": 1.0}
    best = None
    for c in C_GRID:
        clf = make(c)
        probs = class_probs(clf, x_dev, num_labels)
        acc = float((probs.argmax(1) == y_dev).mean())
        loss = float(-np.log(probs[np.arange(len(y_dev)), y_dev] + 1e-12).mean())
        if best is None or (acc, -loss) > best[0]:
            best = ((acc, -loss), clf, {"C": c, "dev_accuracy": acc, "dev_loss": loss})
    return best[1], best[2]


def head_weights(clf: Any, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a linear layer giving the classifier's log-probabilities up to a per-row constant."""
    coef, intercept = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.zeros(num_labels)
    classes = [int(c) for c in clf.classes_]
    if len(classes) == 2 and coef.shape[0] == 1:  # binary: sigmoid(w·x + b) = softmax([0, w·x + b])[1]
        weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
    else:
        for row, c in enumerate(classes):
            weight[c], bias[c] = coef[row], intercept[row]
    missing = [c for c in range(num_labels) if c not in classes]
    bias[missing] = -1e4  # a class no training row has is never predicted
    return weight, bias


def class_probs(clf: Any, x: np.ndarray, num_labels: int, log_shift: np.ndarray | None = None) -> np.ndarray:
    weight, bias = head_weights(clf, num_labels)
    logits = x @ weight.T + bias + (0.0 if log_shift is None else log_shift)
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def knn_agrees(x: np.ndarray, labels: np.ndarray, k: int, num_labels: int) -> np.ndarray:
    """Whether the majority label of each row's k nearest other rows (cosine) equals its own."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x) - 1)
    if k <= 0:
        return np.ones(len(x), bool)
    agree = np.empty(len(x), bool)
    for start in range(0, len(x), 1024):  # blocks keep memory at 1024 × pool
        sims = unit[start:start + 1024] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        neighbours = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.stack([(labels[neighbours] == c).sum(1) for c in range(num_labels)], 1)
        agree[start:start + 1024] = votes.argmax(1) == labels[start:start + 1024]
    return agree


def em_prior(probs: np.ndarray, train_prior: np.ndarray, iters: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """Saerens et al. 2002: the class prior of unlabelled rows, from a classifier trained under `train_prior`."""
    prior = train_prior.copy()
    for _ in range(iters):
        adjusted = probs * (prior / train_prior)
        adjusted /= adjusted.sum(1, keepdims=True)
        new = adjusted.mean(0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def pick_pseudo(probs: np.ndarray, x: np.ndarray, cfg: EmbeddingHeadConfig, per_class: int,
                num_labels: int) -> np.ndarray:
    """Indices of pool rows kept as pseudo-labelled: confident, kNN-agreeing, top `per_class` per class."""
    pred, conf = probs.argmax(1), probs.max(1)
    keep = conf >= cfg.min_confidence
    if cfg.knn:
        keep &= knn_agrees(x, pred, cfg.knn, num_labels)
    chosen = []
    for c in range(num_labels):
        rows = np.where(keep & (pred == c))[0]
        chosen.extend(rows[np.argsort(-conf[rows], kind="stable")][:per_class].tolist())
    return np.array(sorted(chosen), dtype=int)


# ---------------------------------------------------------------------- the stage


@torch.inference_mode()
def embeddings(model: torch.nn.Module, prepared: Prepared, split: str) -> np.ndarray:
    """Row-ordered pooled embeddings of a split under the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(len(prepared.encoded[split]), model.pooler.out_dim)
    for batch in prepared.eval_loader(split):
        index = batch.pop("index")
        batch.pop("labels", None)
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out[index] = model(**batch)["pooled"].float().cpu()
    return out.numpy().astype(np.float64)


@register_stage("embedding_head", EmbeddingHeadConfig)
class EmbeddingHead(Stage):
    saves_model = True
    summary = "train the body (e.g. contrastive), then a logistic-regression head, self-trained on the pool"

    def run(self, spec: RunSpec, cfg: EmbeddingHeadConfig) -> RunRecord:
        recipe, seed, out = spec.recipe, spec.seed, spec.out
        task = load_task(spec.task_dir, recipe.data, need=("train",))
        splits = dict(task.splits)
        if cfg.needs_pool:
            splits["unlabeled"] = read_unlabelled(spec.task_dir, recipe, cfg.pool_size, seed, task.is_pair)
        start = time.perf_counter()
        prepared = prepare(recipe, task, seed, splits)
        params = prepared.parameters()
        log = MetricLog(out / "metrics.jsonl" if is_main_process() else None, recipe, seed)
        try:
            log.tags = {"stage": "body"}
            fitted = prepared.fit(log, dev=None, progress=spec.progress) if cfg.train_body else prepared.unfitted()
            model = fitted.bare_model()
            emb = {name: embeddings(model, prepared, name) for name in prepared.encoded}
            head, notes = self._head(prepared, emb, cfg, seed)
            weight, bias = head["weight"], head["bias"]
            with torch.no_grad():
                model.classifier.weight.copy_(torch.as_tensor(weight, dtype=model.classifier.weight.dtype))
                model.classifier.bias.copy_(torch.as_tensor(bias, dtype=model.classifier.bias.dtype))
            test = prepared.metrics(fitted, "test")
            dev = prepared.metrics(fitted, "dev")
            for split, metrics in (("dev", dev), ("test", test)):
                if metrics is not None:
                    log.write({"type": "eval", "split": split, "step": fitted.steps, **metrics})
        finally:
            log.close()
        details = {"train_seconds": round(time.perf_counter() - start, 3), "steps": fitted.steps,
                   "techniques": prepared.technique_reports(fitted) if cfg.train_body else {},
                   "embedding_head": notes}
        if spec.save_model and fitted.accelerator.is_main_process:
            details["model"] = prepared.save(model, out / "model")
        return RunRecord.for_task(task, spec.task_dir, seed=seed, recipe=recipe.to_dict(), test=test, dev=dev,
                                  parameters=params, sizes=prepared.sizes(), details=details)

    def _head(self, prepared: Prepared, emb: dict[str, np.ndarray], cfg: EmbeddingHeadConfig,
              seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n = prepared.ctx.num_labels
        labels = {name: np.array([r["label"] for r in rows]) for name, rows in prepared.splits.items()
                  if rows and "label" in rows[0] and name != "unlabeled"}
        x_dev, y_dev = emb.get("dev"), labels.get("dev")
        clf, chosen = fit_head(emb["train"], labels["train"], x_dev, y_dev, n, seed)
        rounds = [{"round": 0, "pseudo": 0, **chosen}]
        heads = [clf]
        for round_ in range(1, cfg.rounds + 1):
            probs = class_probs(heads[-1], emb["unlabeled"], n)
            idx = pick_pseudo(probs, emb["unlabeled"], cfg, cfg.per_class * round_, n)
            x = np.vstack([emb["train"], emb["unlabeled"][idx]])
            y = np.concatenate([labels["train"], probs[idx].argmax(1)])
            clf, chosen = fit_head(x, y, x_dev, y_dev, n, seed)
            counts = np.bincount(probs[idx].argmax(1), minlength=n).tolist()
            rounds.append({"round": round_, "pseudo": int(len(idx)), "pseudo_per_class": counts, **chosen})
            heads.append(clf)
        if y_dev is not None:  # the round with the best dev accuracy, then loss; ties to the earlier one
            best = max(range(len(heads)), key=lambda i: (rounds[i]["dev_accuracy"], -rounds[i]["dev_loss"], -i))
        else:
            best = len(heads) - 1
        clf = heads[best]
        weight, bias = head_weights(clf, n)
        train_prior = np.bincount(labels["train"], minlength=n) / len(labels["train"])
        notes: dict[str, Any] = {"rounds": rounds, "chosen_round": best, "train_prior": train_prior.round(4).tolist()}
        shift = np.zeros(n)
        if "unlabeled" in emb:
            if (train_prior == 0).any():
                raise DataError(prepared.task.path, "prior: em needs every class in the train split; class(es) "
                                f"{np.where(train_prior == 0)[0].tolist()} have no row.")
            prior = em_prior(class_probs(clf, emb["unlabeled"], n), train_prior)
            notes["pool_prior"] = prior.round(4).tolist()
            log_shift = np.log(np.maximum(prior, 1e-12) / train_prior)
            if "test" in labels:
                for name, s in (("test_without_prior", None), ("test_with_prior", log_shift)):
                    pred = class_probs(clf, emb["test"], n, s).argmax(1)
                    notes[name] = classification_metrics(labels["test"], pred, n)
            if cfg.prior == "em":
                shift = log_shift
        notes["prior_correction"] = cfg.prior
        if not math.isfinite(float(np.abs(weight).max())):
            raise RuntimeError("the logistic-regression head has non-finite weights")
        return {"weight": weight, "bias": bias + shift}, notes
