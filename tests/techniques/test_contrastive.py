"""The contrastive body loss: both losses against their definitions written out pair by pair."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plmtune.errors import RecipeError
from plmtune.loading import build_recipe
from plmtune.techniques.contrastive import Contrastive, ContrastiveConfig, pair_cosine_loss, supcon_loss


def test_pair_cosine_loss_is_setfits_regression_over_every_in_batch_pair():
    torch.manual_seed(0)
    u, y = torch.randn(5, 8), torch.tensor([0, 1, 0, 2, 1])
    terms = [(F.cosine_similarity(u[i], u[j], dim=0) - float(y[i] == y[j])) ** 2
             for i in range(5) for j in range(i + 1, 5)]
    assert torch.allclose(pair_cosine_loss(u, y), torch.stack(terms).mean(), atol=1e-6)
    assert pair_cosine_loss(u[:1], y[:1]).item() == 0.0


def test_supcon_loss_matches_khosla_l_out_written_out():
    torch.manual_seed(1)
    u, y, tau = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 1, 2]), 0.5
    z = F.normalize(u, dim=-1)
    per_anchor = []
    for i in range(6):
        positives = [p for p in range(6) if p != i and y[p] == y[i]]
        if not positives:
            continue  # row 5 has no positive: it is left out of the mean
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(6) if a != i)
        per_anchor.append(-sum(float(z[i] @ z[p]) / tau - math.log(denom) for p in positives) / len(positives))
    assert supcon_loss(u, y, tau).item() == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-5)
    assert supcon_loss(u[:1], y[:1], tau).item() == 0.0


def test_the_loss_pulls_same_class_rows_together():
    torch.manual_seed(2)
    u = torch.randn(8, 16, requires_grad=True)
    y = torch.arange(8) % 2
    optimizer = torch.optim.Adam([u], lr=0.05)
    first = None
    for _ in range(300):
        loss = pair_cosine_loss(u, y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first


@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_adjust_loss_weighs_the_head_cross_entropy_and_the_contrastive_term(ce_weight):
    torch.manual_seed(3)
    pooled, labels = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    technique = Contrastive(ContrastiveConfig(loss="cosine", weight=2.0, ce_weight=ce_weight))
    ce = torch.tensor(0.7)
    out = technique.adjust_loss(ce, {"pooled": pooled, "logits": torch.zeros(4, 2)}, {"labels": labels}, None)
    assert out.item() == pytest.approx(ce_weight * 0.7 + 2.0 * pair_cosine_loss(pooled, labels).item(), rel=1e-6)


def test_recipe_values_are_checked_with_their_path():
    with pytest.raises(RecipeError, match="contrastive.loss"):
        build_recipe({"name": "x", "techniques": [{"name": "contrastive", "loss": "triplet"}]})
    with pytest.raises(RecipeError, match="contrastive.temperature"):
        build_recipe({"name": "x", "techniques": [{"name": "contrastive", "loss": "supcon", "temperature": 0}]})
