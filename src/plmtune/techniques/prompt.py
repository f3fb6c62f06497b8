"""Prompt-based fine-tuning: classification as a cloze question answered by the MLM head.

Paper: Gao, Fisch & Chen, "Making Pre-trained Language Models Better Few-shot Learners" (LM-BFF,
ACL 2021), the prompt part of LiST (Wang et al., NAACL 2022 Findings). Each example is rendered
through a template with one mask slot, e.g. ``{text} It was {mask} .``; the score of class c is
the MLM logit of its label word at the mask (``great`` / ``terrible``), and training is
cross-entropy over those label-word logits. The classifier head is replaced by the MLM head.

* The MLM head comes from :func:`plmtune.mlm.mlm_head_for`: the backbone's trained head where its
  checkpoint has one; the bundled all-MiniLM-L6-v2 has none, so a BERT head is built with its
  decoder tied to the word embeddings and a freshly initialised transform (see ``mlm.py``).
* Only the label words' rows of the decoder are computed (a (hidden × classes) product instead
  of (hidden × vocabulary)): the same logits, without the 30k-wide projection.
* Label words must be single tokens of the tokenizer's vocabulary; a word that splits into
  pieces is rejected with the pieces shown (LM-BFF also uses single-token words). A word is
  tokenised as it stands after a space, as at the mask of a template: for byte-level BPE
  vocabularies (RoBERTa) that is ``Ġgreat``, not the word-initial ``great`` (LM-BFF does the same);
  WordPiece (BERT, MPNet) and SentencePiece vocabularies give the same token either way.
* Long texts are cut before the template is applied, so the mask slot and the template words
  always survive truncation (the longest text field loses tokens from its end).
* Built-in templates and words for the shared tasks follow LM-BFF's manual prompts, lower-cased
  for uncased vocabularies. Recipes may give their own.

Plug points: ``prepare_data`` (renders rows; needs the tokenizer) and ``prepare_model`` (swaps the
classifier for :class:`PromptClassifier` on the same encoder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RecipeError
from ..technique import Technique, TrainContext, register

# task -> (template, label words by class id); LM-BFF's manual prompts (Gao et al. 2021, Table 1).
BUILTIN: dict[str, tuple[str, list[str]]] = {
    "sst2": ("{text} It was {mask} .", ["terrible", "great"]),
    "subj": ("{text} This is {mask} .", ["subjective", "objective"]),
    "trec": ("{mask} : {text}", ["expression", "entity", "description", "human", "location", "number"]),
    "rte": ("{text} ? {mask} , {text_pair}", ["yes", "no"]),
    "mrpc": ("{text} {mask} , {text_pair}", ["no", "yes"]),
    "cola": ("{text} This is {mask} .", ["incorrect", "correct"]),
}
SLOT = re.compile(r"\{(text|text_pair|mask)\}|\[MASK\]")


@dataclass(frozen=True)
class PromptConfig:
    """Args:
    template: the pattern with ``{text}``, optional ``{text_pair}`` and one ``{mask}`` (or
        ``[MASK]``); empty = the built-in template of the task (sst2, subj, trec, rte, mrpc, cola).
    label_words: one single-token word per class, in class-id order; empty = the built-in words.
    """

    template: str = ""
    label_words: list[str] | None = None

    def __post_init__(self) -> None:
        if self.template:
            slots = [m.group(1) or "mask" for m in SLOT.finditer(self.template)]
            if slots.count("mask") != 1:
                raise ValueError(f"prompt.template needs exactly one {{mask}} slot, got {slots.count('mask')} "
                                 f"in {self.template!r}")
            if "text" not in slots:
                raise ValueError(f"prompt.template must contain {{text}}: {self.template!r}")
        if self.label_words is not None and len(set(self.label_words)) != len(self.label_words):
            raise ValueError(f"prompt.label_words must be distinct, got {self.label_words}")


def resolve_prompt(config: PromptConfig, task: str, num_labels: int) -> tuple[str, list[str]]:
    """The template and label words to use for `task` ('sst2/16-13' or 'sst2')."""
    base = task.split("/")[0]
    template, words = config.template, config.label_words
    if not template or words is None:
        if base not in BUILTIN:
            missing = "template" if not template else "label_words"
            raise RecipeError(f"prompt: no built-in prompt for task '{base}' (built-in: {', '.join(BUILTIN)}); "
                              f"set prompt.{missing} in the recipe.")
        template = template or BUILTIN[base][0]
        words = words if words is not None else BUILTIN[base][1]
    if len(words) != num_labels:
        raise RecipeError(f"prompt: {len(words)} label words {words} for a task with {num_labels} classes; "
                          "give one word per class, in class-id order.")
    return template, list(words)


def label_word_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """The vocabulary id of each label word, as it is tokenised after a space (see the module doc)."""
    ids = []
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) != 1 or tokenizer.convert_tokens_to_ids(pieces[0]) == tokenizer.unk_token_id:
            raise RecipeError(f"prompt: label word '{word}' is not one token of the vocabulary (it becomes "
                              f"{pieces}); pick a word that is.")
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


def render(row: dict, template: str, tokenizer: Any, max_length: int) -> str:
    """The row's text through the template, with text fields cut so the whole fits `max_length`."""
    fields = {name: row[name] for name in ("text", "text_pair") if name in row and f"{{{name}}}" in template}
    ids = {name: tokenizer(text, add_special_tokens=False)["input_ids"] for name, text in fields.items()}

    def fill(values: dict[str, str]) -> str:
        return SLOT.sub(lambda m: tokenizer.mask_token if (m.group(1) or "mask") == "mask" else values[m.group(1)],
                        template)

    skeleton = fill(dict.fromkeys(("text", "text_pair"), ""))
    overhead = len(tokenizer(skeleton)["input_ids"])  # template words + special tokens
    excess = overhead + sum(len(v) for v in ids.values()) - max_length
    if excess > sum(len(v) for v in ids.values()):
        raise RecipeError(f"prompt: the template alone needs {overhead} tokens, more than "
                          f"data.max_length = {max_length}.")
    if excess > 0:
        keep = {name: len(v) for name, v in ids.items()}
        for _ in range(excess):  # one token at a time from the currently longest field
            keep[max(keep, key=keep.get)] -= 1
        fields = {name: tokenizer.decode(ids[name][:keep[name]]) if keep[name] < len(ids[name]) else text
                  for name, text in fields.items()}
    return fill(fields)


