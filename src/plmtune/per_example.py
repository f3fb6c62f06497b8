"""Per-example gradients of Linear and LayerNorm parameters from one ordinary backward pass.

For a Linear layer y = x·Wᵀ + b used once per example, example i's gradient is
∇W l_i = Σ_t δ_{i,t} x_{i,t}ᵀ and ∇b l_i = Σ_t δ_{i,t}, with x the layer's input and δ = ∂(Σ_j l_j)/∂y
(examples do not interact inside a BERT forward pass, so δ for row i is example i's own). LayerNorm's
affine parameters are the same with x̂ (the normalised input) in place of x. So the inputs and
output-gradients of the trainable layers are all that is needed for:

* ⟨∇l_i, G⟩ for every example at once (G any gradient-shaped direction) — with x·Gᵀ, the cost of
  one forward pass through the trainable layers only, and
* Σ_i w_i ∇l_i for any weights w chosen *after* the backward pass — without a second backward.

Meta re-weighting needs exactly these two (the weights depend on the inner products), which is
what makes it cost little more than a plain step plus the labelled batch's gradient
(benchmarks/list_cost.py). The same identities underlie "ghost" per-sample gradient norms.

Requirements, checked rather than assumed: every trainable parameter belongs to an nn.Linear or
nn.LayerNorm and is used through that module's forward, whose first input dimension is the batch.
:meth:`PerExampleGradients.verify` compares Σ_i ∇l_i from the captures with autograd's gradient
and raises if any parameter is used some other way (tied weights, in-place edits, flattening).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.LayerNorm)


def unsupported_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters that do not belong directly to a Linear or LayerNorm module."""
    covered = {id(p) for m in model.modules() if isinstance(m, SUPPORTED)
               for p in m.parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


class PerExampleGradients:
    """Records the trainable layers' inputs and outputs during grad-enabled forward passes."""

    def __init__(self, model: nn.Module):
        missing = unsupported_parameters(model)
        if missing:
            raise ValueError(f"per-example gradients support Linear and LayerNorm parameters only; "
                             f"these are neither: {', '.join(missing[:5])}")
        self.recording = True
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._grads: list[torch.Tensor] = []
        # prepend: see the layer's own output, before any other hook (an adapter) replaces it
        self._handles = [m.register_forward_hook(self._record, prepend=True) for m in model.modules()
                         if isinstance(m, SUPPORTED) and any(p.requires_grad for p in m.parameters(recurse=False))]

    def _record(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.recording and torch.is_grad_enabled() and module.training:
            self._records.append((module, inputs[0], output))

    @contextmanager
    def paused(self):
        """Forward passes inside this block are not recorded (e.g. the labelled batch's)."""
        previous, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = previous

    def clear(self) -> None:
        self._records, self._grads = [], []

    def remove(self) -> None:
        self.clear()
        for handle in self._handles:
            handle.remove()

    def backward(self, per_example_loss: torch.Tensor, retain_graph: bool = False) -> None:
        """δ for every recorded layer output: one backward pass of Σ l_i (freeing the graph by default)."""
        if not self._records:
            raise RuntimeError("no recorded forward pass: the trainable layers did not run with grad enabled")
        batch = per_example_loss.shape[0]
        for module, x, _ in self._records:
            if x.shape[0] != batch:
                raise RuntimeError(f"a {type(module).__name__} saw {x.shape[0]} rows for {batch} examples: "
                                   "its input does not keep the batch as the first dimension")
        outputs = [out for _, _, out in self._records]
        self._grads = list(torch.autograd.grad(per_example_loss.sum(), outputs, retain_graph=retain_graph,
                                               allow_unused=True))

    def _terms(self):
        """Per recorded call: the layer, its input features and its output gradient, both as (B, T, ·)."""
        for (module, x, _), delta in zip(self._records, self._grads):
            if delta is None:  # the output did not reach the loss
                continue
            x = x.detach().float()
            if isinstance(module, nn.LayerNorm):
                x = F.layer_norm(x, module.normalized_shape, eps=module.eps)
            batch = x.shape[0]
            yield module, x.reshape(batch, -1, x.shape[-1]), delta.float().reshape(batch, -1, delta.shape[-1])

    def inner_products(self, direction: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor:
        """⟨∇l_i, direction⟩ over the trainable parameters, for every example i: shape (B,)."""
        total = None
        for module, x, delta in self._terms():
            weight, bias = module.weight, module.bias
            part = 0
            if weight is not None and weight.requires_grad:
                g = direction[weight].float()
                scaled = x @ g.T if isinstance(module, nn.Linear) else x * g  # (B, T, out)
                part = part + (scaled * delta).sum((1, 2))
            if bias is not None and bias.requires_grad:
                part = part + (delta * direction[bias].float()).sum((1, 2))
            total = part if total is None else total + part
        if total is None:
            raise RuntimeError("no trainable layer output reached the loss")
        return total

    def weighted_gradients(self, weights: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """Σ_i w_i ∇l_i for every trainable Linear/LayerNorm parameter that received a gradient."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        for module, x, delta in self._terms():
            delta = delta * weights.float()[:, None, None]
            pieces = []
            if module.weight is not None and module.weight.requires_grad:
                g = (torch.einsum("bto,bti->oi", delta, x) if isinstance(module, nn.Linear)
                     else (delta * x).sum((0, 1)))
                pieces.append((module.weight, g))
            if module.bias is not None and module.bias.requires_grad:
                pieces.append((module.bias, delta.sum((0, 1))))
            for param, g in pieces:  # a layer used twice in one pass contributes twice
                out[param] = out[param] + g if param in out else g
        return {p: g.to(p.dtype) for p, g in out.items()}

    def verify(self, model: nn.Module, per_example_loss: torch.Tensor) -> None:
        """Raise unless the captures reproduce autograd's gradient of Σ l_i (call before backward)."""
        params = [p for p in model.parameters() if p.requires_grad]
        reference = torch.autograd.grad(per_example_loss.sum(), params, retain_graph=True, allow_unused=True)
        self.backward(per_example_loss, retain_graph=True)
        captured = self.weighted_gradients(torch.ones_like(per_example_loss))
        names = {id(p): n for n, p in model.named_parameters()}
        for param, ref in zip(params, reference):
            mine = captured.get(param)
            if ref is None and mine is None:
                continue
            if ref is None or mine is None or not torch.allclose(mine.float(), ref.float(), rtol=1e-3, atol=1e-5):
                raise RuntimeError(f"per-example gradients do not reproduce autograd for {names[id(param)]}: the "
                                   "parameter is used outside its module's forward, or the layer input is reshaped; "
                                   "use a model whose trainable layers keep the batch dimension")


def surrogate_loss(value: torch.Tensor, gradients: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor:
    """A scalar equal to `value` whose backward puts exactly `gradients` on the parameters."""
    linear = sum((p * g.detach()).sum() for p, g in gradients.items())
    return value.detach() + linear - linear.detach()
