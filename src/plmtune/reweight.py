"""Learning to re-weight noisy pseudo-labels (Ren et al., ICML 2018), as LiST uses it.

For a batch of pseudo-labelled examples with per-example losses l_i(θ) and a batch of the K
labelled examples with mean loss L(θ):

1. take a virtual SGD step with per-example weights ε (all 0):  θ'(ε) = θ − α·∇θ Σ ε_i·l_i(θ);
2. differentiate the labelled loss after that step with respect to the weights: g = ∂L(θ'(ε))/∂ε;
3. w_i = max(−g_i, 0), normalised to sum to 1 (all zero where no example helps).

An example whose gradient points the same way as the labelled data's gets weight; one that
would push the model away from the labelled data (a wrong pseudo-label, typically) gets none.
Everything runs through ``torch.func`` over the trainable parameters only — the adapters,
LayerNorms and head when the encoder is frozen; the frozen encoder is read, never differentiated
with respect to. Four implementations of the same quantity:

* :func:`meta_weights_by_virtual_step` is the algorithm as written: ``grad`` of a function that
  itself takes a ``grad`` (the virtual step), i.e. a second-order pass. About 4× a plain step.
* :func:`meta_weights` evaluates the same derivative in closed form. With
  θ'(ε) = θ − α·Σ ε_i·∇l_i(θ), the chain rule gives ∂L(θ'(ε))/∂ε_i = −α·⟨∇L(θ'(ε)), ∇l_i(θ)⟩,
  and at ε = 0 (where it is evaluated) θ' = θ, so g_i = −α·⟨∇L(θ), ∇l_i(θ)⟩ exactly — no
  approximation. It costs one gradient of the labelled batch (``grad``) and one forward-mode
  pass over the pseudo-labelled batch along that gradient (``jvp``), which yields every
  ⟨∇l_i, ∇L⟩ at once.
* :func:`meta_weights_from_graph` computes the same inner products from the training step's own
  forward pass instead of a new one: with u = 1, h(u) = ∇θ Σ u_i·l_i keeps its graph and
  ∂⟨h(u), ∇L⟩/∂u_i = ⟨∇l_i, ∇L⟩ (reverse over reverse).
* :func:`reweighted_loss` (used in training when every trainable parameter is a Linear or
  LayerNorm parameter — adapters, LayerNorms, heads) gets ⟨∇l_i, ∇L⟩ for all i *and* the weighted
  gradient Σ w_i ∇l_i from one ordinary backward pass of the step (:mod:`plmtune.per_example`),
  so a re-weighted step costs a plain step plus the labelled batch's gradient.

Tests check that all four agree.

α only scales g and cancels in the normalisation; it is kept for fidelity to the algorithm.
SDPA's fused attention kernels lack double-backward and forward-mode rules, so attention runs on
the math kernel inside the second-order and forward-mode functions. Errors propagate: a failure
here is a bug to see, not a batch to skip (LiST's code swallowed them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from .per_example import PerExampleGradients, surrogate_loss

NOT_INPUTS = ("labels",)


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The model gets the batch as the training loop gives it (every field but the labels); models
    # ignore fields they do not read, so a technique's declared batch field needs no entry here.
    return {k: v for k, v in batch.items() if k not in NOT_INPUTS}


def _setup(model: torch.nn.Module):
    """The trainable parameters (detached) and per-example losses as a function of them."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("meta re-weighting needs trainable parameters; the model has none")

    def losses(theta: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        logits = functional_call(model, theta, kwargs=_inputs(batch), strict=False)["logits"].float()
        return F.cross_entropy(logits, batch["labels"], reduction="none")

    return params, losses


def _normalise(meta_gradient: torch.Tensor) -> torch.Tensor:
    weights = torch.clamp(-meta_gradient, min=0.0)
    total = weights.sum()
    return weights / total if total > 0 else weights


def meta_weights(model: torch.nn.Module, pseudo_batch: dict[str, torch.Tensor],
                 labelled_batch: dict[str, torch.Tensor], virtual_lr: float = 1e-3) -> torch.Tensor:
    """Per-example weights (non-negative, summing to 1 or all 0) for `pseudo_batch` (closed form)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params, losses = _setup(model)
    with sdpa_kernel([SDPBackend.MATH]):
        labelled_gradient = grad(lambda theta: losses(theta, labelled_batch).mean())(params)
        _, directional = jvp(lambda theta: losses(theta, pseudo_batch), (params,), (labelled_gradient,))
    return _normalise(-virtual_lr * directional.detach())


def labelled_gradient(model: torch.nn.Module, labelled_batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """∇θ of the labelled batch's mean loss over the trainable parameters (torch.func.grad)."""
    params, losses = _setup(model)
    return grad(lambda theta: losses(theta, labelled_batch).mean())(params)


def reweighted_loss(capture: PerExampleGradients, model: torch.nn.Module, per_example_loss: torch.Tensor,
                    labelled_batch: dict[str, torch.Tensor], virtual_lr: float = 1e-3
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, weights): the meta weights and a loss whose backward gives Σ w_i ∇l_i.

    `capture` recorded the forward pass that produced `per_example_loss`; its graph is consumed
    here by one backward pass, and the returned loss carries the weighted gradient directly.
    """
    with capture.paused():
        gradient = labelled_gradient(model, labelled_batch)
    direction = {p: gradient[n] for n, p in model.named_parameters() if p.requires_grad}
    capture.backward(per_example_loss)
    weights = _normalise(-virtual_lr * capture.inner_products(direction).detach())
    loss = surrogate_loss((weights * per_example_loss).sum(), capture.weighted_gradients(weights))
    capture.clear()
    return loss, weights


def meta_weights_from_graph(model: torch.nn.Module, per_example_loss: torch.Tensor,
                            labelled_batch: dict[str, torch.Tensor], virtual_lr: float = 1e-3) -> torch.Tensor:
    """The same weights, from per-example losses whose autograd graph is still alive (kept alive)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        gradient = labelled_gradient(model, labelled_batch)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    u = torch.ones_like(per_example_loss, requires_grad=True)
    h = torch.autograd.grad((u * per_example_loss).sum(), params, create_graph=True, allow_unused=True)
    inner = sum((hi * gradient[n]).sum() for hi, n in zip(h, names) if hi is not None)
    (directional,) = torch.autograd.grad(inner, u, retain_graph=True)
    return _normalise(-virtual_lr * directional.detach())


def meta_weights_by_virtual_step(model: torch.nn.Module, pseudo_batch: dict[str, torch.Tensor],
                                 labelled_batch: dict[str, torch.Tensor], virtual_lr: float = 1e-3) -> torch.Tensor:
    """The same weights by the literal algorithm: a virtual step, then d(labelled loss)/d(weights)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params, losses = _setup(model)

    def labelled_loss_after_virtual_step(eps: torch.Tensor) -> torch.Tensor:
        step = grad(lambda theta: (eps * losses(theta, pseudo_batch)).sum())(params)
        return losses({n: v - virtual_lr * step[n] for n, v in params.items()}, labelled_batch).mean()

    eps = torch.zeros(pseudo_batch["labels"].shape[0], device=pseudo_batch["labels"].device)
    with sdpa_kernel([SDPBackend.MATH]):
        return _normalise(grad(labelled_loss_after_virtual_step)(eps))


def soft_target_loss(logits: torch.Tensor, soft_labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-example cross-entropy to a teacher's probabilities at `temperature` (× T², Hinton et al.)."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(soft_labels * log_probs).sum(-1) * temperature ** 2


def sharpen(probs: Any, temperature: float) -> torch.Tensor:
    """Teacher probabilities re-tempered: softmax(log p / T)."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    return torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=-1)
