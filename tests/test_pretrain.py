"""Further pre-training: corpus, selective masking, the stop rule, and the checkpoint as a backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plmtune.config import DataConfig
from plmtune.loading import load_recipe
from plmtune.stages.pretrain import PretrainConfig
from plmtune.errors import DataError
from plmtune.mlm import MaskingCollator
from plmtune.stages.pretrain import pretrain, read_corpus
from plmtune.selective import important_labels, leave_one_out_scores


@pytest.fixture
def tiny_pretrain(monkeypatch, tokenizer):
    """Pre-train a tiny random BERT (real tokenizer) instead of MiniLM; saved folders load for real."""
    from plmtune import assemble, models
    from plmtune.stages import pretrain as pretrain_module
    from plmtune.models import tiny_bert

    real = models.load_backbone

    def load(name):
        return real(name) if Path(str(name)).is_dir() else (tokenizer, tiny_bert(vocab_size=30522, seed=0))

    monkeypatch.setattr(pretrain_module, "load_backbone", load)
    monkeypatch.setattr(assemble, "load_backbone", load)


def test_selective_masking_prefers_important_tokens(tokenizer):
    ids = tokenizer("a b c d e f g h i j k l m n o p q r s t")["input_ids"]  # 20 maskable tokens
    weights = [0.0] + [0.9 if i in (3, 7) else 0.01 for i in range(1, len(ids) - 1)] + [0.0]
    collator = MaskingCollator(tokenizer, rate=0.1, mode="selective", seed=0)
    hits = torch.zeros(len(ids))
    for _ in range(400):
        labels = collator([{"input_ids": ids, "index": 0, "mask_weights": weights}])["labels"][0]
        assert int((labels != -100).sum()) == 2  # round(0.1 x 20) positions every time
        hits += (labels != -100).float()
    assert hits[[3, 7]].mean() > 10 * hits[[i for i in range(1, len(ids) - 1) if i not in (3, 7)]].mean()
    assert hits[0] == 0 and hits[-1] == 0  # [CLS] and [SEP] are never masked


class _KeywordModel(torch.nn.Module):
    """Positive exactly when token 42 is present: the ideal task model for a constructed example."""

    def forward(self, input_ids, attention_mask):
        present = ((input_ids == 42) & attention_mask.bool()).any(1).float()
        return {"logits": torch.stack([-3 * present, 3 * present], dim=1)}


def test_leave_one_out_scores_single_out_the_decisive_token():
    ids = [101, 7, 42, 9, 11, 102]
    scores = leave_one_out_scores(_KeywordModel(), ids, label=1, special={101, 102})
    assert max(range(len(ids)), key=scores.__getitem__) == 2 and scores[2] == pytest.approx(0.4975, abs=1e-3)
    assert scores[0] == scores[-1] == 0.0
    assert important_labels(scores, share=0.2) == [0, 0, 1, 0, 0, 0]


def _task(root: Path) -> Path:
    folder = root / "task"
    folder.mkdir()
    for split, prefix in (("train", "train"), ("dev", "dev"), ("test", "test")):
        rows = [{"text": f"{prefix} text number {i} {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(16)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "unlabeled.jsonl").write_text("".join(json.dumps({"text": f"pool sentence {i}"}) + "\n" for i in range(40)))
    return folder


def test_tapt_corpus_is_train_and_unlabelled_never_dev_or_test(tmp_path):
    texts = read_corpus(PretrainConfig(), _task(tmp_path), DataConfig(), seed=0)
    assert len(texts) == 56 and not any(t.startswith(("dev", "test")) for t in texts)
    corpus = tmp_path / "domain.txt"
    corpus.write_text("one line\n\nanother line\n")
    assert read_corpus(PretrainConfig(corpus=str(corpus)), None, DataConfig(), 0) == ["one line", "another line"]
    corpus.write_text("only one\n")
    with pytest.raises(DataError, match="has 1 text"):
        read_corpus(PretrainConfig(corpus=str(corpus)), None, DataConfig(), 0)
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(PretrainConfig(corpus=str(tmp_path / "nope.txt")), None, DataConfig(), 0)


def test_pretraining_lowers_heldout_loss_and_saves_a_backbone_with_its_head(tmp_path, tiny_pretrain):
    from plmtune.mlm import mlm_head_for
    from plmtune.models import load_backbone

    texts = [f"the {w} is on the {v}" for w in ("cat", "dog", "cup", "pen") for v in ("mat", "bed", "desk")] * 8
    cfg = PretrainConfig(max_steps=40, batch_size=16, lr=3e-3, eval_every=10, patience=0, heldout=0.1)
    record = pretrain(cfg, "minilm", texts, tmp_path / "pt", seed=0)
    losses = [h["heldout_loss"] for h in record["history"]]
    assert record["steps"] == 40 and len(losses) == 4 and min(losses) < losses[0]
    tokenizer, encoder = load_backbone(str(tmp_path / "pt" / "model"))  # loads as a backbone
    head = mlm_head_for(encoder, str(tmp_path / "pt" / "model"))
    assert not torch.equal(head.dense.weight, torch.eye(head.dense.weight.shape[0]))  # the trained head came back
    again = pretrain(cfg, "minilm", texts, tmp_path / "pt", seed=0)
    assert again["fingerprint"] == record["fingerprint"] and again["seconds"] == record["seconds"]  # reused


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_interrupted_pretraining_resumes_mid_epoch_and_ends_as_if_never_stopped(tmp_path, tiny_pretrain, monkeypatch,
                                                                                 masking):
    from safetensors.torch import load_file

    from plmtune.stages import pretrain as pretrain_module

    texts = [f"the {w} sat on a {v} today" for w in ("cat", "dog", "cup", "pen", "owl") for v in ("mat", "bed")] * 4
    # 38 training texts at batch 8: 5 batches an epoch, so the checkpoint at step 6 is mid-epoch
    cfg = PretrainConfig(max_steps=10, batch_size=8, lr=3e-3, eval_every=3, patience=0, heldout=0.05,
                         masking=masking, copies=2)
    whole = pretrain(cfg, "minilm", texts, tmp_path / "whole", seed=0)
    real_loss, calls = pretrain_module._heldout_loss, []

    def crash_at_the_third_evaluation(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args)

    monkeypatch.setattr(pretrain_module, "_heldout_loss", crash_at_the_third_evaluation)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, "minilm", texts, tmp_path / "run", seed=0)
    assert not (tmp_path / "run" / "pretrain.json").exists() and (tmp_path / "run" / "checkpoint").is_dir()
    calls.clear()
    monkeypatch.setattr(pretrain_module, "_heldout_loss", lambda *a: (calls.append(1), real_loss(*a))[1])
    resumed = pretrain(cfg, "minilm", texts, tmp_path / "run", seed=0)
    assert len(calls) == 2  # steps 9 and 10 only: the evaluations at 3 and 6 came from the checkpoint
    assert resumed["history"] == whole["history"] and resumed["steps"] == 10
    assert not (tmp_path / "run" / "checkpoint").exists()
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("whole", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_rule_stops_when_heldout_loss_stops_improving(tmp_path, tiny_pretrain):
    texts = [f"sentence {i} about {w}" for i in range(20) for w in ("rain", "sun")]
    cfg = PretrainConfig(max_steps=200, batch_size=8, lr=0.9, eval_every=2, patience=2)  # diverges fast
    record = pretrain(cfg, "minilm", texts, tmp_path / "pt", seed=0)
    assert record["stopped"] == "patience" and record["steps"] < 200
    assert record["best_step"] == min(record["history"], key=lambda h: h["heldout_loss"])["step"]


def test_pretrain_then_finetune_in_one_run(tmp_path, tiny_pretrain, monkeypatch):
    from plmtune import rundir
    from plmtune.run import run_recipe

    writes, real_write = [], rundir.write_json_atomic

    def counting(path, data):
        writes.append(Path(path).name)
        real_write(path, data)

    monkeypatch.setattr(rundir, "write_json_atomic", counting)
    monkeypatch.setattr("plmtune.run.write_json_atomic", counting)
    recipe = load_recipe("tapt", ["train.epochs=2", "pretrain.max_steps=6", "pretrain.batch_size=8",
                                  "pretrain.eval_every=3"])
    result = run_recipe(recipe, _task(tmp_path), tmp_path / "run", seed=0)
    assert writes.count("result.json") == 1  # written once, by the pipeline, with the recipe as written
    assert result["pretrain"]["steps"] == 6 and result["pretrain"]["texts"] > 0
    assert result["recipe"]["model"]["backbone"] == "minilm" and result["recipe"]["pretrain"]["max_steps"] == 6
    assert json.loads((tmp_path / "run" / "result.json").read_text())["pretrain"] == result["pretrain"]
    assert (tmp_path / "run" / "pretrain" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_selective_weights_on_real_sst2_favour_sentiment_words(tmp_path, tokenizer):
    from shared_data import shared_dataset
    from plmtune.fewshot import make_fewshot
    from plmtune.selective import importance_weights

    make_fewshot(shared_dataset("sst2"), tmp_path / "few", 16, [13])
    sentences = ["the film is wonderful and the acting is superb", "a dull , boring and awful movie",
                 "the plot of the film is terrible", "it is a great and funny story"]
    ids = [tokenizer(s)["input_ids"] for s in sentences]
    weights = importance_weights(ids, tmp_path / "few" / "16-13", DataConfig(), "minilm", 0, 0.2, tokenizer)
    sentiment = {"wonderful", "superb", "dull", "boring", "awful", "terrible", "great", "funny"}
    function = {"the", "is", "and", "a", "of", "it", ","}
    by_word = {}
    for seq, w in zip(ids, weights):
        for token, value in zip(tokenizer.convert_ids_to_tokens(seq), w):
            by_word.setdefault(token, []).append(value)
    mean = lambda words: sum(sum(by_word[x]) / len(by_word[x]) for x in words) / len(words)  # noqa: E731
    assert mean(sentiment) > mean(function)


def test_pretrain_command_writes_a_backbone_folder(tmp_path, tiny_pretrain, capsys):
    from plmtune.cli import main

    code = main(["pretrain", "tapt_static", "--data", str(_task(tmp_path)), "--out", str(tmp_path / "pt"),
                 "--set", "pretrain.max_steps=4", "--set", "pretrain.batch_size=8", "--set", "pretrain.eval_every=2"])
    assert code == 0 and "static masking" in capsys.readouterr().out
    record = json.loads((tmp_path / "pt" / "pretrain.json").read_text())
    assert record["steps"] == 4 and record["masking"] == "static" and len(record["history"]) == 2
    assert (tmp_path / "pt" / "model" / "mlm_head.safetensors").is_file()


@pytest.mark.slow
def test_tapt_on_real_sst2_with_the_bundled_model(tmp_path):
    from shared_data import shared_dataset
    from plmtune.fewshot import make_fewshot
    from plmtune.mlm import mlm_head_for
    from plmtune.models import load_backbone
    from plmtune.stages.pretrain import run_pretrain_stage

    make_fewshot(shared_dataset("sst2"), tmp_path / "few", 16, [13])
    cfg = PretrainConfig(max_steps=12, batch_size=16, max_texts=600, eval_every=4, patience=0, lr=3e-4)
    record = run_pretrain_stage(cfg, "minilm", tmp_path / "few" / "16-13", tmp_path / "pt", DataConfig(), seed=0)
    losses = [h["heldout_loss"] for h in record["history"]]
    assert record["texts"] + record["heldout_texts"] == 600 and len(losses) == 3
    assert losses[-1] < losses[0]  # the new MLM head and the encoder learn the task's text
    _, encoder = load_backbone(record["model"])
    assert encoder.config.num_hidden_layers == 6
    assert mlm_head_for(encoder, record["model"]).decoder.weight is encoder.get_input_embeddings().weight
