"""Per-example gradients from one backward pass: exact against autograd, and refusing what they cannot do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.per_example import PerExampleGradients, surrogate_loss, unsupported_parameters


def _model():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(vocab_size=100, seed=0, dropout=0.0), num_labels=3, dropout=0.0)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.requires_grad_(False)
    return model


def _batch(n=6, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padding must not matter
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), generator=g)


def _per_example_grads(model, inputs, labels):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(labels.shape[0]):
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        loss = F.cross_entropy(model(**one)["logits"], labels[i:i + 1])
        rows.append(torch.autograd.grad(loss, params))
    return params, rows


def test_unsupported_parameters_names_embeddings_and_free_parameters():
    model = SequenceClassifier(tiny_bert(vocab_size=100, seed=0), num_labels=2)
    assert "encoder.embeddings.word_embeddings.weight" in unsupported_parameters(model)
    assert unsupported_parameters(_model()) == []
    with pytest.raises(ValueError, match="Linear and LayerNorm"):
        PerExampleGradients(SequenceClassifier(tiny_bert(vocab_size=100, seed=0), num_labels=2))


def test_inner_products_and_weighted_gradients_match_one_example_at_a_time():
    model = _model()
    inputs, labels = _batch()
    params, rows = _per_example_grads(model, inputs, labels)
    direction = {p: torch.randn_like(p) for p in params}
    capture = PerExampleGradients(model)
    per_example = F.cross_entropy(model(**inputs)["logits"], labels, reduction="none")
    capture.backward(per_example)
    expected = torch.stack([sum((g * direction[p]).sum() for p, g in zip(params, row)) for row in rows])
    assert torch.allclose(capture.inner_products(direction), expected, rtol=1e-4, atol=1e-5)
    weights = torch.rand(labels.shape[0])
    weighted = capture.weighted_gradients(weights)
    assert set(weighted) == set(params)
    for k, p in enumerate(params):
        reference = sum(w * row[k] for w, row in zip(weights, rows))
        assert torch.allclose(weighted[p], reference, rtol=1e-4, atol=1e-6)


def test_surrogate_loss_has_the_value_and_puts_exactly_the_gradients():
    model = _model()
    inputs, labels = _batch(seed=1)
    capture = PerExampleGradients(model)
    per_example = F.cross_entropy(model(**inputs)["logits"], labels, reduction="none")
    capture.verify(model, per_example)  # passes: every trainable layer is used through its forward
    weights = torch.softmax(torch.randn(labels.shape[0]), 0)
    expected_value = (weights * per_example).sum()
    reference = torch.autograd.grad(expected_value, [p for p in model.parameters() if p.requires_grad],
                                    retain_graph=True)
    capture.backward(per_example)
    loss = surrogate_loss(expected_value, capture.weighted_gradients(weights))
    loss.backward()
    assert loss.item() == pytest.approx(expected_value.item())
    for p, ref in zip([p for p in model.parameters() if p.requires_grad], reference):
        assert torch.allclose(p.grad, ref, rtol=1e-4, atol=1e-6)


def test_nothing_is_recorded_without_grad_or_while_paused_and_remove_leaves_no_hooks():
    model = _model()
    inputs, labels = _batch()
    capture = PerExampleGradients(model)
    with torch.no_grad():
        model(**inputs)
    with capture.paused():
        model(**inputs)
    with pytest.raises(RuntimeError, match="no recorded forward"):
        capture.backward(torch.zeros(labels.shape[0], requires_grad=True))
    capture.remove()
    model(**inputs)
    assert capture._records == [] and all(not m._forward_hooks for m in model.modules())


class _UsesWeightDirectly(nn.Module):
    """A head that reads its Linear's weight outside the Linear's forward (as a tied decoder might)."""

    def __init__(self):
        super().__init__()
        self.proj, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        hidden = self.proj(x)
        return hidden @ self.out.weight.T + F.linear(hidden, self.proj.weight)[:, :2]


def test_verify_refuses_a_parameter_used_outside_its_layer():
    torch.manual_seed(0)
    model = _UsesWeightDirectly()
    capture = PerExampleGradients(model)
    x, labels = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    per_example = F.cross_entropy(model(x), labels, reduction="none")
    with pytest.raises(RuntimeError, match="do not reproduce autograd"):
        capture.verify(model, per_example)
