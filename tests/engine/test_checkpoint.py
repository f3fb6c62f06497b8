"""Resuming from a checkpoint ends exactly like an uninterrupted run (in-process, tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from plmtune.config import load_recipe
from plmtune.data import EncodedSplit, PadCollator, eval_loader, load_task, train_loader
from plmtune.engine.checkpoint import truncate_log
from plmtune.engine.loop import MetricLog, fit
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import Technique, TrainContext, build_techniques


class Crash(Exception):
    pass


class CrashAt(Technique):
    def __init__(self, step):
        super().__init__(None)
        self.at = step

    def on_step_end(self, ctx):
        if ctx.step == self.at:
            raise Crash


def _fit(toy_task, tokenizer, folder, techniques, resume=False, crash_at=None):
    from accelerate.utils import set_seed

    recipe = load_recipe("baseline", ["train.epochs=4", "train.checkpoint_every=3", f"techniques={techniques}"])
    set_seed(5)
    task = load_task(toy_task, recipe.data)
    model = SequenceClassifier(tiny_bert(vocab_size=30522, seed=0), 2)
    built = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=5, num_labels=2)
    for technique in built:
        model = technique.prepare_model(model, ctx)
    collate = PadCollator(tokenizer.pad_token_id)
    enc = {k: EncodedSplit(v, tokenizer, 32) for k, v in task.splits.items()}
    folder.mkdir(parents=True, exist_ok=True)
    log = MetricLog(folder / "metrics.jsonl")
    extra = [CrashAt(crash_at)] if crash_at else []
    try:
        result = fit(model, built + extra, ctx, train_loader(enc["train"], 8, 5, collate),
                     eval_loader(enc["dev"], 16, collate), recipe.train, log, checkpoint_dir=folder / "ck", resume=resume)
    except Crash:
        return None
    finally:
        log.close()
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return result, records, model.classifier.weight.detach().clone()


@pytest.mark.parametrize("techniques", [
    "[]",
    "[{name: child_tuning, mode: F}, {name: ema}]",
    "[{name: noisytune}, {name: llrd}, {name: child_tuning, mode: D}, {name: rdrop}]",
])
def test_resume_after_a_crash_matches_the_uninterrupted_run(toy_task, tokenizer, tmp_path, techniques):
    whole = _fit(toy_task, tokenizer, tmp_path / "whole", techniques)
    assert _fit(toy_task, tokenizer, tmp_path / "cut", techniques, crash_at=8) is None  # last checkpoint: step 6
    resumed = _fit(toy_task, tokenizer, tmp_path / "cut", techniques, resume=True)
    assert resumed[0].dev_history == whole[0].dev_history and resumed[0].steps == 16
    assert resumed[1] == whole[1]  # every logged step and evaluation, nothing twice
    assert torch.equal(resumed[2], whole[2])


def test_resume_without_a_checkpoint_starts_afresh(toy_task, tokenizer, tmp_path):
    stale = tmp_path / "fresh"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 9.0}) + "\n")
    result, records, _ = _fit(toy_task, tokenizer, stale, "[]", resume=True)
    train = [r for r in records if r["type"] == "train"]
    assert result.steps == 16 and [r["step"] for r in train] == list(range(1, 17))  # the stale line is gone


def test_truncate_log_drops_what_follows_the_checkpoint_and_a_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"type": "train", "step": s} for s in (1, 2, 3, 4)] + [{"type": "eval", "split": "dev", "step": 2}]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]) + json.dumps(lines[4]) + "\n"
                   + "".join(json.dumps(x) + "\n" for x in lines[2:4]) + '{"type": "tr')
    truncate_log(log, 3)
    kept = [json.loads(x) for x in log.read_text().splitlines()]
    assert kept == [lines[0], lines[1], lines[4], lines[2]]
