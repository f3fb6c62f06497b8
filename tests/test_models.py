from __future__ import annotations

import pytest
import torch

from plmtune.errors import PlmtuneError
from plmtune.models import SequenceClassifier, count_parameters, load_backbone, pool, resolve_backbone, tiny_bert


def test_minilm_alias_resolves_to_the_bundled_model():
    path = resolve_backbone("minilm")
    assert path.endswith("model")
    tok, encoder = load_backbone("minilm")
    assert encoder.config.num_hidden_layers == 6 and encoder.config.hidden_size == 384
    assert encoder.pooler is None  # our head pools; the unused pooler is dropped
    assert 22_000_000 < sum(p.numel() for p in encoder.parameters()) < 22_800_000


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(PlmtuneError, match="no config.json"):
        resolve_backbone(str(tmp_path))


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0]]


def test_saved_model_loads_back_as_a_backbone(tmp_path, tokenizer):
    model = SequenceClassifier(tiny_bert(vocab_size=30522), num_labels=3)
    model.save(tmp_path / "m", tokenizer)
    _, encoder = load_backbone(str(tmp_path / "m"))
    for (name, a), b in zip(model.encoder.state_dict().items(), encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "m" / "head.safetensors").is_file()


def test_parameter_counts(tiny_model):
    counts = count_parameters(tiny_model)
    for p in tiny_model.encoder.parameters():
        p.requires_grad_(False)
    frozen = count_parameters(tiny_model)
    assert counts["trainable"] == counts["total"] == frozen["total"]
    assert frozen["trainable"] == 32 * 2 + 2


def test_concat_cls_pooling_concatenates_the_top_layers_cls_states():
    encoder = tiny_bert(num_layers=3, hidden=32, vocab_size=100, dropout=0.0)
    model = SequenceClassifier(encoder, 2, pooling="concat_cls", pooling_layers=2, dropout=0.0).eval()
    ids = torch.randint(5, 100, (3, 7))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    expected = torch.cat([hidden[-2][:, 0], hidden[-1][:, 0]], dim=-1)
    assert out["pooled"].shape == (3, 64) and torch.allclose(out["pooled"], expected, atol=1e-6)
    assert model.classifier.in_features == 64


def test_cnn_pooling_mixes_all_layers_and_trains():
    model = SequenceClassifier(tiny_bert(num_layers=3, hidden=32, vocab_size=100), 2, pooling="cnn")
    ids = torch.randint(5, 100, (4, 6))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out["pooled"].shape == (4, 32) and (out["pooled"] >= 0).all()  # ReLU then max
    out["logits"].sum().backward()
    assert model.pooler.conv.weight.grad.abs().sum() > 0


def test_pooling_layers_beyond_the_encoder_is_an_error():
    with pytest.raises(PlmtuneError, match="pooling_layers = 9"):
        SequenceClassifier(tiny_bert(num_layers=2), 2, pooling="concat_cls", pooling_layers=9)


def test_features_at_head_widen_the_classifier_and_at_input_start_as_identity():
    ids = torch.randint(5, 100, (2, 5))
    mask = torch.ones_like(ids)
    feats = torch.randn(2, 3)
    model = SequenceClassifier(tiny_bert(vocab_size=100, dropout=0.0), 2, dropout=0.0).eval()
    plain = model(input_ids=ids, attention_mask=mask)["logits"]
    model.enable_features(3, "input")
    assert torch.allclose(model(input_ids=ids, attention_mask=mask, features=feats)["logits"], plain, atol=1e-6)
    with torch.no_grad():
        model.feature_projection.weight.normal_()
    assert not torch.allclose(model(input_ids=ids, attention_mask=mask, features=feats)["logits"], plain)
    head = SequenceClassifier(tiny_bert(vocab_size=100, dropout=0.0), 2, dropout=0.0).eval()
    head.enable_features(3, "head")
    out = head(input_ids=ids, attention_mask=mask, features=feats)
    assert out["pooled"].shape == (2, 32 + 3) and torch.equal(out["pooled"][:, -3:], feats)
