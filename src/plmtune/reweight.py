"""Learning to re-weight noisy pseudo-labels (Ren et al., ICML 2018), as LiST uses it.

For a batch of pseudo-labelled examples with per-example losses l_i(θ) and a batch of the K
labelled examples with mean loss L(θ):

1. take a virtual SGD step with per-example weights ε (all 0):  θ'(ε) = θ − α·∇θ Σ ε_i·l_i(θ);
2. differentiate the labelled loss after that step with respect to the weights: g = ∂L(θ'(ε))/∂ε;
3. w_i = max(−g_i, 0), normalised to sum to 1 (all zero where no example helps).

An example whose gradient points the same way as the labelled data's gets weight; one that
would push the model away from the labelled data (a wrong pseudo-label, typically) gets none.
Both derivatives are taken with ``torch.func`` (``grad`` of a function that itself takes a
``grad``), over the trainable parameters only — the adapters, LayerNorms and head when the
encoder is frozen; the frozen encoder is read, never differentiated with respect to.

At ε = 0 the result is exactly −α·⟨∇L(θ), ∇l_i(θ)⟩, so α only scales g and cancels in the
normalisation; it is kept for fidelity to the algorithm. The inner gradient keeps its graph
(a second-order pass); SDPA's fused kernels have no double backward, so attention runs on the
math kernel inside this function. Errors propagate: a failure here is a bug to see, not a
batch to skip (LiST's code swallowed them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "features")


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def meta_weights(model: torch.nn.Module, pseudo_batch: dict[str, torch.Tensor],
                 labelled_batch: dict[str, torch.Tensor], virtual_lr: float = 1e-3) -> torch.Tensor:
    """Per-example weights (non-negative, summing to 1 or all 0) for `pseudo_batch`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("meta re-weighting needs trainable parameters; the model has none")
    pseudo_inputs, pseudo_labels = _inputs(pseudo_batch), pseudo_batch["labels"]
    labelled_inputs, labelled_labels = _inputs(labelled_batch), labelled_batch["labels"]

    def weighted_pseudo_loss(theta: dict[str, torch.Tensor], eps: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, theta, kwargs=pseudo_inputs, strict=False)["logits"].float()
        return (eps * F.cross_entropy(logits, pseudo_labels, reduction="none")).sum()

    def labelled_loss_after_virtual_step(eps: torch.Tensor) -> torch.Tensor:
        step = grad(weighted_pseudo_loss)(params, eps)
        theta = {name: value - virtual_lr * step[name] for name, value in params.items()}
        logits = functional_call(model, theta, kwargs=labelled_inputs, strict=False)["logits"].float()
        return F.cross_entropy(logits, labelled_labels)

    eps = torch.zeros(pseudo_labels.shape[0], device=pseudo_labels.device)
    with sdpa_kernel([SDPBackend.MATH]):
        g = grad(labelled_loss_after_virtual_step)(eps)
    weights = torch.clamp(-g, min=0.0)
    total = weights.sum()
    return weights / total if total > 0 else weights


def soft_target_loss(logits: torch.Tensor, soft_labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-example cross-entropy to a teacher's probabilities at `temperature` (× T², Hinton et al.)."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(soft_labels * log_probs).sum(-1) * temperature ** 2


def sharpen(probs: Any, temperature: float) -> torch.Tensor:
    """Teacher probabilities re-tempered: softmax(log p / T)."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    return torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=-1)
