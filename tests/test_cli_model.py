"""plmtune predict / evaluate / export on a saved tiny model (the real model's routes: tests/test_classifier.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from plmtune import load
from plmtune.cli import main


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_predict_writes_labels_probabilities_and_the_input_columns(saved_toy_model, write_jsonl, tmp_path, capsys):
    folder, _ = saved_toy_model()
    source = write_jsonl("in.jsonl", [{"id": 7, "text": "good great film"}, {"id": 8, "text": "bad awful meal"}])
    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path / "p.jsonl")]) == 0
    rows = _jsonl(tmp_path / "p.jsonl")
    clf = load(folder)
    probs = clf.predict_proba(["good great film", "bad awful meal"])
    assert [r["id"] for r in rows] == [7, 8]
    assert [r["label"] for r in rows] == [clf.labels[i] for i in probs.argmax(1)]
    assert np.allclose([[r["probs"][n] for n in clf.labels] for r in rows], probs, atol=1e-6)
    assert "Predicted 2 rows" in capsys.readouterr().err

    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path / "p.tsv")]) == 0
    with open(tmp_path / "p.tsv", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert list(table[0]) == ["id", "text", "label", "p_0", "p_1"]
    assert [r["label"] for r in table] == [r["label"] for r in rows]


def test_predict_keeps_the_gold_label_under_its_field_name_and_adds_nothing_without_one(
        saved_toy_model, toy_task, write_jsonl, tmp_path):
    task = tmp_path / "y_task"
    for split in ("train", "dev", "test"):
        rows = _jsonl(toy_task / f"{split}.jsonl")
        write_jsonl(f"{split}.jsonl", [{"text": r["text"], "y": r["label"]} for r in rows], task)
    folder, _ = saved_toy_model(["data.label_field=y"], task=task, name="y")
    source = write_jsonl("gold.jsonl", [{"text": "good great film", "y": 1}, {"text": "bad awful meal"}])
    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path / "g.jsonl")]) == 0
    rows = _jsonl(tmp_path / "g.jsonl")
    assert list(rows[0]) == ["text", "y", "label", "probs"] and rows[0]["y"] == 1  # gold beside the prediction
    assert list(rows[1]) == ["text", "label", "probs"]  # a row without one gets none
    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path / "g.csv")]) == 0
    with open(tmp_path / "g.csv", newline="") as f:
        assert [r["y"] for r in csv.DictReader(f)] == ["1", ""]
    plain, _ = saved_toy_model()
    source = write_jsonl("plain.jsonl", [{"id": 1, "text": "good great film"}])
    assert main(["predict", str(plain), "--input", str(source), "--out", str(tmp_path / "n.jsonl")]) == 0
    assert list(_jsonl(tmp_path / "n.jsonl")[0]) == ["id", "text", "label", "probs"]  # as before: no gold, none added


def test_predict_reads_text_lines_and_standard_input(saved_toy_model, tmp_path, monkeypatch, capsys):
    folder, _ = saved_toy_model()
    (tmp_path / "in.txt").write_text("good great film\n\nbad awful meal\n")
    assert main(["predict", str(folder), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert [r["text"] for r in _jsonl(tmp_path / "a.jsonl")] == ["good great film", "bad awful meal"]
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("good great film\nbad awful meal\n"))
    assert main(["predict", str(folder), "--input", "-", "--format", "txt", "--out", "-"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in out] == [r["label"] for r in _jsonl(tmp_path / "a.jsonl")]


def test_predict_on_bad_input_exits_2_with_one_paragraph_and_writes_nothing(saved_toy_model, write_jsonl, tmp_path,
                                                                            capsys):
    folder, _ = saved_toy_model()
    out = tmp_path / "p.jsonl"
    out.write_text("an older file\n")
    source = write_jsonl("in.jsonl", [{"text": "fine"}, {"sentence": "wrong field"}])
    assert main(["predict", str(folder), "--input", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "in.jsonl, line 2, field 'text'" in err and len(err.splitlines()) == 1
    assert out.read_text() == "an older file\n"  # untouched
    assert main(["predict", str(folder), "--input", str(tmp_path / "absent.jsonl"), "--out", str(out)]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nomodel"), "--input", str(source), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path)]) == 2


def test_evaluate_prints_and_writes_the_metrics(saved_toy_model, tmp_path, capsys):
    folder, task = saved_toy_model()
    assert main(["evaluate", str(folder), "--data", str(task), "--out", str(tmp_path / "m.json")]) == 0
    line = capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics == {**load(folder).evaluate(task), "model": str(folder), "data": str(task), "split": "test"}
    assert f"accuracy {metrics['accuracy']:.4f}" in line
    assert main(["evaluate", str(folder), "--data", str(task), "--split", "validation"]) == 2


def test_export_to_transformers_refuses_a_mean_pooled_model_and_copies_a_cls_one(saved_toy_model, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    mean, _ = saved_toy_model(name="mean")
    assert main(["export", str(mean), "--to", "transformers", "--out", str(tmp_path / "hf1")]) == 2
    assert "pools with 'mean'" in capsys.readouterr().err
    assert not (tmp_path / "hf1").exists()
    cls, _ = saved_toy_model(["model.pooling=cls"], name="cls")
    assert main(["export", str(cls), "--to", "transformers", "--out", str(tmp_path / "hf2")]) == 0
    assert not (tmp_path / "hf2" / "plmtune.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf2")
    assert model.config.id2label == {0: "0", 1: "1"}


def test_export_to_onnx_checks_onnx_runtime_against_torch(saved_toy_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="plmtune[export] (onnxruntime) is part of setup.sh")
    from plmtune.export import onnx_predict_proba

    folder, _ = saved_toy_model()
    assert main(["export", str(folder), "--to", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    notes = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert notes["max_difference"] <= notes["tolerance"] and notes["label_names"] == ["0", "1"]
    texts = ["good great film", "a much longer text, about a bad awful meal in a hotel, to change the length"]
    assert np.abs(onnx_predict_proba(tmp_path / "onnx", texts) - load(folder).predict_proba(texts)).max() < 1e-4


def test_onnx_helper_refuses_inputs_it_cannot_prepare(saved_toy_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from plmtune.errors import PlmtuneError
    from plmtune.export import onnx_predict_proba

    folder, _ = saved_toy_model()
    load(folder).export_onnx(tmp_path / "onnx")
    with pytest.raises(PlmtuneError, match="classifies single texts"):
        onnx_predict_proba(tmp_path / "onnx", [("a", "b")])
    notes = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    notes["prepared_by"] = ["prompt"]
    (tmp_path / "onnx" / "onnx.json").write_text(json.dumps(notes))
    with pytest.raises(PlmtuneError, match="its inputs go through prompt first"):
        onnx_predict_proba(tmp_path / "onnx", ["a"])


def test_export_refuses_a_failed_onnx_check_and_leaves_nothing(saved_toy_model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from plmtune.errors import PlmtuneError

    folder, _ = saved_toy_model()
    monkeypatch.setattr("plmtune.export.onnx_difference", lambda *a: 0.5)
    with pytest.raises(PlmtuneError, match="differ from torch's by 0.5"):
        load(folder).export_onnx(tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx*"))


class LocalHub:
    """A stand-in for huggingface_hub.HfApi: a repo is a local folder."""

    def __init__(self, root):
        self.root, self.calls = Path(root), []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, folder_path, repo_id, commit_message="", delete_patterns=None):
        self.calls.append(("upload_folder", repo_id, commit_message))
        if delete_patterns == "*":  # huggingface_hub: remote files matching it and not uploaded now are deleted
            shutil.rmtree(self.root / repo_id)
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return type("Info", (), {"commit_url": f"local://{repo_id}"})()


def test_push_to_hub_uploads_a_loadable_model(saved_toy_model, tmp_path):
    folder, _ = saved_toy_model()
    hub = LocalHub(tmp_path / "hub")
    clf = load(folder)
    assert clf.push_to_hub("me/toy", private=True, api=hub) == "local://me/toy"
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"] and hub.calls[0][2] is True
    texts = ["good great film", "bad"]
    assert np.allclose(load(tmp_path / "hub" / "me" / "toy").predict_proba(texts), clf.predict_proba(texts), atol=1e-6)


def test_a_second_push_leaves_no_file_of_the_first_model(saved_toy_model, tmp_path):
    cls, _ = saved_toy_model(["model.pooling=cls"], name="cls")
    mean, _ = saved_toy_model(name="mean")
    hub = LocalHub(tmp_path / "hub")
    load(cls).push_to_hub("me/m", api=hub)
    assert (tmp_path / "hub" / "me" / "m" / "config.json").is_file()
    load(mean).push_to_hub("me/m", api=hub)
    assert not (tmp_path / "hub" / "me" / "m" / "config.json").exists()  # transformers must not find the old head


def test_predict_names_standard_input_keeps_colliding_columns_and_splits_only_real_lines(
        saved_toy_model, write_jsonl, tmp_path, monkeypatch, capsys):
    folder, _ = saved_toy_model()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "ok"}\n{"nope": 1}\n')))
    assert main(["predict", str(folder), "--input", "-", "--out", "-"]) == 2
    err = capsys.readouterr().err
    assert "Bad data in standard input, line 2, field 'text'" in err and "plmtune-predict-" not in err
    source = write_jsonl("in.jsonl", [{"text": "good", "label": "gold", "p_0": 5}, {"text": "bad", "extra": 1}])
    assert main(["predict", str(folder), "--input", str(source), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # every other column is carried, the gold label (the recipe's field 'label') too, renamed where ours collide
    assert list(table[0]) == ["input_p_0", "text", "input_label", "extra", "label", "p_0", "p_1"]
    assert table[0]["input_p_0"] == "5" and table[1]["extra"] == "1"
    assert table[0]["input_label"] == "gold" and table[1]["input_label"] == ""  # row 2 had none
    (tmp_path / "in.txt").write_text("one\u2028still one\ftoo\ntwo\n", encoding="utf-8")
    assert main(["predict", str(folder), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "t.jsonl")]) == 0
    assert len(_jsonl(tmp_path / "t.jsonl")) == 2


def test_evaluate_takes_ids_for_a_model_with_class_names_and_writes_into_a_new_folder(
        saved_toy_model, toy_task, tmp_path, capsys):
    folder, _ = saved_toy_model(["data.label_names=[neg, pos]"], name="named")
    assert load(folder).labels == ["neg", "pos"]
    out = tmp_path / "new" / "dir" / "m.json"
    assert main(["evaluate", str(folder), "--data", str(toy_task), "--out", str(out)]) == 0  # its 0/1 labels
    assert json.loads(out.read_text())["n"] == 16


def test_export_never_replaces_its_source_or_a_foreign_folder(saved_toy_model, tmp_path, capsys):
    cls, _ = saved_toy_model(["model.pooling=cls"], name="cls")
    assert main(["export", str(cls), "--to", "transformers", "--out", str(cls)]) == 2
    assert "holds the model being exported" in capsys.readouterr().err
    assert load(cls).labels == ["0", "1"]  # untouched
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main(["export", str(cls), "--to", "transformers", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "keep.txt").read_text() == "x"


def test_push_to_hub_offline_is_one_clear_paragraph(saved_toy_model, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _ = saved_toy_model()
    assert main(["export", str(folder), "--to", "hub", "--repo", "me/toy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Could not upload to the Hub repo me/toy" in err and len(err.splitlines()) == 1
