"""Prompt-based fine-tuning: rendering, label words, truncation, the classifier's logits."""

from __future__ import annotations

import json

import pytest
import torch

from plmtune.loading import load_recipe
from plmtune.errors import RecipeError
from plmtune.techniques.prompt import BUILTIN, PromptConfig, label_word_ids, render, resolve_prompt


def test_templates_render_with_the_mask_and_both_texts(tokenizer):
    row = {"text": "A gripping film", "text_pair": "It is dull", "label": 1}
    assert render(row, "{text} It was {mask} .", tokenizer, 128) == "A gripping film It was [MASK] ."
    assert render(row, "{text} ? [MASK] , {text_pair}", tokenizer, 128) == "A gripping film ? [MASK] , It is dull"


def test_label_words_map_to_their_vocabulary_ids(tokenizer):
    assert label_word_ids(tokenizer, ["terrible", "great"]) == tokenizer.convert_tokens_to_ids(["terrible", "great"])
    for task, (template, words) in BUILTIN.items():  # every built-in prompt is usable with the bundled vocab
        assert len(label_word_ids(tokenizer, words)) == len(words), task


def test_multi_token_label_words_are_rejected_with_their_pieces(tokenizer):
    with pytest.raises(RecipeError, match=r"'xylophonists' is not one token.*\['x', '##yl'"):
        label_word_ids(tokenizer, ["xylophonists", "great"])


def test_long_texts_are_cut_so_the_mask_survives(tokenizer):
    row = {"text": "word " * 300, "text_pair": "other " * 300}
    text = render(row, "{text} ? {mask} , {text_pair}", tokenizer, 40)
    ids = tokenizer(text)["input_ids"]
    assert len(ids) <= 40 and ids.count(tokenizer.mask_token_id) == 1
    assert text.startswith("word") and text.rstrip().endswith("other")  # both texts keep their start


def test_config_and_task_checks():
    with pytest.raises(ValueError, match="exactly one"):
        PromptConfig(template="{text} {mask} {mask}")
    with pytest.raises(ValueError, match="must contain"):
        PromptConfig(template="It was {mask}")
    with pytest.raises(RecipeError, match="no built-in prompt for task 'mytask'"):
        resolve_prompt(PromptConfig(), "mytask", 2)
    with pytest.raises(RecipeError, match="3 label words"):
        resolve_prompt(PromptConfig(label_words=["a", "b", "c"]), "sst2/16-13", 2)
    assert resolve_prompt(PromptConfig(), "sst2/16-13", 2) == BUILTIN["sst2"]


def test_logits_are_the_mlm_scores_of_the_label_words(tokenizer, tiny_model):
    from plmtune.mlm import mlm_head_for
    from plmtune.techniques.prompt import PromptClassifier

    encoder = tiny_model.encoder
    head = mlm_head_for(encoder)
    torch.nn.init.normal_(head.decoder.bias)  # non-zero bias, so picking the right rows matters
    words = label_word_ids(tokenizer, ["terrible", "great"])
    model = PromptClassifier(encoder, head, words, tokenizer.mask_token_id).eval()
    batch = tokenizer(["good film It was [MASK] .", "[MASK] : what is it ?"], padding=True, return_tensors="pt")
    logits = model(**batch)["logits"]
    full = head(encoder(**batch).last_hidden_state)  # (batch, seq, vocab)
    at = (batch["input_ids"] == tokenizer.mask_token_id).nonzero().tolist()
    expected = torch.stack([full[b, p, words] for b, p in at])
    assert torch.allclose(logits, expected, atol=1e-5)
    with pytest.raises(RecipeError, match="exactly one mask"):
        model(**tokenizer(["no mask here"], return_tensors="pt"))


@pytest.mark.slow
def test_prompt_model_on_the_real_model_predicts_more_than_one_class(tokenizer):
    from plmtune.data import EncodedSplit, PadCollator
    from plmtune.models import SequenceClassifier, load_backbone
    from plmtune.technique import TrainContext
    from plmtune.techniques.prompt import Prompt
    from tests.conftest import shared_dataset

    rows = [json.loads(line) for line in (shared_dataset("sst2") / "dev.jsonl").read_text().splitlines()[:128]]
    _, encoder = load_backbone("minilm")
    ctx = TrainContext(recipe=load_recipe("prompt"), seed=0, num_labels=2, task_name="sst2", tokenizer=tokenizer)
    technique = Prompt(PromptConfig())
    rendered = technique.prepare_data({"test": rows}, ctx)["test"]
    model = technique.prepare_model(SequenceClassifier(encoder, 2), ctx).eval()
    split = EncodedSplit(rendered, tokenizer, 128)
    with torch.no_grad():
        logits = model(**PadCollator(0)([split[i] for i in range(len(split))]))["logits"]
    predictions = logits.argmax(-1)
    assert 0 < predictions.float().mean() < 1, "initial predictions are constant"
