from __future__ import annotations

import pytest
import torch

from plmtune.errors import RecipeError
from plmtune.loading import build_recipe
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.techniques.noisytune import NoisyTuneConfig, add_noise


def _model(hidden=64):
    return SequenceClassifier(tiny_bert(num_layers=2, hidden=hidden, vocab_size=500, seed=0), num_labels=3)


def _diffs(cfg, seed=0, hidden=64):
    model = _model(hidden)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stds = add_noise(model, cfg, seed)
    after = dict(model.named_parameters())
    return {n: after[n].detach() - before[n] for n in before}, stds, before


def test_uniform_noise_is_bounded_by_half_lambda_std_and_has_the_theoretical_std():
    lam = 0.15
    diffs, stds, before = _diffs(NoisyTuneConfig(lam=lam))
    word = "encoder.embeddings.word_embeddings.weight"
    for name, std in stds.items():
        assert std == pytest.approx(before[name].std().item())
        bound = lam / 2 * std
        assert diffs[name].abs().max().item() <= bound * (1 + 1e-5) + 1e-12
    # U(-a, a) has std a/sqrt(3); 32,000 draws pin it within ~1%.
    d = diffs[word]
    expected = lam * stds[word] / 12 ** 0.5
    assert d.std().item() == pytest.approx(expected, rel=0.03)
    assert d.mean().abs().item() < 3 * expected / d.numel() ** 0.5 * 3


def test_head_is_untouched_and_one_element_tensors_skipped():
    diffs, stds, _ = _diffs(NoisyTuneConfig())
    assert not diffs["classifier.weight"].any() and not diffs["classifier.bias"].any()
    assert all(n.startswith("encoder.") for n in stds)
    assert all(diffs[n].any() for n, std in stds.items() if std > 0)  # std 0 (fresh LayerNorm): no noise


def test_same_seed_same_noise_other_seed_other_noise():
    a, _, _ = _diffs(NoisyTuneConfig(), seed=1)
    b, _, _ = _diffs(NoisyTuneConfig(), seed=1)
    c, _, _ = _diffs(NoisyTuneConfig(), seed=2)
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


def test_gaussian_variant_has_the_same_variance_and_global_scope_one_std():
    diffs, stds, _ = _diffs(NoisyTuneConfig(distribution="gaussian", lam=0.2))
    word = "encoder.embeddings.word_embeddings.weight"
    assert diffs[word].std().item() == pytest.approx(0.2 * stds[word] / 12 ** 0.5, rel=0.03)
    assert diffs[word].abs().max().item() > 0.2 / 2 * stds[word]  # unbounded, unlike the uniform
    _, stds, _ = _diffs(NoisyTuneConfig(scope="global"))
    assert len(set(stds.values())) == 1


def test_tied_weights_are_perturbed_once():
    model = _model()
    decoder = torch.nn.Linear(64, 500, bias=False)
    decoder.weight = model.encoder.embeddings.word_embeddings.weight
    model.decoder = decoder
    before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    stds = add_noise(model, NoisyTuneConfig(include=["*"], exclude=["classifier.*"]), 0)
    assert "decoder.weight" not in stds
    diff = model.decoder.weight.detach() - before
    assert diff.abs().max().item() <= 0.15 / 2 * stds["encoder.embeddings.word_embeddings.weight"] * (1 + 1e-5)


def test_bad_values_are_rejected():
    with pytest.raises(RecipeError, match=r"noisytune.lam = -0.1 is out of range"):
        build_recipe({"techniques": [{"name": "noisytune", "lam": -0.1}]})
    with pytest.raises(RecipeError, match="Did you mean 'gaussian'"):
        build_recipe({"techniques": [{"name": "noisytune", "distribution": "gauss"}]})
