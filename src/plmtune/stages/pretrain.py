"""Further pre-training (the ``pretrain`` stage): masked-LM training of the backbone on task text (TAPT) or domain text (DAPT).

Sun et al. (2019, "How to Fine-Tune BERT for Text Classification") and Gururangan et al. (2020,
"Don't Stop Pretraining") found further MLM training on in-task or in-domain text before
fine-tuning the most reliable gain. This stage does that and writes a folder that ``plmtune run``
accepts as a backbone (``model.backbone: PATH``), with the trained MLM head beside it
(``mlm_head.safetensors``), which prompt-based methods then use instead of building a new one.

* Corpus: the task folder's train + unlabelled text (TAPT; dev and test are never read), or any
  .txt / .jsonl file (DAPT); at most ``max_texts`` (seeded sample).
* Masking (see :mod:`plmtune.mlm`): dynamic, static (``copies`` fixed masks) or selective
  (:mod:`plmtune.selective`); rate and the 80/10/10 split configurable.
* The MLM head: the backbone's own where it has one; all-MiniLM-L6-v2 has none, so the tied head
  of :func:`plmtune.mlm.mlm_head_for` is built and trained along.
* Stop rule: every ``eval_every`` steps the MLM loss on a held-out share of the corpus is
  measured with fixed masks (so evaluations compare); after ``patience`` evaluations without
  improvement training stops, and the weights of the best evaluation are saved. ``pretrain.json``
  logs every evaluation, the step count, the stop reason and the wall time.
* Several processes (Accelerate, e.g. torchrun): each rank reads its shard of the corpus and of
  the held-out texts; the held-out loss is summed across ranks, so all stop at the same step; the
  main process alone writes the checkpoint, the model and the record.
* A finished stage is reused: a run whose ``pretrain.json`` matches the configuration, the
  backbone and the corpus is not trained again (a re-run or a resumed bench skips it).
* An interrupted stage continues: at every evaluation a checkpoint (model, optimiser, schedule,
  position in the epoch, data-order and masking RNG states at the epoch start, global RNG
  states, the stop rule's state) is written atomically to ``out/checkpoint``; a re-run with the
  same fingerprint resumes from it and ends exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..config import BATCH_SIZE, LR, MAX_LENGTH, MAX_STEPS, WARMUP_RATIO, WEIGHT_DECAY, DataConfig
from ..data import _decode, find_split_file, read_records
from ..engine import checkpoint
from ..engine.best import BestTracker, lower, state_copy
from ..engine.optim import default_param_groups, linear_schedule, make_adamw
from ..errors import DataError, TrainingError
from ..mlm import IGNORE, MaskingCollator, mlm_head_for
from ..models import load_backbone, resolve_backbone
from ..rundir import write_json_atomic
from ..selective import importance_weights
from ..validate import bounded, check_declared, one_of
from .base import PreResult, RunSpec, Stage, register_stage


@dataclass(frozen=True)
class PretrainConfig:
    """Further pre-training before fine-tuning (plmtune.stages.pretrain): masked-LM on task or domain text.

    Args:
    corpus: empty = the task folder's own text (TAPT: train + unlabeled.jsonl, never dev/test);
        or a .txt file (one text per line) or .jsonl file (a text field) of domain text (DAPT).
    masking: 'dynamic' (a new mask each time a text is seen), 'static' (`copies` fixed masks per
        text, made once) or 'selective' (mask the tokens a task model finds important).
    rate / split: share of tokens masked; their [MASK] / random-token / unchanged split.
    copies: fixed masked copies per text for 'static'.
    max_steps / batch_size / lr / warmup_ratio / weight_decay / max_length: the MLM training (the
        optimiser knobs are declared once, with training's, in plmtune.config).
    max_texts: at most this many corpus texts (a seeded sample).
    heldout: share of texts held out (at most 1,000) for the stop rule.
    eval_every / patience: evaluate the held-out MLM loss every this many steps; stop after
        `patience` evaluations without improvement (0 = never stop early); the best is kept.
    important_share: 'selective' only; share of each labelled text's tokens labelled important.
    """

    corpus: str = ""
    masking: str = one_of("dynamic", ("dynamic", "static", "selective"))
    rate: float = bounded(0.15, 0.0, 1.0, lo_open=True, hi_open=True)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    copies: int = bounded(10, 1, 1000)
    max_steps: int = MAX_STEPS(500, lo=1)
    batch_size: int = BATCH_SIZE(32)
    lr: float = LR(1e-4)
    warmup_ratio: float = WARMUP_RATIO(0.06)
    weight_decay: float = WEIGHT_DECAY(0.01)
    max_length: int = MAX_LENGTH(128)
    max_texts: int = bounded(20000, 2, 100_000_000)
    heldout: float = bounded(0.05, 0.0, 0.5, lo_open=True)
    eval_every: int = bounded(50, 1, 10_000_000)
    patience: int = bounded(3, 0, 100_000)
    important_share: float = bounded(0.2, 0.0, 1.0, lo_open=True)

    def __post_init__(self) -> None:
        check_declared(self, "pretrain")
        if len(self.split) != 3 or any(x < 0 for x in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"pretrain.split must be three non-negative shares summing to 1, got {self.split}")


def read_corpus(cfg: PretrainConfig, task_dir: Path | None, data: DataConfig, seed: int) -> list[str]:
    """The texts to pre-train on (TAPT: the task's train + unlabelled text; DAPT: cfg.corpus)."""
    texts: list[str] = []
    if cfg.corpus:
        path = Path(cfg.corpus).expanduser()
        if not path.is_file():
            raise DataError(path, "the pre-training corpus does not exist (pretrain.corpus).")
        if path.suffix == ".jsonl":
            for line, record in read_records(path):
                value = record.get(data.text_field)
                if not isinstance(value, str):
                    raise DataError(path, "needs a string text field for pre-training.", line, data.text_field)
                texts.append(value)
        else:
            # _decode: a non-UTF-8 byte is a DataError naming the file and line, as for task files
            texts = [t.strip() for t in _decode(path).split("\n") if t.strip()]
    else:
        if task_dir is None or not Path(task_dir).is_dir():
            raise DataError(Path(str(task_dir)), "TAPT needs a task folder (or set pretrain.corpus).")
        for split in ("train", "unlabeled"):
            path = find_split_file(Path(task_dir), split)
            if path is None:
                continue
            for _, record in read_records(path):
                texts += [record[f] for f in (data.text_field, data.text_pair_field) if isinstance(record.get(f), str)]
    if len(texts) < 2:
        raise DataError(Path(cfg.corpus or str(task_dir)), f"the pre-training corpus has {len(texts)} text(s); "
                                                           "it needs at least 2 (one is held out).")
    if len(texts) > cfg.max_texts:
        texts = random.Random(seed).sample(texts, cfg.max_texts)
    return texts


class MaskedLM(nn.Module):
    """Encoder + MLM head; returns the mean cross-entropy over the masked positions."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        chosen = labels != IGNORE
        logits = self.head(hidden[chosen])  # only masked positions reach the 30k-wide decoder
        if not bool(chosen.any()):
            # No token of this batch was masked (short texts): the mean would be 0/0 = NaN. A zero
            # loss still joined to the graph gives zero gradients, and every rank still steps together.
            return logits.float().sum() * 0.0
        return nn.functional.cross_entropy(logits.float(), labels[chosen])


def _fingerprint(cfg: PretrainConfig, backbone: str, texts: list[str], seed: int) -> str:
    digest = hashlib.sha256(json.dumps({"cfg": asdict(cfg), "backbone": backbone, "seed": seed}).encode())
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def pretrain(cfg: PretrainConfig, backbone: str, texts: list[str], out: str | Path, seed: int = 0,
             progress: bool = False, task_dir: Path | None = None, data: DataConfig | None = None) -> dict[str, Any]:
    """Train the MLM on `texts`; write ``out/model`` (a backbone) and ``out/pretrain.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(cfg, backbone, texts, seed)
    record_file = out / "pretrain.json"
    if record_file.is_file() and (out / "model" / "config.json").is_file():
        try:
            previous = json.loads(record_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            previous = None  # a damaged record: pre-train again rather than trust it
        if isinstance(previous, dict) and previous.get("fingerprint") == fingerprint:
            # Already done with this configuration, backbone and corpus. The backbone is always this
            # folder's model/, never a path read from the file (a planted record could point anywhere).
            return {**previous, "model": str(out / "model")}
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.is_main_process:
        record_file.unlink(missing_ok=True)
    set_seed(seed)
    start = time.perf_counter()
    tokenizer, encoder = load_backbone(backbone)
    source = resolve_backbone(backbone)
    model = MaskedLM(encoder, mlm_head_for(encoder, source if Path(source).is_dir() else None))

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_heldout = min(1000, max(1, round(cfg.heldout * len(texts))))
    ids = tokenizer([texts[i] for i in order], truncation=True, max_length=cfg.max_length)["input_ids"]
    items = [{"input_ids": x, "index": i} for i, x in enumerate(ids)]
    heldout, train = items[:n_heldout], items[n_heldout:]
    if cfg.masking == "selective":
        weights = importance_weights([x["input_ids"] for x in train], task_dir, data or DataConfig(), backbone,
                                     seed, cfg.important_share, tokenizer)
        for item, w in zip(train, weights):
            item["mask_weights"] = w
    masking = MaskingCollator(tokenizer, cfg.rate, tuple(cfg.split), cfg.masking, cfg.copies, seed)
    fixed = MaskingCollator(tokenizer, cfg.rate, tuple(cfg.split), "static", 1, seed + 1)  # same masks each eval
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                         collate_fn=masking)
    heldout_loader = torch.utils.data.DataLoader(heldout, batch_size=64, collate_fn=fixed)
    optimizer = make_adamw(default_param_groups(model, cfg.lr, cfg.weight_decay), cfg.lr, fused=True)
    model, optimizer, loader, heldout_loader = accelerator.prepare(model, optimizer, loader, heldout_loader)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)

    bare, elapsed, checkpoint_dir = accelerator.unwrap_model(model), _Elapsed(), out / "checkpoint"
    marker = checkpoint_dir / "fingerprint"
    if accelerator.is_main_process and (not marker.is_file() or marker.read_text() != fingerprint):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # none, or another configuration's
        checkpoint_dir.mkdir(parents=True)
        marker.write_text(fingerprint)
    accelerator.wait_for_everyone()
    loaded = checkpoint.load(checkpoint_dir, bare, optimizer, scheduler, [elapsed])
    state, pending_rng = loaded if loaded else (checkpoint.LoopState(), None)
    start -= elapsed.seconds
    stopped = "max_steps"
    tracker = BestTracker(lower("heldout_loss"), cfg.patience, holder=state)  # a NaN loss is never the best
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="pretrain", disable=not progress)
    replay = checkpoint.EpochReplay(state, generator, pending_rng, keep=[masking])  # same order and masks
    while state.step < cfg.max_steps and stopped == "max_steps":
        model.train()
        for index, batch in replay(loader):
            loss = model(**batch)
            if not math.isfinite(loss.item()):  # as fine-tuning does: never go on, nor save, on NaN/inf
                raise TrainingError(
                    f"The pre-training (MLM) loss became {loss.item()} at step {state.step + 1}. Likely causes: "
                    f"texts too short to mask any token (a batch with no masked token has no loss), or "
                    f"pretrain.lr = {cfg.lr:g} too high. Nothing was saved from this run.")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step, state.position = state.step + 1, index + 1
            bar.update(1)
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                value = _heldout_loss(model, heldout_loader, accelerator)
                if not math.isfinite(value):
                    raise TrainingError(
                        f"The held-out MLM loss is {value} at step {state.step}: the {len(heldout)} held-out "
                        "text(s) are too short to mask any token (0/0), or training diverged. Give the corpus more "
                        "and longer texts (one text per line). Nothing was saved from this run.")
                state.history.append({"step": state.step, "train_loss": loss.item(), "heldout_loss": value})
                bar.set_postfix(heldout=f"{value:.3f}")
                if not tracker.offer({"heldout_loss": value, "step": state.step}, lambda: state_copy(bare)) \
                        and tracker.exhausted:
                    stopped = "patience"
                    break
                elapsed.seconds = time.perf_counter() - start
                if accelerator.is_main_process:
                    checkpoint.save(checkpoint_dir, bare, optimizer, scheduler, [elapsed], state)
            if state.step >= cfg.max_steps:
                break
        else:
            state.epoch, state.position = state.epoch + 1, 0
    bar.close()
    if state.best_state is not None:
        bare.load_state_dict(state.best_state)
    record = {"fingerprint": fingerprint, "backbone": backbone, "masking": cfg.masking, "config": asdict(cfg),
              "texts": len(train), "heldout_texts": len(heldout), "steps": state.step,
              "best_step": state.best["step"] if state.best else state.step,
              "best_heldout_loss": state.best["heldout_loss"] if state.best else math.inf,
              "stopped": stopped, "seconds": round(time.perf_counter() - start, 2),
              "history": state.history, "model": str(out / "model")}
    if accelerator.is_main_process:  # every rank holds the same weights; one writes
        _save(bare, tokenizer, out / "model")
        write_json_atomic(record_file, record)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: the record and the model replace it
    accelerator.wait_for_everyone()  # no rank goes on (to fine-tuning, say) before the backbone is written
    return record


