"""ChildTuning: update only a "child network" by masking gradients inside the optimiser.

Paper: Xu et al., "Raise a Child in Large Language Model: Towards Effective and Generalizable
Fine-tuning", EMNLP 2021 (reference code: alibaba/AliceMind, ChildTuning).

* **F** (task-free): every step, a fresh Bernoulli(p) mask over the gradients; survivors are
  scaled by 1/p so the expected gradient is unchanged. Scope: every trainable parameter, as in
  the reference optimiser.
* **D** (task-driven): before training, a Fisher pass sums squared gradients over the training
  data (the batch-averaged loss, as in the reference code; ``per_example: true`` for the exact
  per-example Fisher). The top-p fraction of the encoder layers' entries under one global
  threshold is kept; the mask is fixed for the run and the rest never update. Scope: parameters
  inside encoder layers (the reference code's ``'layer' in name``; here ``layer.N.`` and the
  like, see ``_select``); embeddings and the head train normally.

Plug points: ``wrap_optimizer`` (a wrapper around any torch optimiser: AdamW, SGD, ...) and
``on_fit_start`` (the Fisher pass), ``state_dict`` (the D mask).

Departures from the reference code, on purpose:
* No ``idx`` column in the data: the Fisher pass reads the training loader the loop uses.
* The threshold is exact for any model size: ``topk`` keeps exactly round(p·n) entries (the
  reference's ``np.percentile`` keeps ties too; ``torch.quantile`` refuses > 16M elements).
* F masks are drawn cheaply and reproducibly: on CPU from NumPy's SFC64 generator as 8-bit
  integers compared with round(256·p) (so p is used as p' = round(256p)/256 and survivors are
  scaled by 1/p'); on a GPU with ``torch.rand`` on the device. The generator is seeded by
  (run seed, step), so every process draws the same mask. Rows of embedding matrices whose
  gradient is all zero (tokens absent from the batch) are skipped: masking zeros is a no-op.
* Weight decay: the inner optimiser's decoupled weight decay would still shrink entries whose
  gradient was masked. ``decay_masked`` decides: the default for D is false (masked entries stay
  bit-identical to their pretrained values, the paper's intent); for F it is true (the
  reference optimiser decays every entry). With false, the wrapper applies the decay itself,
  only to entries whose gradient survived this step's mask, so a masked entry does not move at
  all; for F's skipped embedding rows no mask is drawn, and they count as masked (not decayed).
* Gradient clipping runs in the loop on the whole gradient, before the mask (as in the reference
  Trainer). ``clip_after_mask: true`` clips the masked gradient again to ``train.grad_clip``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_range
from ..technique import Technique, TrainContext, register
from ._select import check_layers, layer_number

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildTuningConfig:
    """Args:
    mode: 'F' (task-free, random masks) or 'D' (task-driven, Fisher mask).
    reserve_p: p, the share of gradient entries kept.
    per_example: D only; Fisher from per-example gradients (exact, slower) instead of per batch.
    fisher_bf16: D only; run the Fisher pass under bf16 autocast (about 1.4x faster on CPUs
        with AVX-512; gradients and sums stay fp32). Only the ranking of entries is used.
    decay_masked: apply weight decay to masked entries too; default true for F, false for D.
    clip_after_mask: clip the masked gradient again to train.grad_clip.
    """

    mode: str = "D"
    reserve_p: float = 0.3
    per_example: bool = False
    fisher_bf16: bool = True
    decay_masked: bool | None = None
    clip_after_mask: bool = False

    def __post_init__(self) -> None:
        check_choice("child_tuning.mode", self.mode, ("F", "D"))
        check_range("child_tuning.reserve_p", self.reserve_p, 0.0, 1.0, lo_open=True)


class MaskedOptimizer(torch.optim.Optimizer):
    """Wraps an optimiser: masks gradients (and, where asked, weight decay) before its step.

    It shares ``param_groups`` and ``state`` with the inner optimiser (as timm's Lookahead does),
    so schedulers and checkpoints see one optimiser.
    """

    def __init__(self, inner: torch.optim.Optimizer, technique: ChildTuning):
        self.inner, self.technique = inner, technique
        super().__init__(inner.param_groups, inner.defaults)
        self.param_groups, self.state = inner.param_groups, inner.state
        if not technique.decay_masked:
            # Take decoupled weight decay over from the inner optimiser to spare masked entries.
            for group in self.param_groups:
                group["masked_weight_decay"] = group.get("weight_decay", 0.0)
                group["weight_decay"] = 0.0

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        technique = self.technique
        fixed = technique.masks_for_step()
        grads = []
        for group in self.param_groups:
            decay = group["lr"] * group.get("masked_weight_decay", 0.0)
            for param in group["params"]:
                if param.grad is None:
                    continue
                if fixed is None:
                    keep = technique.mask_randomly(param)
                else:
                    keep = fixed.get(id(param))
                    if keep is not None:
                        param.grad.mul_(keep)
                if decay:
                    if keep is None:
                        param.mul_(1 - decay)
                    else:
                        param.addcmul_(param, keep, value=-decay)  # decay only where keep is 1
                grads.append(param.grad)
        if technique.clip_to:
            torch.nn.utils.clip_grad_norm_(grads, technique.clip_to)
        return self.inner.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # torch's load_state_dict rebinds `state` and `param_groups` to new objects; load into the
        # inner optimiser (which does the update) and share its new ones again.
        self.inner.load_state_dict(state_dict)
        self.param_groups, self.state = self.inner.param_groups, self.inner.state


@register("child_tuning", ChildTuningConfig)
class ChildTuning(Technique):
    search_space = {"reserve_p": (0.1, 0.6)}

    def __init__(self, config: ChildTuningConfig):
        super().__init__(config)
        self.decay_masked = config.mode == "F" if config.decay_masked is None else config.decay_masked
        self.keep_levels = max(1, round(256 * config.reserve_p))  # F on CPU: p' = keep_levels / 256
        self.fisher_masks: dict[int, torch.Tensor] | None = None
        self.saved_masks: dict[str, torch.Tensor] | None = None
        self.clip_to = 0.0
        self.seed, self.step_index, self.rng, self.cuda_rng = 0, 0, None, None
        self.names: dict[int, str] = {}

    # ------------------------------------------------------------------ hooks

    def check_backbone(self, encoder: nn.Module) -> None:
        if self.config.mode == "D":  # D's scope is the parameters inside the layers; F masks every one
            check_layers(encoder, "child_tuning (mode D)")

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module, ctx: TrainContext):
        self.seed = ctx.seed
        self.clip_to = ctx.recipe.train.grad_clip if self.config.clip_after_mask else 0.0
        self.names = {id(p): n for n, p in model.named_parameters()}
        return MaskedOptimizer(optimizer, self)

    def on_fit_start(self, ctx: TrainContext) -> None:
        if self.config.mode == "D" and self.fisher_masks is None:
            model = ctx.bare_model()
            if self.saved_masks is not None:
                by_name = dict(model.named_parameters())
                self.fisher_masks = {id(by_name[n]): m.to(by_name[n].device, by_name[n].dtype)
                                     for n, m in self.saved_masks.items()}
            else:
                fisher = fisher_information(ctx.model, ctx.train_loader, ctx.accelerator, self.config.per_example,
                                            self.config.fisher_bf16)
                self.fisher_masks = {id(p): m for p, m in top_fraction_masks(fisher, self.config.reserve_p).items()}

    def state_dict(self) -> dict:
        state: dict = {"step_index": self.step_index}  # F: where the mask stream continues
        if self.fisher_masks:
            state["masks"] = {self.names[i]: (m != 0).cpu() for i, m in self.fisher_masks.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.saved_masks = state.get("masks")
        self.step_index = state.get("step_index", 0)

    # ------------------------------------------------------------------ masks

    def masks_for_step(self) -> dict[int, torch.Tensor] | None:
        """D: the fixed masks. F: None, and a fresh generator for this step's draws."""
        if self.config.mode == "D":
            if self.fisher_masks is None:
                raise RuntimeError("child_tuning D: the Fisher pass has not run; on_fit_start must be "
                                   "called before the first optimiser step")
            return self.fisher_masks
        self.step_index += 1
        self.rng = np.random.SFC64([self.seed, self.step_index])
        self.cuda_rng = None
        return None

    def mask_randomly(self, param: nn.Parameter) -> torch.Tensor | None:
        """Apply a fresh F mask to one gradient in place (survivors scaled by 1/p).

        Returns the keep-mask where masked entries must be spared weight decay, else None.
        """
        grad = param.grad
        if grad.is_cuda:
            if self.cuda_rng is None:
                self.cuda_rng = torch.Generator(device=grad.device).manual_seed(self.seed * 1_000_003 + self.step_index)
            p = self.config.reserve_p
            keep = torch.rand(grad.shape, device=grad.device, generator=self.cuda_rng) < p
            if not self.decay_masked and grad.dim() == 2 and "embeddings" in self.names.get(id(param), ""):
                # As on the CPU path: rows of tokens absent from the batch have no gradient to
                # keep, so they count as masked and are spared decay.
                keep &= grad.any(dim=1, keepdim=True)
            grad.mul_(keep).div_(p)
            return None if self.decay_masked else keep
        scale = 256.0 / self.keep_levels
        if grad.dim() == 2 and "embeddings" in self.names.get(id(param), ""):
            # Only the rows of tokens in the batch have a gradient; the rest are zeros already.
            rows = grad.any(dim=1).nonzero().squeeze(1)
            keep = self._bits(rows.numel() * grad.shape[1]).view(rows.numel(), grad.shape[1])
            grad[rows] = grad[rows] * keep * scale
            if self.decay_masked:
                return None
            # Skipped rows had no gradient to keep: they count as masked and are spared decay too.
            full = torch.zeros(grad.shape, dtype=torch.bool, device=grad.device)
            full[rows] = keep.to(grad.device)
            return full
        keep = self._bits(grad.numel()).view(grad.shape)
        grad.mul_(keep).mul_(scale)
        return None if self.decay_masked else keep

    def _bits(self, n: int) -> torch.Tensor:
        words = self.rng.random_raw(n // 8 + 1).view(np.uint8)[:n]
        return torch.from_numpy(words < self.keep_levels)


def fisher_information(model: nn.Module, loader, accelerator, per_example: bool = False, bf16: bool = False
                       ) -> dict[nn.Parameter, torch.Tensor]:
    """Sum of squared loss gradients over the data for the parameters inside encoder layers.

    Batch-averaged by default (the reference code's estimate); per-example where asked. On many
    processes the sums are added across ranks, so the mask is the same everywhere. The pass runs
    with dropout off and computes gradients only for the parameters in scope: the estimate is of
    the model itself rather than of one dropout sample (the reference keeps train mode), and the
    embedding and head gradients it would throw away are never computed.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scope = {p: torch.zeros_like(p) for n, p in named if layer_number(n) is not None}
    if not scope:
        raise ValueError("child_tuning D found no parameters inside encoder layers ('.layer.N.' in the name)")
    was_training = model.training
    outside = [p for _, p in named if p not in scope]
    model.zero_grad(set_to_none=True)  # sum only this pass's gradients
    model.eval()
    for param in outside:
        param.requires_grad_(False)
    try:
        # Gradients stay local to each process here; the sums are added across ranks once, below.
        no_sync = accelerator.no_sync(model) if accelerator is not None else contextlib.nullcontext()
        with no_sync:
            _accumulate_squares(model, loader, scope, per_example, bf16)
    finally:
        for param in outside:
            param.requires_grad_(True)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if accelerator is not None and accelerator.num_processes > 1:
        scope = {p: accelerator.reduce(f, reduction="sum") for p, f in scope.items()}
    return scope


def _accumulate_squares(model: nn.Module, loader, scope: dict, per_example: bool, bf16: bool) -> None:
    device_type = next(iter(scope)).device.type
    for batch in loader:
        pieces = [batch] if not per_example else [
            {k: v[i:i + 1] for k, v in batch.items()} for i in range(len(batch["labels"]))]
        for piece in pieces:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(**piece)["logits"]
            F.cross_entropy(logits.float(), piece["labels"]).backward()
            for param, acc in scope.items():
                if param.grad is not None:
                    acc.addcmul_(param.grad, param.grad)
                    param.grad = None


def top_fraction_masks(scores: dict[nn.Parameter, torch.Tensor], p: float) -> dict[nn.Parameter, torch.Tensor]:
    """Masks keeping exactly round(p·n) entries with the highest scores under one threshold."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    k = max(1, round(p * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for param, score in scores.items():
        n = score.numel()
        masks[param] = keep[start:start + n].view_as(score).to(param.dtype)
        start += n
    logger.info("child_tuning D keeps %d of %d entries (%.1f%%)", k, flat.numel(), 100 * k / flat.numel())
    return masks
