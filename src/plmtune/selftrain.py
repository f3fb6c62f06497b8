"""Stages around the fine-tuning loop: LiST self-training and self-knowledge distillation.

Both reuse :func:`plmtune.engine.loop.fit` unchanged; what differs is what they train on and a
loss hook (:class:`PseudoLabelLoss`, :class:`SoftTargetLoss`) added to the recipe's techniques.

**Self-training** (LiST, Wang et al. 2022). A recipe with a ``self_training:`` section:

1. the teacher (the recipe's model: prompt + adapters in LiST) trains on the K labelled rows;
2. it labels the unlabelled pool (``unlabeled.jsonl``, a seeded sample of ``unlabeled_cap``):
   hard labels and soft probabilities;
3. the student — the same model object with its trainable tensors reset to their initial
   values (fresh adapters and head on the *same* frozen encoder; no model copy) — trains on
   the pseudo-labelled rows: the first ``kd_warmup`` share of its steps on the teacher's soft
   labels with equal weights, then on hard pseudo-labels weighted by meta re-weighting
   (:mod:`plmtune.reweight`) against a labelled batch; optionally it then fine-tunes on the
   labelled rows (``finish_on_labelled``);
4. the student becomes the teacher; repeat ``iterations`` times. The last student is the result
   (``select: last``, as in the paper), or the iteration with the best few-shot dev score
   (``select: best_dev``); every iteration's dev and test metrics are in ``result.json``.

After each iteration the teacher's trainable state is written atomically to
``self_training/state.pt``; ``--resume`` continues at the next iteration.

**Self-distillation** (seeds: 自蒸馏; Furlanello et al. 2018). A recipe with
``self_distillation:`` fine-tunes, takes the model's soft labels on the training rows at
temperature T, then fine-tunes a fresh model on α·CE(hard) + (1−α)·T²·CE(soft_T), ``rounds`` times.
After each round its metrics and the soft labels for the next are written atomically to
``self_distillation/state.pt``; ``--resume`` continues at the next round.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from .config import Recipe
from .data import EncodedSplit, PadCollator, eval_loader, load_task, read_rows, train_loader
from .engine.checkpoint import keep_log_records
from .engine.loop import MetricLog, fit, make_accelerator, predict
from .errors import DataError
from .per_example import PerExampleGradients, unsupported_parameters
from .reweight import meta_weights_from_graph, reweighted_loss, sharpen, soft_target_loss
from .models import count_parameters
from .run import (build_model_and_data, encode, prepare_out_dir, recipe_to_yaml, result_record, split_sizes,
                  test_metrics, write_json_atomic)
from .technique import Technique, TrainContext, build_techniques


class PseudoLabelLoss(Technique):
    """The student's loss on pseudo-labelled batches: KD warm-up, then re-weighted hard labels."""

    name = "pseudo_label_loss"

    def __init__(self, config: Any, warmup_steps: int, labelled_loader: Any, one_backward: bool | None = None):
        super().__init__(config)
        self.warmup_steps, self.labelled_loader, self._batches = warmup_steps, labelled_loader, None
        # None: the one-backward re-weighting wherever the model allows it; False: always the
        # reverse-over-reverse route (benchmarks compare the two)
        self.one_backward = one_backward
        self._attention: str | None = None
        self._capture: PerExampleGradients | None = None
        self._verified = False
        self.zero_weight_share: list[float] = []  # per re-weighted batch: share of examples given no weight

    def _labelled_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        try:
            batch = next(self._batches)
        except (TypeError, StopIteration):
            self._batches = iter(self.labelled_loader)
            batch = next(self._batches)
        return {k: v.to(device) for k, v in batch.items()}

    def on_fit_start(self, ctx: TrainContext) -> None:
        if not self.config.reweight:
            return
        model = ctx.bare_model()
        if self.one_backward is not False and not unsupported_parameters(model):  # one backward per step
            self._capture, self._verified = PerExampleGradients(model), False
        else:
            # Reverse-over-reverse on the step's graph instead; fused SDPA kernels have no double
            # backward, so the encoder runs eager attention while this student trains.
            self._attention = _set_attention(model, "eager")

    def on_fit_end(self, ctx: TrainContext) -> None:
        if self._capture is not None:
            self._capture.remove()  # the encoder is shared with the next student: leave no hooks
            self._capture = None
        if self._attention:
            _set_attention(ctx.bare_model(), self._attention)
            self._attention = None

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        if ctx.step < self.warmup_steps:  # consistency with the teacher, every example weighted equally
            if self._capture is not None:
                self._capture.clear()  # it recorded this step's forward, which re-weights nothing
            return soft_target_loss(outputs["logits"], batch["soft_labels"]).mean()
        if not self.config.reweight:
            return loss
        model, per_example = ctx.bare_model(), outputs["per_example_loss"]
        labelled = self._labelled_batch(batch["labels"].device)
        if self._capture is None:
            weights = meta_weights_from_graph(model, per_example, labelled, self.config.virtual_lr)
            loss = (weights * per_example).sum()
        else:
            if not self._verified:  # once per student: the model's layers really allow the shortcut
                self._capture.verify(model, per_example)
                self._verified = True
            loss, weights = reweighted_loss(self._capture, model, per_example, labelled, self.config.virtual_lr)
        self.zero_weight_share.append(float((weights == 0).float().mean()))
        return loss


