from __future__ import annotations

import pytest
import torch

from plmtune.loading import build_recipe, load_recipe
from plmtune.errors import DataError, RecipeError
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import TrainContext
from plmtune.techniques.inject import FeatureClassifier, Inject, InjectConfig, read_embeddings


def _rows(*fields):
    return {"train": [{"text": "x", "label": i % 2, "source": f"train.jsonl:{i + 1}", "fields": f}
                      for i, f in enumerate(fields)]}


def _ctx():
    return TrainContext(recipe=load_recipe("baseline"), seed=0)


def test_vectors_from_a_field_reach_the_model_at_the_head():
    ctx = _ctx()
    technique = Inject(InjectConfig(field="kg"))
    splits = technique.prepare_data(_rows({"kg": [1, 2, 3]}, {"kg": [0, 0, 1.5]}), ctx)
    assert splits["train"][1]["features"] == [0.0, 0.0, 1.5] and ctx.extras["feature_dim"] == 3
    model = technique.prepare_model(SequenceClassifier(tiny_bert(vocab_size=50), 2), ctx)
    assert model.classifier.in_features == 32 + 3


def test_vectors_by_id_from_jsonl_and_text_files(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"id": "a", "vector": [1, 2]}\n{"id": 7, "vector": [3, 4]}\n')
    (tmp_path / "e.txt").write_text("a 1 2\n7 3 4\n")
    assert read_embeddings(tmp_path / "e.jsonl") == read_embeddings(tmp_path / "e.txt") == {
        "a": [1.0, 2.0], "7": [3.0, 4.0]}
    technique = Inject(InjectConfig(id_field="entity", embeddings=str(tmp_path / "e.txt"), at="input"))
    splits = technique.prepare_data(_rows({"entity": 7}, {"entity": "a"}), _ctx())
    assert [r["features"] for r in splits["train"]] == [[3.0, 4.0], [1.0, 2.0]]
    zero = Inject(InjectConfig(id_field="entity", embeddings=str(tmp_path / "e.txt"), missing="zero"))
    assert zero.prepare_data(_rows({"entity": "nope"}), _ctx())["train"][0]["features"] == [0.0, 0.0]


@pytest.mark.parametrize(("fields", "message"), [
    (({"kg": [1, 2]}, {}), r"train.jsonl, line 2, field 'kg': missing field"),
    (({"kg": [1, 2]}, {"kg": [1]}), r"line 2, field 'kg': vector of width 1; the others have 2"),
    (({"kg": [1, "x"]},), r"line 1, field 'kg': must be a non-empty list of finite numbers"),
    (({"kg": [float("nan")]},), "finite numbers"),
])
def test_bad_vectors_name_file_line_and_field(fields, message):
    with pytest.raises(DataError, match=message):
        Inject(InjectConfig(field="kg")).prepare_data(_rows(*fields), _ctx())


def test_unknown_id_and_half_configured_lookup(tmp_path):
    (tmp_path / "e.txt").write_text("a 1 2\n")
    with pytest.raises(DataError, match=r"line 1, field 'entity': id 'b' is not in"):
        Inject(InjectConfig(id_field="entity", embeddings=str(tmp_path / "e.txt"))).prepare_data(
            _rows({"entity": "b"}), _ctx())
    with pytest.raises(RecipeError, match="set both id_field and embeddings"):
        build_recipe({"techniques": [{"name": "inject", "id_field": "entity"}]})


def test_input_injection_changes_predictions_once_trained():
    ctx = _ctx()
    technique = Inject(InjectConfig(field="kg", at="input"))
    technique.prepare_data(_rows({"kg": [1.0, -1.0]}), ctx)
    model = technique.prepare_model(SequenceClassifier(tiny_bert(vocab_size=50, dropout=0.0), 2, dropout=0.0), ctx)
    ids = torch.randint(5, 50, (2, 4))
    feats = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), features=feats)
    out["logits"].sum().backward()
    assert model.feature_projection.weight.grad.abs().sum() > 0


def test_feature_classifier_at_head_widen_the_classifier_and_at_input_start_as_identity():
    ids = torch.randint(5, 100, (2, 5))
    mask = torch.ones_like(ids)
    feats = torch.randn(2, 3)
    model = SequenceClassifier(tiny_bert(vocab_size=100, dropout=0.0), 2, dropout=0.0).eval()
    plain = model(input_ids=ids, attention_mask=mask)["logits"]
    model = FeatureClassifier(model, 3, "input")
    assert torch.allclose(model(input_ids=ids, attention_mask=mask, features=feats)["logits"], plain, atol=1e-6)
    with torch.no_grad():
        model.feature_projection.weight.normal_()
    assert not torch.allclose(model(input_ids=ids, attention_mask=mask, features=feats)["logits"], plain)
    head = SequenceClassifier(tiny_bert(vocab_size=100, dropout=0.0), 2, dropout=0.0).eval()
    head = FeatureClassifier(head, 3, "head")
    out = head(input_ids=ids, attention_mask=mask, features=feats)
    assert out["pooled"].shape == (2, 32 + 3) and torch.equal(out["pooled"][:, -3:], feats)
