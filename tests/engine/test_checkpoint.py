"""Resuming from a checkpoint ends exactly like an uninterrupted run (in-process, tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from plmtune.loading import load_recipe
from plmtune.data import EncodedSplit, PadCollator, eval_loader, load_task, train_loader
from plmtune.engine.checkpoint import CheckpointError, fingerprint, load_tree, save_tree, truncate_log
from plmtune.engine.loop import MetricLog, fit
from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.technique import Technique, TrainContext
from plmtune.techniques import build_techniques, registry
from test_checkpoint_security import first_difference, same


class Crash(Exception):
    pass


class CrashAt(Technique):
    def __init__(self, step):
        super().__init__(None)
        self.at = step

    def on_step_end(self, ctx):
        if ctx.step == self.at:
            raise Crash


def _fit(toy_task, tokenizer, folder, techniques, resume=False, crash_at=None, seed=5, overrides=(), extra=None):
    from accelerate.utils import set_seed

    recipe = load_recipe("baseline", ["train.epochs=4", "train.checkpoint_every=3", f"techniques={techniques}",
                                      *overrides])
    set_seed(seed)
    task = load_task(toy_task, recipe.data)
    model = SequenceClassifier(tiny_bert(vocab_size=30522, seed=0), 2)
    built = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=2)
    for technique in built:
        model = technique.prepare_model(model, ctx)
    collate = PadCollator(tokenizer.pad_token_id)
    enc = {k: EncodedSplit(v, tokenizer, 32) for k, v in task.splits.items()}
    folder.mkdir(parents=True, exist_ok=True)
    log = MetricLog(folder / "metrics.jsonl")
    extra = (extra(built) if extra else []) + ([CrashAt(crash_at)] if crash_at else [])
    try:
        result = fit(model, built + extra, ctx, train_loader(enc["train"], 8, 5, collate),
                     eval_loader(enc["dev"], 16, collate), recipe.train, log, checkpoint_dir=folder / "ck", resume=resume)
    except Crash:
        return None
    finally:
        log.close()
    # every field but the wall-clock time of writing
    records = [{k: v for k, v in json.loads(x).items() if k != "time"}
               for x in (folder / "metrics.jsonl").read_text().splitlines()]
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


class RoundTrip(Technique):
    """At step `at`, sends every state a checkpoint holds through save_tree/load_tree and back in."""

    def __init__(self, at, path, techniques):
        super().__init__(None)
        self.at, self.path, self.techniques, self.seen = at, path, techniques, None

    def on_step_end(self, ctx):
        if ctx.step != self.at:
            return
        states = {"model": ctx.bare_model().state_dict(), "optimizer": ctx.optimizer.state_dict(),
                  "techniques": [t.state_dict() for t in self.techniques]}
        save_tree(self.path, states)
        back = load_tree(self.path)
        ctx.optimizer.load_state_dict(back["optimizer"])  # what a resume does; the run goes on unchanged
        for technique, state in zip(self.techniques, back["techniques"]):
            technique.load_state_dict(state)
        # compared at once: a state_dict shares memory with the live tensors, which train on
        self.seen = {"stored": states["optimizer"]["state"] != {} and states["optimizer"]["param_groups"][0]["fused"],
                     "file": first_difference(states, back) if not same(back, states) else "",
                     "optimizer reloaded": first_difference(states["optimizer"], ctx.optimizer.state_dict()),
                     "techniques reloaded": first_difference(states["techniques"],
                                                             [t.state_dict() for t in self.techniques])}


STATEFUL = ["[]", "[{name: child_tuning, mode: F}, {name: ema}]", "[{name: child_tuning, mode: D}]",
            "[{name: noisytune}, {name: llrd}, {name: rdrop}]"]


@pytest.mark.parametrize("techniques", STATEFUL)
def test_optimizer_and_technique_states_round_trip_exactly(toy_task, tokenizer, tmp_path, techniques):
    probe = []
    _fit(toy_task, tokenizer, tmp_path, techniques, crash_at=6,
         extra=lambda built: probe.append(RoundTrip(5, tmp_path / "t", built)) or probe)
    assert probe[0].seen == {"stored": True, "file": "", "optimizer reloaded": "", "techniques reloaded": ""}


def test_every_stateful_technique_is_covered_above():
    stateful = {name for name, cls in registry().items() if cls.state_dict is not Technique.state_dict}
    assert stateful <= {"child_tuning", "ema"}, f"add {stateful - {'child_tuning', 'ema'}} to STATEFUL"


@pytest.mark.parametrize("change, message", [
    ({"seed": 6}, r"seed: 5 in the checkpoint, 6 now"),
    ({"overrides": ["train.lr=0.001"]}, r"recipe\.train\.lr: 5e-05 in the checkpoint, 0\.001 now"),
    ({"overrides": ["techniques=[{name: ema}]"]}, r"recipe\.techniques\.0\.name: \"child_tuning\" in the checkpoint, "
                                                  r"\"ema\" now"),
])
def test_resume_with_another_configuration_is_refused(toy_task, tokenizer, tmp_path, change, message):
    techniques = "[{name: child_tuning, mode: F}]"
    assert _fit(toy_task, tokenizer, tmp_path, techniques, crash_at=4) is None
    overrides = change.get("overrides", [])
    if overrides:
        techniques = overrides[0].split("=", 1)[1] if overrides[0].startswith("techniques") else techniques
        overrides = [o for o in overrides if not o.startswith("techniques")]
    with pytest.raises(CheckpointError, match=message):
        _fit(toy_task, tokenizer, tmp_path, techniques, resume=True, seed=change.get("seed", 5), overrides=overrides)


def test_the_fingerprint_leaves_out_what_may_change_on_resume():
    base = load_recipe("baseline", ["train.checkpoint_every=3"])
    same_run = load_recipe("baseline", ["train.checkpoint_every=7", "description=again", "name=copy",
                                        "train.seed=99"])
    assert fingerprint(base, 13) == fingerprint(same_run, 13) != fingerprint(base, 14)
    assert fingerprint(base, 13) != fingerprint(load_recipe("baseline", ["train.bf16=true"]), 13)