class _Elapsed:
    """Wall time spent before a checkpoint, kept in the checkpoint's `techniques` slot."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = state["seconds"]


@torch.inference_mode()
def _heldout_loss(model: nn.Module, loader: Any, accelerator: Any) -> float:
    """The mean of the held-out batches' MLM losses over every rank's shard — the same number on
    every rank, so that all ranks take the same stop decision (else one stops while another waits).
    `accelerator` None: this process's loader only."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device if accelerator else "cpu")
    for batch in loader:  # [sum of batch losses, number of batches]
        if bool((batch["labels"] != IGNORE).any()):  # a batch with no masked token says nothing
            total[0] += model(**batch).double()
            total[1] += 1
    model.train()
    if accelerator is not None:
        total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1])


def _save(model: MaskedLM, tokenizer: Any, directory: Path) -> None:
    """The encoder as a backbone folder, and the MLM head beside it (its decoder is the embeddings)."""
    tmp = directory.with_name(directory.name + ".tmp")
    model.encoder.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items() if k != "decoder.weight"},
              str(tmp / "mlm_head.safetensors"))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def run_pretrain_stage(cfg: PretrainConfig, backbone: str, task_dir: str | Path | None, out: str | Path,
                       data: DataConfig, seed: int, progress: bool = False) -> dict[str, Any]:
    """Read the corpus and pre-train into ``out`` (a recipe's ``pretrain:`` section, or `plmtune pretrain`)."""
    task_dir = Path(task_dir) if task_dir is not None else None
    texts = read_corpus(cfg, task_dir, data, seed)
    return pretrain(cfg, backbone, texts, out, seed, progress, task_dir, data)


@register_stage("pretrain", PretrainConfig)
class Pretrain(Stage):
    """Runs before the training stage; the training stage then starts from the pre-trained backbone."""

    kind = "pre"
    tunable = False  # every trial would pre-train again: pre-train once, then tune on its backbone
    summary = "further masked-LM pre-training on task (TAPT) or domain (DAPT) text before training"

    def run(self, spec: RunSpec, cfg: PretrainConfig) -> PreResult:
        record = run_pretrain_stage(cfg, spec.recipe.model.backbone, spec.task_dir, spec.out / "pretrain",
                                    spec.recipe.data, spec.seed, spec.progress)
        summary = {k: record[k] for k in ("masking", "texts", "heldout_texts", "steps", "best_step",
                                          "best_heldout_loss", "stopped", "seconds", "model")}
        return PreResult(backbone=record["model"], summary=summary)
