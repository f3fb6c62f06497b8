"""The saved-model format (plmtune.saved): every head kind round-trips; transformers loads exactly or refuses.

Mechanics on tiny models built from configs (BERT, RoBERTa, MPNet) with the real tokenizer; the
real-model, fresh-process routes are in tests/test_classifier.py.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
import torch

from plmtune import load
from plmtune.assemble import prepare
from plmtune.data import load_task
from plmtune.errors import PlmtuneError
from plmtune.loading import load_recipe
from plmtune.models import SequenceClassifier
from plmtune.saved import EPS, META, model_meta, save_model

REPO = Path(__file__).resolve().parents[1]


def _prepared(recipe_name, task_dir, overrides=(), seed=0):
    recipe = load_recipe(recipe_name, list(overrides))
    task = load_task(task_dir, recipe.data)
    prepared = prepare(recipe, task, seed)
    with torch.no_grad():  # a trained-looking head: not the zero-mean init, so a lost head shows
        for p in prepared.model.parameters():
            if p.requires_grad and p.dim() == 2 and p.shape[0] < 10:
                p.add_(torch.randn_like(p) * 0.5)
    return prepared


def _logits(model, prepared, split="test"):
    model.eval()
    loader = prepared.eval_loader(split)
    out = {}
    with torch.no_grad():
        for batch in loader:
            for i, row in zip(batch["index"].tolist(), model(**batch)["logits"]):
                out[i] = row
    return torch.stack([out[i] for i in sorted(out)])


def test_the_version_is_the_package_metadata_version():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    import plmtune

    assert plmtune.__version__ == meta["project"]["version"]


@pytest.mark.parametrize("recipe,overrides", [
    ("baseline", []),  # mean pooling
    ("baseline", ["model.pooling=cls"]),
    ("pooling_cnn", []),
    ("pooling_concat_cls", ["model.pooling_layers=2"]),
    ("adapters", []),
    ("lora", []),
    ("prompt", ['techniques=[{name: prompt, template: "{text} It was {mask}.", label_words: [bad, good]}]']),
])
def test_every_head_round_trips_to_the_same_logits(recipe, overrides, toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    prepared = _prepared(recipe, toy_task, overrides)
    expected = _logits(prepared.model, prepared)
    notes = prepared.save(prepared.model, tmp_path / "model")
    clf = load(tmp_path / "model")
    rows = prepared.task.splits["test"]
    got = clf.logits([dict(r) for r in rows])
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert clf.labels == ["0", "1"]
    meta = json.loads((tmp_path / "model" / META).read_text())
    assert meta["transformers"]["exportable"] == notes["exportable"]
    # a plmtune model folder is also a backbone (its encoder, LoRA merged): it loads as one
    from plmtune.models import load_backbone

    _, encoder = load_backbone(str(tmp_path / "model"))
    assert type(encoder).__name__ == "BertModel"


def test_lora_is_merged_into_the_saved_encoder(toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    prepared = _prepared("lora", toy_task)
    encoder = prepared.model.encoder
    with torch.no_grad():  # a non-zero update, so merging changes the weights
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = _logits(prepared.model, prepared)
    prepared.save(prepared.model, tmp_path / "model")
    assert "lora_B" in " ".join(n for n, _ in prepared.model.named_parameters())  # the trained model is untouched
    clf = load(tmp_path / "model")
    assert not any("lora" in n for n, _ in clf.model.named_parameters())
    assert torch.allclose(clf.logits(prepared.task.splits["test"]), expected, atol=1e-5)


def test_adapters_are_kept_in_the_saved_model(toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    prepared = _prepared("adapters", toy_task)
    with torch.no_grad():
        for name, p in prepared.model.named_parameters():
            if name.startswith("adapters."):
                p.normal_(0, 0.5)
    expected = _logits(prepared.model, prepared)
    prepared.save(prepared.model, tmp_path / "model")
    clf = load(tmp_path / "model")
    assert any(n.startswith("adapters.") for n, _ in clf.model.named_parameters())
    assert torch.allclose(clf.logits(prepared.task.splits["test"]), expected, atol=1e-5)


def test_a_cls_head_is_a_transformers_classifier_with_the_same_predictions(toy_task, tmp_path, tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    tiny_backbone()
    prepared = _prepared("baseline", toy_task, ["model.pooling=cls"])
    expected = _logits(prepared.model, prepared)
    notes = prepared.save(prepared.model, tmp_path / "model")
    assert notes["exportable"] and notes["architecture"] == "BertForSequenceClassification"
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert hf.config.id2label == {0: "0", 1: "1"}
    with torch.no_grad():
        rows = {}
        for batch in prepared.eval_loader("test"):
            logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rows.update(zip(batch["index"].tolist(), logits))
        got = torch.stack([rows[i] for i in sorted(rows)])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert torch.equal(got.argmax(1), expected.argmax(1))


def _tiny_encoder(kind):
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=80)
    if kind == "bert":
        return BertModel(BertConfig(**common), add_pooling_layer=False)
    if kind == "roberta":
        return RobertaModel(RobertaConfig(**common, pad_token_id=0), add_pooling_layer=False)
    return MPNetModel(MPNetConfig(**common, pad_token_id=0), add_pooling_layer=False)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_cls_heads_export_exactly_on_bert_roberta_and_mpnet(kind, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from plmtune.technique import TrainContext

    recipe = load_recipe("baseline", ["model.pooling=cls"])
    model = SequenceClassifier(_tiny_encoder(kind), 3, "cls", 0.1).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 1.0)
    meta = model_meta(TrainContext(recipe=recipe, seed=0, num_labels=3, task_name="t"), ["a", "b", "c"], False)
    notes = save_model(model, tokenizer, recipe, meta, tmp_path / "m")
    assert notes["exportable"], notes["reason"]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    enc = tokenizer(["a first sentence", "and a second, longer one with padding"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"]
        theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert (ours - theirs).abs().max() < 1e-4 * max(1.0, float(ours.abs().max()))
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert EPS < 1e-3  # the identity-dense trick is only exact for a small scale


def test_a_head_transformers_cannot_express_is_refused_not_randomised(toy_task, tmp_path, tiny_backbone):
    from transformers import AutoModelForSequenceClassification, pipeline

    tiny_backbone()
    prepared = _prepared("baseline", toy_task)  # mean pooling
    notes = prepared.save(prepared.model, tmp_path / "model")
    assert not notes["exportable"] and "mean" in notes["reason"]
    assert not (tmp_path / "model" / "config.json").exists()
    with pytest.raises((OSError, ValueError)):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    with pytest.raises((OSError, ValueError)):
        pipeline("text-classification", model=str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text()
    assert "mean" in card and "plmtune.load" in card


def test_a_save_replaces_the_old_model_only_when_complete_and_files_are_readable(toy_task, tmp_path, tiny_backbone,
                                                                                monkeypatch):
    tiny_backbone()
    prepared = _prepared("baseline", toy_task)
    prepared.save(prepared.model, tmp_path / "model")
    before = (tmp_path / "model" / "head.safetensors").read_bytes()
    mode = stat.S_IMODE(os.stat(tmp_path / "model" / "head.safetensors").st_mode)
    assert mode & 0o044 == 0o044 & ~_umask()  # group/other may read, as with any file open() writes

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with torch.no_grad():
        prepared.model.classifier.weight.add_(1.0)
    with pytest.raises(PlmtuneError, match="No space left on device.*Nothing partial"):
        prepared.save(prepared.model, tmp_path / "model")
    assert (tmp_path / "model" / "head.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "toy"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def saved(toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    prepared = _prepared("baseline", toy_task)
    prepared.save(prepared.model, tmp_path / "model")
    return tmp_path / "model"


def _edit_meta(folder, **changes):
    path = folder / META
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("changes,message", [
    ({"encoder": "../../etc"}, r"field 'encoder' must be '\.' or 'encoder'"),
    ({"format": "pickle"}, r"field 'format' must be 'plmtune-model'"),
    ({"version": 99}, r"field 'version' is 99"),
    ({"label_names": ["only one"]}, r"field 'label_names' must list 2 distinct strings"),
    ({"label_names": ["a", "a"]}, r"field 'label_names' must list 2 distinct strings"),
    ({"seed": "x"}, r"field 'seed' is missing or not a int"),
    ({"is_pair": "no"}, r"field 'is_pair' is missing or not a bool"),
    ({"num_labels": 3, "label_names": ["a", "b", "c"]}, r"head\.safetensors does not fit the model"),
    ({"recipe": {"techniques": [{"name": "inject", "id_field": "eid", "embeddings": "/etc/passwd"}]}},
     r"cannot load from its folder: its technique 'inject' reads inject\.embeddings \(/etc/passwd\)"),
    ({"recipe": {"train": {"lr": "fast"}}}, r"field 'recipe' is not a valid recipe"),
    ({"num_labels": "2"}, r"field 'num_labels' is missing or not a int"),
])
def test_a_hostile_or_broken_description_is_refused_with_file_and_field(saved, changes, message):
    _edit_meta(saved, **changes)
    with pytest.raises(PlmtuneError, match=message) as info:
        load(saved)
    assert str(saved) in str(info.value) and "\n" not in str(info.value)  # names the file (in the folder)


def test_broken_weights_are_refused_and_never_unpickled(saved, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (saved / "head.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(PlmtuneError, match=r"head\.safetensors"):
        load(saved)
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_the_description_are_refused(saved):
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(2, 32), "surprise": torch.zeros(1)}, str(saved / "head.safetensors"))
    with pytest.raises(PlmtuneError, match=r"does not fit the model.*missing classifier\.bias.*unexpected surprise"):
        load(saved)


def test_a_link_out_of_the_folder_is_refused(saved, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (saved / "head.safetensors").rename(outside)
    (saved / "head.safetensors").symlink_to(outside)
    with pytest.raises(PlmtuneError, match=r"is a link to .*elsewhere\.safetensors, outside the model folder"):
        load(saved)


def test_saving_never_replaces_what_plmtune_did_not_write(saved, tmp_path):
    clf = load(saved)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(PlmtuneError, match="already holds files plmtune did not write"):
        clf.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(PlmtuneError, match="is a file"):
        clf.save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "precious"
    clf.save(tmp_path / "copy")
    clf.save(tmp_path / "copy")  # a folder plmtune wrote is replaced
    assert load(tmp_path / "copy").labels == clf.labels


def test_the_saved_tokenizer_cuts_where_training_did(saved_toy_model):
    from transformers import AutoTokenizer

    folder, _ = saved_toy_model(["model.pooling=cls", "data.max_length=16"], name="cls16")
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 16
    folder, _ = saved_toy_model(["model.pooling=cls", "data.truncation=head_tail", "data.head_tokens=4"], name="ht")
    meta = json.loads((folder / META).read_text())["transformers"]
    assert not meta["exportable"] and "head_tail" in meta["reason"]


def test_a_model_that_reads_a_table_file_to_predict_is_refused_before_training(toy_task, tmp_path, tiny_backbone):
    from plmtune.errors import RecipeError
    from plmtune.run import run_recipe

    tiny_backbone()
    (tmp_path / "emb.jsonl").write_text('{"id": "1", "vector": [1.0]}\n')
    recipe = load_recipe("baseline", ['techniques=[{name: inject, id_field: eid, embeddings: "%s"}]' % (tmp_path / "emb.jsonl")])
    with pytest.raises(RecipeError, match="--save-model: the model could not be saved.*inject.embeddings"):
        run_recipe(recipe, toy_task, tmp_path / "run", save_model=True)
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_not_a_plmtune_model_gets_a_clear_error(tmp_path):
    with pytest.raises(PlmtuneError, match="does not exist"):
        load(tmp_path / "nothing")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(PlmtuneError, match="not a plmtune model.*plain transformers model"):
        load(tmp_path / "hf")
