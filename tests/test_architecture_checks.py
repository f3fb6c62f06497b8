"""`plmtune validate` (and `run`, before any model loads) refuses a technique on an architecture it cannot work on.

The check builds the backbone from its config.json alone, on the meta device: these backbone folders
hold nothing but a config.json, so any attempt to load weights or a tokenizer would fail.
"""

from __future__ import annotations

import pytest

from plmtune.cli import main
from plmtune.errors import RecipeError
from plmtune.loading import build_recipe, check_requirements, load_recipe
from plmtune.techniques import list_techniques

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 99}
NEEDS = {"inject": {"field": "kg"},
         "prompt": {"template": "{text} It was {mask} .", "label_words": ["bad", "good"]}}


@pytest.fixture
def config_only(tmp_path, monkeypatch):
    """A backbone folder of a model type holding only its config.json; loading a model is made to fail."""
    from transformers import AutoConfig

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("plmtune.models.load_backbone", refuse)
    monkeypatch.setattr("transformers.AutoModel.from_pretrained", refuse)

    def make(model_type: str, **extra) -> str:
        folder = tmp_path / model_type
        options = {"albert": {"embedding_size": 16}, "distilbert": {"dim": 32, "n_layers": 3, "n_heads": 2,
                                                                    "hidden_dim": 64}}.get(model_type, {})
        AutoConfig.for_model(model_type, **TINY, **options, **extra).save_pretrained(folder)
        return str(folder)

    return make


def _check(backbone: str, *techniques: dict) -> None:
    check_requirements(build_recipe({"model": {"backbone": backbone}, "techniques": list(techniques)}))


@pytest.mark.parametrize("arch", ["bert", "mpnet", "roberta"])
@pytest.mark.parametrize("name", list_techniques())
def test_every_technique_accepts_bert_mpnet_and_roberta(config_only, arch, name):
    _check(config_only(arch), {"name": name, **NEEDS.get(name, {})})


@pytest.mark.parametrize("technique", [{"name": "llrd"}, {"name": "gradual_unfreeze"}, {"name": "reinit"},
                                       {"name": "child_tuning", "mode": "D"}])
def test_per_layer_techniques_refuse_albert_whose_layers_share_weights(config_only, technique):
    with pytest.raises(RecipeError, match=rf"techniques\[0\] on backbone .*albert.*: {technique['name']}.* works "
                                          r"layer by layer, but backbone type 'albert' .* has no parameters in 3 "
                                          r"numbered layers") as caught:
        _check(config_only("albert"), technique)
    assert "\n" not in str(caught.value)
    _check(config_only("albert"), {"name": "child_tuning", "mode": "F"})  # F masks every parameter: fine


def test_adapters_refuse_places_a_layer_does_not_have_and_take_the_layer_output_anywhere(config_only):
    distilbert = config_only("distilbert")
    with pytest.raises(RecipeError, match=r"adapters: backbone type 'distilbert' .* has no module "
                                          r"'attention.output.dropout' in its layers .*places: \[layer\]"):
        _check(distilbert, {"name": "adapters"})
    _check(distilbert, {"name": "adapters", "places": ["layer"]})


def test_lora_refuses_target_modules_the_architecture_has_not(config_only):
    mpnet = config_only("mpnet")
    with pytest.raises(RecipeError, match=r"lora.target_modules \['query', 'value'\]: 'query', 'value' are no linear "
                                          r"layers of backbone type 'mpnet' \(MPNetModel\), whose linear layers are "
                                          r"named dense, k, o, q, v"):
        _check(mpnet, {"name": "lora", "target_modules": ["query", "value"]})
    _check(mpnet, {"name": "lora", "target_modules": ["q", "k", "v", "o"]})
    with pytest.raises(RecipeError, match="no default target_modules for backbone type 'distilbert'"):
        _check(config_only("distilbert"), {"name": "lora"})
    _check(config_only("distilbert"), {"name": "lora", "target_modules": ["q_lin", "v_lin"]})


def test_reinit_of_more_layers_than_the_backbone_has_is_refused(config_only):
    with pytest.raises(RecipeError, match=r"reinit.layers = 4, but backbone type 'roberta' has only 3 layers"):
        _check(config_only("roberta"), {"name": "reinit", "layers": 4})


def test_plmtune_validate_says_so_before_any_model_loads(config_only, capsys):
    albert = config_only("albert")
    assert main(["validate", "llrd", "--set", f"model.backbone={albert}"]) == 2
    err = capsys.readouterr().err
    assert "llrd: INVALID: techniques[0] on backbone" in err and "backbone type 'albert'" in err
    assert main(["validate", "baseline", "--set", f"model.backbone={albert}"]) == 0


def test_a_recipe_without_architecture_checks_builds_no_skeleton(monkeypatch):
    def refuse(name):
        raise AssertionError("a skeleton was built")

    monkeypatch.setattr("plmtune.loading.backbone_skeleton", refuse)
    check_requirements(load_recipe("baseline", ["techniques=[ema, rdrop]"]))


def test_a_backbone_that_cannot_be_resolved_is_left_to_the_load(tmp_path):
    from plmtune.loading import backbone_skeleton

    assert backbone_skeleton(str(tmp_path / "absent")) is None
    assert backbone_skeleton("someone/some-hub-model") is None