def _set_attention(model: torch.nn.Module, implementation: str) -> str:
    """Switch the encoder's attention implementation; return the previous one."""
    config = model.encoder.config
    previous = getattr(config, "_attn_implementation", None) or "sdpa"
    model.encoder.set_attn_implementation(implementation)
    return previous


class SoftTargetLoss(Technique):
    """α·CE(hard labels) + (1−α)·T²·CE(teacher soft labels at T) — self-distillation's student loss."""

    name = "soft_target_loss"

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        soft = soft_target_loss(outputs["logits"], batch["soft_labels"], self.config.temperature).mean()
        return self.config.alpha * loss + (1 - self.config.alpha) * soft


# --------------------------------------------------------------------------- shared pieces


def read_unlabelled(task_dir: Path, recipe: Recipe, cap: int, seed: int, is_pair: bool) -> list[dict]:
    path = task_dir / "unlabeled.jsonl"
    if not path.is_file():
        raise DataError(task_dir, "no unlabeled.jsonl: self-training needs a pool of unlabelled text "
                                  "('plmtune data fewshot' writes one beside the splits).")
    if path.stat().st_size == 0 or not path.read_text(encoding="utf-8").strip():
        raise DataError(path, "the unlabelled pool is empty; self-training needs unlabelled text to "
                              "pseudo-label (add rows or remove the self_training section).")
    rows, _ = read_rows(path, recipe.data, labelled=False, is_pair=is_pair)
    if len(rows) > cap:
        rows = random.Random(seed).sample(rows, cap)
    return rows