class PromptClassifier(nn.Module):
    """Encoder + MLM head; logits are the head's label-word scores at the single mask position."""

    backbone_attribute = "encoder"

    def __init__(self, encoder: nn.Module, mlm_head: nn.Module, word_ids: list[int], mask_token_id: int):
        super().__init__()
        self.encoder, self.mlm_head = encoder, mlm_head
        self.num_labels, self.mask_token_id = len(word_ids), mask_token_id
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        at_mask = input_ids == self.mask_token_id
        if not torch.equal(at_mask.sum(1), torch.ones_like(at_mask[:, 0], dtype=torch.long)):
            raise RecipeError("prompt: every input needs exactly one mask token; an input text contains the "
                              "mask token itself, or the template lost its slot.")
        state = hidden[at_mask]  # (batch, hidden), one row per example in batch order
        head = self.mlm_head
        transformed = head.norm(nn.functional.gelu(head.dense(state)))
        # Through the decoder's own forward (the full vocabulary, <1% of the encoder's cost), so that
        # hooks on its layers — per-example gradients for LiST's re-weighting — see the bias in use.
        logits = head.decoder(transformed)[:, self.word_ids]
        return {"logits": logits, "pooled": state}


@register("prompt", PromptConfig)
class Prompt(Technique):
    inference = True  # new text is rendered into the template; the MLM head is part of the model
    conflicts_with = {
        "inject": "knowledge injection widens the classifier input, and a prompt model has no classifier layer",
        "reinit": "re-initialising top layers destroys what the MLM head reads at the mask",
    }

    def prepare_data(self, splits: dict[str, list[dict]], ctx: TrainContext) -> dict[str, list[dict]]:
        if ctx.tokenizer is None:
            raise RuntimeError("prompt.prepare_data needs the tokenizer in the context")
        if ctx.tokenizer.mask_token is None:
            raise RecipeError(f"prompt: the backbone '{ctx.recipe.model.backbone}' has a tokenizer without a mask "
                              "token, so there is no slot for the MLM head to fill; use a masked-language-model "
                              "backbone (BERT, RoBERTa, MPNet, ...).")
        template, words = resolve_prompt(self.config, ctx.task_name, ctx.num_labels)
        label_word_ids(ctx.tokenizer, words)  # reject bad words before any work
        limit = ctx.recipe.data.max_length
        out = {}
        for name, rows in splits.items():
            out[name] = []
            for row in rows:
                rendered = {k: v for k, v in row.items() if k != "text_pair"}
                rendered["text"] = render(row, template, ctx.tokenizer, limit)
                out[name].append(rendered)
        ctx.extras["prompt"] = {"template": template, "label_words": words}
        return out

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        from ..mlm import mlm_head_for
        from ..models import resolve_backbone

        _, words = resolve_prompt(self.config, ctx.task_name, ctx.num_labels)
        encoder = model.encoder
        source = resolve_backbone(ctx.recipe.model.backbone)
        head = mlm_head_for(encoder, source if Path(source).is_dir() else None)
        return PromptClassifier(encoder, head, label_word_ids(ctx.tokenizer, words),
                                ctx.tokenizer.mask_token_id)
