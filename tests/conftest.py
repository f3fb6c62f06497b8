"""Shared fixtures. Unit tests use a tiny random BERT; `slow` tests use the real model and data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs on pytest-xdist workers (`-n auto` in pyproject.toml): split the cores between them
# so that n workers do not each start one torch thread per core (and the processes the tests spawn,
# which inherit the variable, neither). Set before torch is imported, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import torch  # noqa: E402

from shared_data import REPO, SHARED_DATA, shared_dataset  # noqa: F401  (tests import it from shared_data)


@pytest.fixture(scope="session")
def tokenizer():
    from plmtune.models import load_backbone

    tok, _ = load_backbone("minilm")
    return tok


@pytest.fixture
def tiny_model():
    from plmtune.models import SequenceClassifier, tiny_bert

    return SequenceClassifier(tiny_bert(vocab_size=30522, seed=0), num_labels=2, dropout=0.0)


@pytest.fixture
def tiny_backbone(monkeypatch, tokenizer):
    """Make `plmtune run` train a tiny random BERT (with the real tokenizer) instead of MiniLM."""
    from plmtune.models import tiny_bert

    def use(num_layers: int = 2) -> None:
        monkeypatch.setattr("plmtune.assemble.load_backbone",
                            lambda name: (tokenizer, tiny_bert(vocab_size=30522, num_layers=num_layers, seed=0)))

    return use


@pytest.fixture
def write_jsonl(tmp_path):
    import json

    def write(name: str, rows: list, folder: Path | None = None) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def toy_task(tmp_path, write_jsonl):
    """A learnable toy task: 'good ...' is positive, 'bad ...' negative."""
    import random

    rng = random.Random(0)
    nouns = ["film", "meal", "phone", "book", "song", "hotel", "car", "game", "show", "chair"]

    def rows(n):
        out = []
        for i in range(n):
            pos = i % 2 == 0
            out.append({"text": f"{'good great' if pos else 'bad awful'} {rng.choice(nouns)}", "label": int(pos)})
        return out

    folder = tmp_path / "toy"
    write_jsonl("train.jsonl", rows(32), folder)
    write_jsonl("dev.jsonl", rows(16), folder)
    write_jsonl("test.jsonl", rows(16), folder)
    return folder


@pytest.fixture(autouse=True)
def _torch_threads():
    # Keep unit tests predictable on the 2-core machines; restore afterwards.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory, tokenizer):
    """A tiny randomly initialised Marian translation model (with the BERT tokenizer): mechanics only."""
    from transformers import MarianConfig, MarianMTModel

    folder = tmp_path_factory.mktemp("marian")
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                          forced_eos_token_id=tokenizer.sep_token_id)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def saved_toy_model(toy_task, tmp_path, tiny_backbone):
    """A saved model (plmtune.saved format) of a tiny BERT on the toy task: (model folder, task folder)."""
    from plmtune.assemble import prepare
    from plmtune.data import load_task
    from plmtune.loading import load_recipe

    def make(overrides=(), task=None, name="model"):
        tiny_backbone()
        task = task or toy_task
        recipe = load_recipe("baseline", list(overrides))
        prepared = prepare(recipe, load_task(task, recipe.data), 0)
        with torch.no_grad():
            prepared.model.classifier.weight.normal_(0, 1.0)
        prepared.save(prepared.model, tmp_path / name)
        return tmp_path / name, task

    return make


def pytest_collection_modifyitems(items):
    # The `slow` tests first (a stable sort keeps each file's order): on xdist workers the long ones
    # then start at once instead of leaving one worker busy alone at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
