"""The Python API: plmtune.recipe in code, plmtune.train on in-memory data, the notebook path on real data."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import plmtune
from plmtune.errors import DataError, PlmtuneError, RecipeError

from shared_data import shared_dataset


def _rows(folder, split):
    return [json.loads(x) for x in (Path(folder) / f"{split}.jsonl").read_text().splitlines()]


def test_a_recipe_in_code_is_validated_like_yaml():
    recipe = plmtune.recipe("llrd", train={"learning_rate": 3e-5, "epochs": 2}, name="mine")
    assert recipe.train.lr == 3e-5 and recipe.train.epochs == 2 and recipe.name == "mine"
    assert [t.name for t in recipe.techniques] == ["llrd"]
    bare = plmtune.recipe(None, techniques=[{"name": "ema", "decay": 0.99}], overrides=["train.lr=1e-4"])
    assert bare.train.lr == 1e-4 and bare.techniques[0].config.decay == 0.99
    with pytest.raises(RecipeError, match="Did you mean"):
        plmtune.recipe("baseline", train={"learnin_rate": 1e-5})
    with pytest.raises(RecipeError):
        plmtune.recipe("baseline", train={"lr": -1})


def test_train_on_datasets_lists_and_dicts_with_field_mapping(toy_task, tiny_backbone, tmp_path):
    import datasets

    tiny_backbone()
    train, dev, test = (_rows(toy_task, s) for s in ("train", "dev", "test"))
    renamed = [{"sentence": r["text"], "y": r["label"]} for r in train]
    run = plmtune.train("baseline", train=datasets.Dataset.from_list(renamed),
                        dev={"sentence": [r["text"] for r in dev], "y": [r["label"] for r in dev]},
                        test=[{"sentence": r["text"], "y": r["label"]} for r in test],
                        text_field="sentence", label_field="y", epochs=2, seed=3)
    assert run.result["sizes"] == {"train": 32, "dev": 16, "test": 16}
    assert run.result["recipe"]["data"]["text_field"] == "sentence" and run.result["recipe"]["train"]["epochs"] == 2
    assert run.dev is not None and run.metrics["n"] == 16
    assert [r for r in run.history if r.get("type") == "eval" and r["split"] == "dev"]
    assert run.out is None
    preds = run.predict([{"sentence": "good great film"}, {"sentence": "bad awful meal"}])
    assert set(preds) <= {"0", "1"}
    assert run.evaluate([{"sentence": r["text"], "y": r["label"]} for r in test]) == pytest.approx(run.metrics)


def test_train_takes_a_dataset_dict_with_a_validation_split_and_keeps_out(toy_task, tiny_backbone, tmp_path):
    import datasets

    tiny_backbone()
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(toy_task, "train")),
                                   "validation": datasets.Dataset.from_list(_rows(toy_task, "dev")),
                                   "test": datasets.Dataset.from_list(_rows(toy_task, "test"))})
    run = plmtune.train("baseline", train=splits, out=tmp_path / "run", epochs=1)
    assert run.result["sizes"]["dev"] == 16 and run.dev is not None
    assert (tmp_path / "run" / "result.json").is_file() and (tmp_path / "run" / "model" / "plmtune.json").is_file()
    with pytest.raises(PlmtuneError, match="do not also pass"):
        plmtune.train("baseline", train=splits, dev=[{"text": "x", "label": 0}])


def test_a_class_label_column_names_the_classes_in_its_id_order(toy_task, tiny_backbone):
    import datasets

    tiny_backbone()
    names = ["terrible", "awesome"]  # id order, not sorted: sorting would swap them
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    train, test = (datasets.Dataset.from_list(_rows(toy_task, s), features=features) for s in ("train", "test"))
    assert train.to_list()[0]["label"] in (0, 1)  # a Dataset hands out the ids
    run = plmtune.train("baseline", train=train, test=test, epochs=1, seed=3)
    assert run.model.labels == names and run.result["recipe"]["data"]["label_names"] == names
    texts = ["good great film", "bad awful meal"]
    assert run.predict(texts) == [names[i] for i in run.predict_proba(texts).argmax(1)]
    assert run.evaluate(test) == pytest.approx(run.metrics)  # its ids are this model's classes
    other = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    with pytest.raises(PlmtuneError, match=r"ClassLabel column 'label' has different class names per split "
                                           r"\(train: terrible, awesome; test: no, yes\)"):
        plmtune.train("baseline", train=train, test=test.cast(other))


def test_a_stage_recipe_runs_its_stage_through_the_api(toy_task, tiny_backbone):
    tiny_backbone()
    run = plmtune.train("self_distill", train=str(toy_task), epochs=1)
    assert [r["round"] for r in run.result["self_distillation"]["rounds"]] == [0, 1]
    assert run.result["model"]["path"]  # self-distillation saves its last model too
    assert run.evaluate(toy_task) == pytest.approx(run.metrics)


def test_bad_in_memory_data_gets_the_file_line_field_error_or_a_clear_type_error(toy_task, tiny_backbone):
    import pandas as pd

    tiny_backbone()
    frame = pd.DataFrame({"text": ["good", "bad", "good"], "label": [1, None, 1]})
    with pytest.raises(DataError, match=r"Bad data in train= \(line = row number, from 1\), line 2, field 'label': the label is null"):
        plmtune.train("baseline", train=frame)
    with pytest.raises(PlmtuneError, match="cannot read a int"):
        plmtune.train("baseline", train=42)
    with pytest.raises(PlmtuneError, match="train= is required"):
        plmtune.train("baseline")
    with pytest.raises(PlmtuneError, match="use plmtune.train"):
        plmtune.run_recipe(plmtune.load_recipe("baseline"), frame, "out")
    assert not list(Path(tempfile.gettempdir()).glob("plmtune-train-*"))  # failed runs leave no scratch folder


NOTEBOOK = r"""
import json, sys
import plmtune
clf = plmtune.load(sys.argv[1])
print(json.dumps({"labels": clf.predict(json.loads(sys.argv[2])), "probs": clf.predict_proba(json.loads(sys.argv[2])).tolist()}))
"""


@pytest.mark.slow
def test_the_notebook_path_dataframe_train_predict_save_reload(tmp_path):
    import pandas as pd

    source = shared_dataset("sst2")
    rows = _rows(source, "train")[:2000]
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    train = pd.DataFrame(pos[:16] + neg[:16])
    dev = pd.DataFrame(pos[16:32] + neg[16:32])
    test = pd.DataFrame(_rows(source, "dev")[:200])
    run = plmtune.train("baseline", train=train, dev=dev, test=test, epochs=4, seed=13)
    assert run.metrics["n"] == 200
    texts = test["text"].tolist()[:50]
    preds, probs = run.predict(texts), run.predict_proba(texts)
    run.save(tmp_path / "model")
    out = subprocess.run([sys.executable, "-c", NOTEBOOK, str(tmp_path / "model"), json.dumps(texts)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert again["labels"] == preds
    assert np.abs(np.array(again["probs"]) - probs).max() < 1e-6
    assert run.evaluate(test) == pytest.approx(run.metrics)
