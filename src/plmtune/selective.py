"""Selective masking (Gu et al., EMNLP 2020, "Train No Evil"): mask the tokens that matter for the task.

1. A task model — the backbone with plmtune's head, fine-tuned on the labelled train split with
   the ``baseline`` recipe — scores each token of each labelled text by how much removing it
   lowers the model's probability of the gold label (leave-one-out, as in the paper).
2. In each labelled text, the top ``important_share`` of tokens with a positive score are
   labelled important.
3. A token classifier learns those labels. The paper fine-tunes a BERT token classifier; here,
   a documented cheaper approximation: logistic regression on the *frozen* backbone's contextual
   token states (one linear layer), which scores any corpus cheaply in one forward pass.
4. Each corpus token gets its predicted probability of being important; the masking collator
   draws masked positions in proportion to it (see :mod:`plmtune.mlm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .assemble import prepare
from .config import SECTIONS, DataConfig, Recipe
from .data import load_task
from .errors import DataError
from .models import load_backbone
from .recipe_io import read_raw_recipe
from .rundir import MetricLog
from .validate import build_dataclass


def task_model_recipe(backbone: str) -> Recipe:
    """The shipped ``baseline`` recipe on `backbone` (it has no techniques and no stage)."""
    raw = read_raw_recipe("baseline")
    raw["model"] = {**(raw.get("model") or {}), "backbone": backbone}
    return Recipe(name=str(raw.get("name", "baseline")),
                  **{name: build_dataclass(cls, raw.get(name), name) for name, cls in SECTIONS.items()})


def _task_model(task_dir: Path, data: DataConfig, backbone: str, seed: int):
    recipe = task_model_recipe(backbone)
    task = load_task(task_dir, data, need=("train",))
    # The caller seeded every RNG already; seeding again here would change the masks that follow.
    prepared = prepare(recipe, task, seed, seed_rng=False)
    fitted = prepared.fit(MetricLog(None), cfg=recipe.train)
    return fitted.bare_model().cpu().eval(), prepared.ctx.tokenizer, prepared.splits["train"]


def _pad(sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-pad token id lists (id 0) into input_ids and attention_mask."""
    width = max(len(s) for s in sequences)
    return {"input_ids": torch.tensor([s + [0] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])}


@torch.inference_mode()
def leave_one_out_scores(model: Any, ids: list[int], label: int, special: set[int]) -> list[float]:
    """For each token: P(label | text) − P(label | text without that token); 0 for special tokens."""
    positions = [i for i, t in enumerate(ids) if t not in special]
    variants = [ids] + [ids[:i] + ids[i + 1:] for i in positions]
    probs = model(**_pad(variants))["logits"].float().softmax(-1)[:, label]
    scores = [0.0] * len(ids)
    for j, i in enumerate(positions):
        scores[i] = float(probs[0] - probs[j + 1])
    return scores


def important_labels(scores: list[float], share: float) -> list[int]:
    """1 for the top `share` of tokens by a positive score, else 0."""
    positive = sorted((s for s in scores if s > 0), reverse=True)
    keep = max(1, round(share * len(scores))) if positive else 0
    threshold = positive[min(keep, len(positive)) - 1] if keep else float("inf")
    return [int(s >= threshold and s > 0) for s in scores]


@torch.inference_mode()
def _states(encoder: Any, sequences: list[list[int]], batch: int = 64) -> list[torch.Tensor]:
    """Contextual token states of each sequence (on the CPU), read on the GPU where there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    out = []
    for start in range(0, len(sequences), batch):
        chunk = sequences[start:start + batch]
        hidden = encoder(**{k: v.to(device) for k, v in _pad(chunk).items()}).last_hidden_state.float().cpu()
        out += [hidden[i, :len(s)] for i, s in enumerate(chunk)]
    return out


def train_token_classifier(states: list[torch.Tensor], labels: list[list[int]], steps: int = 300,
                           seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    x = torch.cat(states)
    y = torch.tensor([v for row in labels for v in row], dtype=torch.float32)
    probe = torch.nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    positive = y.mean().clamp(1e-3, 1 - 1e-3)
    for _ in range(steps):  # full batch: a few thousand tokens
        loss = F.binary_cross_entropy_with_logits(probe(x).squeeze(-1), y, pos_weight=(1 - positive) / positive)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def importance_weights(corpus_ids: list[list[int]], task_dir: Path | None, data: DataConfig, backbone: str,
                       seed: int, share: float, tokenizer: Any) -> list[list[float]]:
    """Per-token probabilities of being task-important for every corpus sequence (steps 1-4 above)."""
    if task_dir is None or not Path(task_dir).is_dir():
        raise DataError(Path(str(task_dir)), "selective masking needs the task's labelled train split to find "
                                            "important tokens (pretrain.masking: selective).")
    model, _, rows = _task_model(Path(task_dir), data, backbone, seed)
    special = set(tokenizer.all_special_ids)
    labelled_ids, labels = [], []
    for row in rows:
        ids = tokenizer(row["text"], row.get("text_pair"), truncation=True, max_length=data.max_length)["input_ids"]
        labelled_ids.append(ids)
        labels.append(important_labels(leave_one_out_scores(model, ids, row["label"], special), share))
    _, encoder = load_backbone(backbone)  # the frozen pretrained encoder reads the corpus
    encoder.eval()
    probe = train_token_classifier(_states(encoder, labelled_ids), labels, seed=seed)
    with torch.inference_mode():
        return [torch.sigmoid(probe(h)).squeeze(-1).tolist() for h in _states(encoder, corpus_ids)]
