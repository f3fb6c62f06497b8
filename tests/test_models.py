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
