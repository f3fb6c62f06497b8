from __future__ import annotations

import pytest
import torch

from plmtune.mlm import IGNORE, MaskingCollator, TiedMLMHead, mlm_head_for
from plmtune.models import load_backbone, resolve_backbone, tiny_bert


def _items(tokenizer, n=200):
    text = "the quick brown fox jumps over the lazy dog and runs far away into the green forest today"
    ids = tokenizer(text)["input_ids"]
    return [{"input_ids": ids, "index": i} for i in range(n)]


def test_rate_and_80_10_10_split(tokenizer):
    collate = MaskingCollator(tokenizer, rate=0.15, seed=0)
    batch = collate(_items(tokenizer, 400))
    original = torch.tensor(_items(tokenizer, 1)[0]["input_ids"])
    chosen = batch["labels"] != IGNORE
    maskable = chosen.numel() - 2 * chosen.shape[0]  # [CLS] and [SEP] are never chosen
    assert chosen.sum().item() / maskable == pytest.approx(0.15, abs=0.015)
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(batch["labels"][chosen], original.expand_as(batch["input_ids"])[chosen])
    inputs = batch["input_ids"][chosen]
    targets = batch["labels"][chosen]
    n = len(inputs)
    assert (inputs == tokenizer.mask_token_id).sum().item() / n == pytest.approx(0.8, abs=0.04)
    kept = (inputs == targets).sum().item() / n
    assert kept == pytest.approx(0.1, abs=0.03)  # plus the rare random token equal to the original
    random = ((inputs != targets) & (inputs != tokenizer.mask_token_id)).sum().item() / n
    assert random == pytest.approx(0.1, abs=0.03)


def test_static_masks_repeat_across_epochs_and_dynamic_ones_do_not(tokenizer):
    items = _items(tokenizer, 8)
    static = MaskingCollator(tokenizer, mode="static", copies=1, seed=1)
    assert torch.equal(static(items)["input_ids"], static(items)["input_ids"])
    dynamic = MaskingCollator(tokenizer, mode="dynamic", seed=1)
    assert not torch.equal(dynamic(items)["input_ids"], dynamic(items)["input_ids"])
    cycling = MaskingCollator(tokenizer, mode="static", copies=2, seed=1)
    first, second, third = (cycling(items)["input_ids"] for _ in range(3))
    assert torch.equal(first, third) and not torch.equal(first, second)


def test_bad_masking_settings():
    with pytest.raises(ValueError, match="must sum to 1"):
        MaskingCollator(type("T", (), {"all_special_ids": []})(), split=(0.8, 0.1, 0.2))


def test_the_new_head_is_tied_to_the_word_embeddings():
    encoder = tiny_bert(vocab_size=120)
    head = mlm_head_for(encoder)
    assert isinstance(head, TiedMLMHead)
    assert head.decoder.weight is encoder.get_input_embeddings().weight
    assert head(torch.randn(2, 3, 32)).shape == (2, 3, 120)
    assert not head.decoder.bias.any() and torch.equal(head.dense.weight, torch.eye(32))  # documented init


def test_bundled_minilm_has_no_mlm_head_so_one_is_built_and_predictions_vary(tokenizer):
    _, encoder = load_backbone("minilm")
    head = mlm_head_for(encoder, resolve_backbone("minilm"))
    enc = tokenizer(["it was [MASK] .", "a terrible , boring [MASK] ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = head(encoder(**enc).last_hidden_state)
    assert logits.shape[-1] == tokenizer.vocab_size
    (b0, p0), (b1, p1) = (enc["input_ids"] == tokenizer.mask_token_id).nonzero().tolist()
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[b0, p0], logits[b1, p1], atol=1e-3)  # context changes the prediction
