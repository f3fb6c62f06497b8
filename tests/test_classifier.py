"""plmtune.load / Classifier: inputs of every kind, evaluation, and the real model through every route.

The slow test trains the real MiniLM on real SST-2 rows with `plmtune run --save-model`, then
reloads the model in fresh processes by each route (plmtune.load, plmtune predict, transformers'
pipeline, ONNX Runtime) and checks that all give the predictions the run tested.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from plmtune import load
from plmtune.errors import PlmtuneError

from shared_data import shared_dataset


def test_texts_pairs_dicts_frames_and_datasets_give_the_same_predictions(saved_toy_model):
    import datasets
    import pandas as pd

    folder, _ = saved_toy_model()
    clf = load(folder)
    texts = ["good great film", "bad awful meal", "good song"]
    expected = clf.predict_proba(texts)
    assert expected.shape == (3, 2) and np.allclose(expected.sum(1), 1)
    for inputs in ([{"text": t} for t in texts], pd.DataFrame({"text": texts}), datasets.Dataset.from_dict({"text": texts}),
                   {"text": texts}):
        assert np.allclose(clf.predict_proba(inputs), expected, atol=1e-6), type(inputs)
    assert clf.predict("good great film") == [clf.labels[int(expected[0].argmax())]]
    with pytest.raises(PlmtuneError, match="item 1 has a 'text_pair', but this model classifies single texts"):
        clf.predict([("a", "b")])
    with pytest.raises(PlmtuneError, match="item 2 is None, not a string"):
        clf.predict(["good", None])
    frame = pd.DataFrame({"text": texts, "when": pd.to_datetime(["2024-01-01"] * 3)})  # an odd column is carried
    assert np.allclose(clf.predict_proba(frame), expected, atol=1e-6)
    with pytest.raises(PlmtuneError, match="empty"):
        clf.predict([])
    with pytest.raises(PlmtuneError, match="row 2 is a int"):
        clf.predict([{"text": "a"}, 3])
    with pytest.raises(PlmtuneError, match=r"Bad data in the input, line 2, field 'text': must be a string"):
        clf.predict([{"text": "a"}, {"text": 5}])


def test_class_names_come_back_as_names_and_evaluate_maps_them(saved_toy_model, toy_task, write_jsonl, tmp_path):
    named = tmp_path / "named"
    for split in ("train", "dev", "test"):
        rows = [json.loads(x) for x in (toy_task / f"{split}.jsonl").read_text().splitlines()]
        write_jsonl(f"{split}.jsonl", [{"text": r["text"], "label": ["neg", "pos"][r["label"]]} for r in rows], named)
    folder, _ = saved_toy_model(task=named)
    clf = load(folder)
    assert clf.labels == ["neg", "pos"]
    assert set(clf.predict(["good great film", "bad"])) <= {"neg", "pos"}
    metrics = clf.evaluate(named)
    assert metrics["n"] == 16 and 0 <= metrics["accuracy"] <= 1
    assert clf.evaluate(named / "test.jsonl") == metrics
    bad = write_jsonl("bad.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": "maybe"}], tmp_path)
    with pytest.raises(PlmtuneError, match=r"bad.jsonl, line 2, field 'label': label 'maybe' is not a class of this "
                                           r"model \(neg, pos; or an id 0..1\)"):
        clf.evaluate(bad)


def _sst2_task(folder, k=16, test_rows=300, seed=0):
    """K per class from SST-2 train, K per class as dev, the first `test_rows` of SST-2 dev as test."""
    source = shared_dataset("sst2")
    train = [json.loads(x) for x in (source / "train.jsonl").read_text().splitlines()[:4000]]
    random.Random(seed).shuffle(train)
    picked = {0: [], 1: []}
    for row in train:
        if len(picked[row["label"]]) < 2 * k:
            picked[row["label"]].append(row)
    folder.mkdir()
    write = lambda name, rows: (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("train.jsonl", picked[0][:k] + picked[1][:k])
    write("dev.jsonl", picked[0][k:] + picked[1][k:])
    write("test.jsonl", [json.loads(x) for x in (source / "dev.jsonl").read_text().splitlines()[:test_rows]])
    return folder


ROUTES = r"""
import json, sys
import numpy as np
model, task, route = sys.argv[1], sys.argv[2], sys.argv[3]
texts = [json.loads(x)["text"] for x in open(task + "/test.jsonl")]
if route == "plmtune":
    import plmtune
    clf = plmtune.load(model)
    probs = clf.predict_proba(texts)
    print(json.dumps({"probs": probs.tolist(), "labels": clf.labels, "metrics": clf.evaluate(task)}))
elif route == "pipeline":
    from transformers import pipeline
    pipe = pipeline("text-classification", model=model, top_k=None, device="cpu")
    out = pipe(texts, batch_size=16)
    names = sorted({d["label"] for d in out[0]})
    print(json.dumps({"probs": [[{d["label"]: d["score"] for d in o}[n] for n in names] for o in out], "labels": names}))
else:
    from plmtune.export import onnx_predict_proba
    print(json.dumps({"probs": onnx_predict_proba(model, texts).tolist()}))
"""


@pytest.mark.slow
def test_a_trained_model_predicts_the_same_by_every_route_in_fresh_processes(tmp_path):
    task = _sst2_task(tmp_path / "sst2")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "plmtune", "run", "baseline", "--data", str(task), "--out", str(run),
                           "--set", "model.pooling=cls", "--set", "train.epochs=4", "--seed", "13", "--save-model"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["model"]["exportable"], result["model"]

    def route(name, folder):
        out = subprocess.run([sys.executable, "-c", ROUTES, str(folder), str(task), name], capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    ours = route("plmtune", run / "model")
    probs = np.array(ours["probs"])
    # what the run tested, to float precision: the same loss and accuracy on the test split
    assert ours["metrics"]["accuracy"] == result["test"]["accuracy"]
    assert ours["metrics"]["loss"] == pytest.approx(result["test"]["loss"], abs=1e-6)
    labels = probs.argmax(1)

    hf = route("pipeline", run / "model")  # plain transformers, label names from the config
    assert hf["labels"] == ours["labels"] == ["0", "1"]
    assert np.abs(np.array(hf["probs"]) - probs).max() < 1e-4
    assert (np.array(hf["probs"]).argmax(1) == labels).all()

    cli = subprocess.run([sys.executable, "-m", "plmtune", "predict", str(run / "model"), "--input",
                          str(task / "test.jsonl"), "--out", str(tmp_path / "preds.csv")],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    import csv

    with open(tmp_path / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == [ours["labels"][i] for i in labels]
    assert np.abs(np.array([[float(r["p_0"]), float(r["p_1"])] for r in rows]) - probs).max() < 1e-5

    exported = subprocess.run([sys.executable, "-m", "plmtune", "export", str(run / "model"), "--to", "onnx", "--out",
                               str(tmp_path / "onnx")], capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    onnx = route("onnx", tmp_path / "onnx")
    assert np.abs(np.array(onnx["probs"]) - probs).max() < 1e-4
    assert (np.array(onnx["probs"]).argmax(1) == labels).all()
