"""The embedding_head stage: the head's pieces against sklearn and known answers, then the stage on a tiny BERT."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from plmtune.loading import build_recipe
from plmtune.run import run_recipe
from plmtune.stages.embedding_head import class_probs, em_prior, fit_head, knn_agrees, pick_pseudo, EmbeddingHeadConfig


@pytest.mark.parametrize("classes", [2, 3])
def test_the_head_written_as_a_linear_layer_gives_sklearns_probabilities(classes):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), np.arange(60) % classes
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    assert np.allclose(class_probs(clf, x, classes), clf.predict_proba(x), atol=1e-9)


def test_a_class_no_training_row_has_is_never_predicted():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    clf = LogisticRegression().fit(x, y)
    probs = class_probs(clf, x, 3)
    assert probs[:, 2].max() < 1e-100 and (probs.argmax(1) < 2).all()


def test_c_is_picked_on_dev():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)
    _, chosen = fit_head(x, y, x, y, 2, seed=0)
    assert chosen["C"] in (0.01, 0.1, 1.0, 10.0, 100.0) and chosen["dev_accuracy"] >= 0.9
    _, no_dev = fit_head(x, y, None, None, 2, seed=0)
    assert no_dev == {"C": 1.0}


def test_em_recovers_a_shifted_class_prior():
    """Rows drawn 80/20 from two Gaussians; the classifier's posteriors are exact under a 50/50 prior."""
    rng = np.random.default_rng(3)
    labels = rng.random(20000) < 0.2
    x = rng.normal(size=20000) + np.where(labels, 1.0, -1.0)
    p1 = 1 / (1 + np.exp(-2 * x))  # the Bayes posterior of class 1 under equal priors, means ±1, unit variance
    prior = em_prior(np.stack([1 - p1, p1], 1), np.array([0.5, 0.5]))
    assert prior[1] == pytest.approx(0.2, abs=0.02)


def test_knn_agreement_flags_a_label_that_disagrees_with_its_neighbours():
    x = np.array([[1, 0], [0.99, 0.1], [0.98, -0.1], [0, 1], [0.1, 0.99], [-0.1, 0.98]], dtype=float)
    labels = np.array([0, 0, 1, 1, 1, 1])  # row 2 sits among class-0 rows
    agree = knn_agrees(x, labels, 2, 2)
    assert agree.tolist() == [True, True, False, True, True, True]


def test_pseudo_labels_are_confident_knn_agreeing_and_balanced():
    x = np.array([[1, 0], [0.99, 0.1], [0.98, -0.1], [0, 1], [0.1, 0.99], [-0.1, 0.98]], dtype=float)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6], [0.05, 0.95]])
    cfg = EmbeddingHeadConfig(knn=2, min_confidence=0.65)
    assert pick_pseudo(probs, x, cfg, per_class=1, num_labels=2).tolist() == [0, 5]
    assert pick_pseudo(probs, x, cfg, per_class=5, num_labels=2).tolist() == [0, 1, 3, 5]


def _pool_task(toy_task, write_jsonl):
    rows = [{"text": f"{'good great' if i % 3 else 'bad awful'} thing {i}"} for i in range(60)]
    write_jsonl("unlabeled.jsonl", rows, toy_task)
    return toy_task


def _recipe(**head):
    return build_recipe({"name": "eh", "model": {"backbone": "minilm", "pooling": "mean", "dropout": 0.0},
                         "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
                         "techniques": [{"name": "contrastive", "loss": "cosine"}],
                         "embedding_head": {"rounds": 1, "per_class": 8, "knn": 3, "prior": "em", **head}})


def test_the_stage_self_trains_reports_both_priors_and_saves_what_it_tested(
        toy_task, write_jsonl, tmp_path, tiny_backbone):
    tiny_backbone()
    task = _pool_task(toy_task, write_jsonl)
    result = run_recipe(_recipe(), task, tmp_path / "run", seed=1, save_model=True)
    notes = result["embedding_head"]
    assert [r["round"] for r in notes["rounds"]] == [0, 1] and notes["rounds"][1]["pseudo"] > 0
    assert set(notes) >= {"test_with_prior", "test_without_prior", "pool_prior", "chosen_round"}
    assert result["test"]["accuracy"] == pytest.approx(notes["test_with_prior"]["accuracy"])
    assert sum(notes["pool_prior"]) == pytest.approx(1.0)
    assert result["steps"] > 0
    # The saved model, reloaded in a fresh process, gives the tested predictions: by plmtune.load, and by
    # plain transformers (its encoder in encoder/, mean pooling, the head tensors); the top folder is refused
    # as a transformers classifier (mean pooling has no transformers head) instead of getting a random head.
    script = """
import json, sys, torch
import plmtune
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
folder = sys.argv[1]
try:
    AutoModelForSequenceClassification.from_pretrained(folder)
    raise SystemExit("transformers built a classifier from a model it cannot express")
except (OSError, ValueError):
    pass
clf_metrics = plmtune.load(folder).evaluate(sys.argv[2])
tok, enc = AutoTokenizer.from_pretrained(folder + "/encoder"), AutoModel.from_pretrained(folder + "/encoder").eval()
head = load_file(folder + "/head.safetensors")
rows = [json.loads(l) for l in open(sys.argv[2])]
preds = []
with torch.no_grad():
    for r in rows:
        e = tok(r["text"], return_tensors="pt")
        h = enc(**e).last_hidden_state
        pooled = (h * e["attention_mask"][..., None]).sum(1) / e["attention_mask"].sum()
        preds.append(int((pooled @ head["classifier.weight"].T + head["classifier.bias"]).argmax()))
labels = [r["label"] for r in rows]
print(json.dumps([sum(p == y for p, y in zip(preds, labels)) / len(rows), clf_metrics["accuracy"]]))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run" / "model"), str(task / "test.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx([result["test"]["accuracy"]] * 2)


def test_a_frozen_body_trains_no_step_and_prior_none_reports_the_uncorrected_head(
        toy_task, write_jsonl, tmp_path, tiny_backbone):
    tiny_backbone()
    task = _pool_task(toy_task, write_jsonl)
    result = run_recipe(_recipe(train_body=False, prior="none"), task, tmp_path / "run", seed=1)
    assert result["steps"] == 0
    assert result["test"]["accuracy"] == pytest.approx(result["embedding_head"]["test_without_prior"]["accuracy"])


def test_a_pool_is_required_only_where_used(toy_task, tmp_path, tiny_backbone):
    from plmtune.errors import DataError

    tiny_backbone()
    with pytest.raises(DataError, match="unlabeled.jsonl"):
        run_recipe(_recipe(), toy_task, tmp_path / "a", seed=1)
    result = run_recipe(_recipe(rounds=0, prior="none"), toy_task, tmp_path / "b", seed=1)
    assert "pool_prior" not in result["embedding_head"]
