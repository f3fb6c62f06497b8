"""What a technique reads from the architecture, checked on BERT, MPNet and RoBERTa (see conftest.py).

Each of these found a BERT-only assumption: token type ids where the tokenizer makes none, MPNet's
shared relative-position bias treated as part of the head, label words tokenised word-initially
where a byte-level BPE marks the word after a space ('Ġgood'), a checkpoint's MLM head looked for
under BERT's names only, and LoRA's default targets (BERT's query/value) absent from MPNet (q/v).
"""

from __future__ import annotations

import pytest
import torch

from plmtune.data import EncodedSplit
from plmtune.models import SequenceClassifier


@pytest.mark.parametrize("truncation", ["head", "tail", "head_tail"])
def test_token_type_ids_only_where_the_tokenizer_makes_them(arch_tokenizer, truncation):
    rows = [{"text": "good great film " * 30, "label": 1}, {"text": "bad meal", "label": 0}]
    items = EncodedSplit(rows, arch_tokenizer, 16, truncation).items
    wanted = "token_type_ids" in arch_tokenizer.model_input_names
    assert all(("token_type_ids" in item) == wanted for item in items)
    assert len(items[0]["input_ids"]) == 16


def test_every_backbone_parameter_lies_below_the_head_in_llrd_and_gradual_unfreezing(tiny_arch_encoder):
    from plmtune.techniques.gradual_unfreeze import set_trainable_depth
    from plmtune.techniques.llrd import layer_index

    model = SequenceClassifier(tiny_arch_encoder(num_layers=2), 2)
    depths = {name: layer_index(name, 2) for name, _ in model.named_parameters()}
    assert {d for n, d in depths.items() if n.startswith("classifier.")} == {3}
    assert {d for n, d in depths.items() if n.startswith("encoder.")} == {0, 1, 2}
    if "encoder.encoder.relative_attention_bias.weight" in depths:  # MPNet: feeds every layer
        assert depths["encoder.encoder.relative_attention_bias.weight"] == 0
    set_trainable_depth(model, 1)  # the head only
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_label_words_are_the_tokens_found_at_the_mask(arch_tokenizer):
    from plmtune.techniques.prompt import label_word_ids

    for word in ("good", "bad"):
        in_context = arch_tokenizer("good film It was " + word + " .")["input_ids"]
        masked = arch_tokenizer("good film It was " + arch_tokenizer.mask_token + " .")["input_ids"]
        assert len(in_context) == len(masked)
        at_mask = in_context[masked.index(arch_tokenizer.mask_token_id)]
        assert label_word_ids(arch_tokenizer, [word]) == [at_mask], arch_tokenizer.convert_ids_to_tokens([at_mask])


def test_the_checkpoints_own_mlm_head_is_loaded(tiny_arch_encoder, tmp_path):
    from transformers import AutoModelForMaskedLM

    from plmtune.mlm import mlm_head_for

    encoder = tiny_arch_encoder()
    torch.manual_seed(3)
    masked_lm = AutoModelForMaskedLM.from_config(encoder.config)
    masked_lm.save_pretrained(tmp_path)
    saved = {k: v for k, v in masked_lm.state_dict().items() if "dense.weight" in k and "layer." not in k}
    (theirs,) = [v for k, v in saved.items() if k.startswith(("cls.", "lm_head."))]
    head = mlm_head_for(encoder, str(tmp_path))
    assert torch.equal(head.dense.weight, theirs)
    assert not torch.equal(mlm_head_for(encoder, None).dense.weight, theirs)  # a fresh head: identity


def test_lora_adapts_the_query_and_value_projections_by_default(tiny_arch_encoder):
    from plmtune.techniques.lora import LoRA, LoRAConfig

    model = SequenceClassifier(tiny_arch_encoder(num_layers=2), 2)
    model = LoRA(LoRAConfig(r=2)).prepare_model(model, None)
    adapted = sorted({n.split(".lora_A")[0].rsplit(".", 1)[1] for n, _ in model.named_parameters() if "lora_A" in n})
    names = {"bert": ["query", "value"], "roberta": ["query", "value"], "mpnet": ["q", "v"]}
    assert adapted == names[model.encoder.config.model_type]
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == 2 * 2