def trainable_state(model: torch.nn.Module, frozen: set[str]) -> dict[str, torch.Tensor]:
    """A copy of the tensors that training can change (everything but the frozen encoder)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def predict_probs(ctx: TrainContext, split: EncodedSplit, batch_size: int) -> torch.Tensor:
    """Row-ordered class probabilities of the current model on `split` (labels not needed)."""
    loader = ctx.accelerator.prepare(eval_loader(split, batch_size, PadCollator(ctx.tokenizer.pad_token_id or 0)))
    return predict(ctx.model, loader, ctx.accelerator)[0].softmax(-1)


def _start(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None):
    """(seed, out, task_dir, task, main process?) — what both stages begin with."""
    seed = recipe.train.seed if seed is None else seed
    task = load_task(Path(task_dir), recipe.data, need=("train",))
    return seed, Path(out), Path(task_dir), task, int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- self-training


def run_self_training(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
                      progress: bool = False, resume: bool = False) -> dict[str, Any]:
    """LiST self-training (see the module docstring); writes the run folder, returns result.json."""
    cfg = recipe.self_training
    seed, out, task_dir, task, main_process = _start(recipe, task_dir, out, seed)
    pool = read_unlabelled(task_dir, recipe, cfg.unlabeled_cap, seed, task.is_pair)
    state_file = out / "self_training" / "state.pt"
    if main_process:
        prepare_out_dir(out, resume)
        if not resume:
            shutil.rmtree(out / "self_training", ignore_errors=True)
        (out / "self_training").mkdir(exist_ok=True)
        (out / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    set_seed(seed)
    techniques = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=task.num_labels, task_name=task.name)
    model, splits = build_model_and_data(recipe, {**task.splits, "unlabeled": pool}, techniques, ctx)
    encoded = {name: encode(rows, ctx) for name, rows in splits.items()}
    collate = PadCollator(ctx.tokenizer.pad_token_id or 0)
    dev = eval_loader(encoded["dev"], recipe.train.eval_batch_size, collate) if "dev" in encoded else None
    labelled = train_loader(encoded["train"], recipe.train.batch_size, seed, collate)
    initial = trainable_state(model, ctx.frozen)  # what every fresh student starts from

    saved = torch.load(state_file, weights_only=False) if resume and state_file.is_file() else None
    log = MetricLog(out / "metrics.jsonl" if main_process else None)
    if saved and main_process:
        # keep the metrics of finished iterations only (an interrupted one is run again)
        keep_log_records(out / "metrics.jsonl", lambda record: record.get("iteration", 0) <= saved["iteration"])
    history: list[dict] = saved["history"] if saved else []
    best = saved["best"] if saved else None  # (iteration, dev, test, trainable state) of the best teacher
    start = time.perf_counter() - (saved["seconds"] if saved else 0.0)
    try:
        if saved is None:
            log.tags = {"stage": "teacher", "iteration": 0}
            fitted = fit(model, techniques, ctx, labelled, dev, recipe.train, log, progress=progress)
            best = _finish_iteration(0, fitted.best_dev, ctx, encoded, history, best, {})
            _save(state_file, 0, ctx, history, best, start, main_process)
        else:  # resumed: the saved teacher labels the pool next
            model.load_state_dict(saved["teacher"], strict=False)
            ctx.accelerator = make_accelerator(recipe.train)
            ctx.model = ctx.accelerator.prepare(model)
        for iteration in range((saved["iteration"] if saved else 0) + 1, cfg.iterations + 1):
            set_seed(seed + iteration)
            probs = predict_probs(ctx, encoded["unlabeled"], recipe.train.eval_batch_size)
            pseudo = [{**row, "label": int(p.argmax()), "soft_labels": p.tolist()}
                      for row, p in zip(splits["unlabeled"], probs)]
            model.load_state_dict(initial, strict=False)  # a fresh student on the same frozen encoder
            student_cfg = dataclasses.replace(recipe.train, max_steps=cfg.student_steps, batch_size=cfg.batch_size,
                                              early_stopping_patience=0)
            loss = PseudoLabelLoss(cfg, int(cfg.kd_warmup * cfg.student_steps),
                                   train_loader(encoded["train"], cfg.labelled_batch_size, seed + iteration, collate))
            log.tags = {"stage": "student", "iteration": iteration}
            fitted = fit(model, [*techniques, loss], ctx, train_loader(encode(pseudo, ctx), cfg.batch_size,
                                                                       seed + iteration, collate),
                         dev, student_cfg, log, progress=progress)
            if cfg.finish_on_labelled:
                log.tags = {"stage": "student_labelled", "iteration": iteration}
                fitted = fit(model, techniques, ctx, labelled, dev, recipe.train, log, progress=progress)
            notes = {"pseudo_label_distribution": torch.bincount(probs.argmax(-1), minlength=ctx.num_labels).tolist(),
                     "zero_weight_share": (sum(loss.zero_weight_share) / len(loss.zero_weight_share))
                     if loss.zero_weight_share else None}
            best = _finish_iteration(iteration, fitted.best_dev, ctx, encoded, history, best, notes)
            _save(state_file, iteration, ctx, history, best, start, main_process)
    finally:
        log.close()

    if cfg.select == "best_dev":
        model.load_state_dict(best[3], strict=False)
        chosen = best[:3]
    else:  # the model in hand is the last iteration's
        chosen = (history[-1]["iteration"], history[-1]["dev"], history[-1]["test"])
    # Copies held besides the one model: the fresh-student state, the best iteration's state and
    # the loop's best-weights snapshot (all the trainable share only; the encoder is never copied).
    held = state_bytes(initial) + 2 * state_bytes(best[3])
    memory = {"model_bytes": model_bytes(model), "state_copies_bytes": held,
              "ratio_to_one_model": round((model_bytes(model) + held) / model_bytes(model), 4)}
    if torch.cuda.is_available():
        memory["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    stage = {"self_training": {"iterations": history, "selected_iteration": chosen[0], "memory": memory,
                               "unlabeled_used": len(pool)}}
    result = result_record(recipe, task, task_dir, seed, split_sizes(splits), chosen[2], chosen[1],
                           count_parameters(model),
                           train_seconds=round(time.perf_counter() - start, 3), **stage)
    if main_process:
        write_json_atomic(out / "result.json", result)
    return result


def _finish_iteration(iteration: int, dev: Any, ctx: TrainContext, encoded: dict, history: list[dict], best: Any,
                      notes: dict) -> Any:
    test = test_metrics(ctx, encoded)
    history.append({"iteration": iteration, "dev": dev, "test": test, **notes})
    metric = ctx.recipe.train.select_metric
    if best is None or dev is None or (dev[metric], -dev["loss"]) > (best[1][metric], -best[1]["loss"]):
        return (iteration, dev, test, trainable_state(ctx.bare_model(), ctx.frozen))
    return best


def _save(path: Path, iteration: int, ctx: TrainContext, history: list[dict], best: Any, start: float,
          main_process: bool) -> None:
    if main_process:
        _save_atomic(path, {"iteration": iteration, "teacher": trainable_state(ctx.bare_model(), ctx.frozen),
                            "history": history, "best": best, "seconds": time.perf_counter() - start})


def _save_atomic(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- self-distillation


def run_self_distillation(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
                          progress: bool = False, resume: bool = False) -> dict[str, Any]:
    """Fine-tune, then fine-tune fresh models on the previous one's soft labels (see the docstring)."""
    cfg = recipe.self_distillation
    seed, out, task_dir, task, main_process = _start(recipe, task_dir, out, seed)
    state_file = out / "self_distillation" / "state.pt"
    if main_process:
        prepare_out_dir(out, resume)
        if not resume:
            shutil.rmtree(out / "self_distillation", ignore_errors=True)
        (out / "self_distillation").mkdir(exist_ok=True)
        (out / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    # A finished round leaves its metrics and the soft labels for the next one: all a resume needs.
    saved = torch.load(state_file, weights_only=False) if resume and state_file.is_file() else None
    if saved and main_process:
        keep_log_records(out / "metrics.jsonl", lambda record: record.get("round", 0) < len(saved["rounds"]))
    log = MetricLog(out / "metrics.jsonl" if main_process else None)
    rounds, soft = (saved["rounds"], saved["soft"]) if saved else ([], None)
    start = time.perf_counter() - (saved["seconds"] if saved else 0.0)
    try:
        for round_ in range(len(rounds), cfg.rounds + 1):  # round 0 is the plain teacher
            set_seed(seed)
            techniques = build_techniques(recipe)
            ctx = TrainContext(recipe=recipe, seed=seed, num_labels=task.num_labels, task_name=task.name)
            model, splits = build_model_and_data(recipe, dict(task.splits), techniques, ctx)
            if soft is not None:
                if len(soft) != len(splits["train"]):
                    raise RuntimeError("the train split changed between teacher and student; prepare_data must "
                                       "be deterministic for self-distillation")
                splits["train"] = [{**row, "soft_labels": p.tolist()} for row, p in zip(splits["train"], soft)]
                techniques = [*techniques, SoftTargetLoss(cfg)]
            encoded = {name: encode(rows, ctx) for name, rows in splits.items()}
            collate = PadCollator(ctx.tokenizer.pad_token_id or 0)
            dev = eval_loader(encoded["dev"], recipe.train.eval_batch_size, collate) if "dev" in encoded else None
            log.tags = {"stage": "teacher" if round_ == 0 else "student", "round": round_}
            fitted = fit(model, techniques, ctx, train_loader(encoded["train"], recipe.train.batch_size, seed, collate),
                         dev, recipe.train, log, progress=progress)
            rounds.append({"round": round_, "dev": fitted.best_dev, "test": test_metrics(ctx, encoded)})
            if round_ < cfg.rounds:
                soft = sharpen(predict_probs(ctx, encoded["train"], recipe.train.eval_batch_size), cfg.temperature)
            params, sizes = count_parameters(model), split_sizes(splits)
            if main_process:
                _save_atomic(state_file, {"rounds": rounds, "soft": soft, "params": params, "sizes": sizes,
                                          "seconds": time.perf_counter() - start})
            del model, ctx  # the next round loads a fresh model; never two at once
    finally:
        log.close()
    if saved and len(saved["rounds"]) == cfg.rounds + 1:  # every round had finished: only the record is missing
        params, sizes = saved["params"], saved["sizes"]
    last = rounds[-1]
    result = result_record(recipe, task, task_dir, seed, sizes, last["test"], last["dev"], params,
                           train_seconds=round(time.perf_counter() - start, 3),
                           self_distillation={"rounds": rounds})
    if main_process:
        write_json_atomic(out / "result.json", result)
    return result


STAGE_RUNNERS = {"self_training": run_self_training, "self_distillation": run_self_distillation}
