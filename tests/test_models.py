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


def _save(model, tokenizer, directory):
    """plmtune.saved.save_model for a bare classifier (what --save-model writes)."""
    from plmtune.loading import load_recipe
    from plmtune.saved import model_meta, save_model
    from plmtune.technique import TrainContext

    recipe = load_recipe("baseline")
    ctx = TrainContext(recipe=recipe, seed=0, num_labels=model.num_labels, task_name="t")
    return save_model(model, tokenizer, recipe, model_meta(ctx, None, False), directory)


def test_saved_model_loads_back_as_a_backbone(tmp_path, tokenizer):
    model = SequenceClassifier(tiny_bert(vocab_size=30522), num_labels=3, pooling="mean")
    _save(model, tokenizer, tmp_path / "m")
    _, encoder = load_backbone(str(tmp_path / "m"))  # a plmtune model folder: its encoder
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


@pytest.mark.parametrize("name", ["./bb/nope", "../nope", "/no/such/dir", "~/no-such-dir-plmtune", "a/b/c"])
def test_a_missing_path_is_not_taken_for_a_hub_name(name):
    with pytest.raises(PlmtuneError, match=r"Backbone path '.*' does not exist \(looked for /"):
        resolve_backbone(name)


def test_a_missing_path_below_an_existing_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bb").mkdir()
    with pytest.raises(PlmtuneError, match=r"'bb/nope' does not exist"):
        resolve_backbone("bb/nope")


@pytest.mark.parametrize("name", ["nobody/no-such-model", "bert-base-uncased",
                                  "sentence-transformers/all-MiniLM-L6-v2"])
def test_hub_names_pass_through_unchanged(name):
    assert resolve_backbone(name) == name  # loaded by transformers where the machine is online


def test_an_unknown_home_folder_is_one_paragraph():
    with pytest.raises(PlmtuneError, match=r"'~nosuchuser/x' starts with '~nosuchuser', but there is no user"):
        resolve_backbone("~nosuchuser/x")


def test_a_local_folder_resolves_to_itself_and_a_file_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    with pytest.raises(PlmtuneError, match=r"config.json is a file, not a model folder"):
        resolve_backbone(str(tmp_path / "config.json"))


def test_full_disk_while_saving_a_model_leaves_no_half_model(tmp_path, tokenizer, monkeypatch):
    """Review case O5: the model folder is complete or absent (an older one stays whole)."""
    import safetensors.torch

    from plmtune.errors import PlmtuneError

    model = SequenceClassifier(tiny_bert(vocab_size=30522), num_labels=2)
    target = tmp_path / "model"
    _save(model, tokenizer, target)
    before = {p.name: p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(PlmtuneError, match=r"Could not save the model to .*model: .*No space left.*Nothing partial"):
        _save(SequenceClassifier(tiny_bert(vocab_size=30522, seed=1), num_labels=2), tokenizer, target)
    assert {p.name: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before  # the old model, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left
    with pytest.raises(PlmtuneError):
        _save(model, tokenizer, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
