"""Experiment tracking through Accelerate's trackers (train.report_to), and metrics.jsonl's timestamps."""

from __future__ import annotations

import importlib.util
import json
import time
from typing import ClassVar

import pytest
import yaml

from plmtune import rundir
from plmtune.errors import RecipeError
from plmtune.loading import check_requirements, load_recipe
from plmtune.run import run_recipe
from plmtune.rundir import MetricLog


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _scalars(out):
    """{tag: [(step, value), ...]} as TensorBoard reads OUT/tracking/plmtune/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / rundir.TRACKING / rundir.TRACKER_PROJECT), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _hide(monkeypatch, *modules):
    """Make `modules` look uninstalled to importlib.util.find_spec (what Accelerate's availability tests use)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] in modules else real(name, *a, **k))


class FakeTracker:
    """A tracker registered under a name of its own, as accelerate.tracking.register_tracker_class allows."""

    name, requires_logging_directory, main_process_only = "fake", False, False
    made: ClassVar[list] = []

    def __init__(self, run_name, **kwargs):
        self.run_name, self.logged, self.config, self.finished = run_name, [], None, 0
        FakeTracker.made.append(self)

    def start(self):
        pass

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values))

    def finish(self):
        self.finished += 1


@pytest.fixture
def fake_tracker(monkeypatch):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, "fake", FakeTracker)
    FakeTracker.made = []
    return FakeTracker


# --------------------------------------------------------------------------- the recipe field


def test_report_to_takes_tracker_names_and_an_unknown_one_fails_with_a_hint():
    assert load_recipe("baseline").train.report_to == ()
    recipe = load_recipe("baseline", ["train.report_to=[tensorboard, wandb, tensorboard]"])
    assert recipe.train.report_to == ("tensorboard", "wandb")  # a tuple, each name once
    assert load_recipe("baseline", ["train.report_to=[all]"]).train.report_to == ("all",)
    with pytest.raises(RecipeError, match=r"train\.report_to\[1\] = 'tensorbord' is not an experiment tracker") as err:
        load_recipe("baseline", ["train.report_to=[wandb, tensorbord]"])
    assert "Did you mean 'tensorboard'?" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="train.report_to must be a list"):
        load_recipe("baseline", ["train.report_to=7"])


def test_validate_names_a_missing_tracker_package_before_any_model_loads(monkeypatch, capsys):
    from plmtune.cli import main

    recipe = load_recipe("baseline", ["train.report_to=[tensorboard]"])
    check_requirements(recipe)  # installed here
    _hide(monkeypatch, "tensorboard", "tensorboardX")
    monkeypatch.setattr("plmtune.assemble.load_backbone", lambda name: pytest.fail("validate loaded a model"))
    with pytest.raises(RecipeError, match=r"train\.report_to\[0\]: the tracker 'tensorboard' needs the Python "
                                          r"package 'tensorboard', which is not installed\. Install it with "
                                          r"'pip install tensorboard'"):
        check_requirements(recipe)
    check_requirements(load_recipe("baseline"))  # no tracker named: nothing to check
    assert main(["validate", "baseline", "--set", "train.report_to=[tensorboard]"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="pip install tensorboard"):  # a run stops before its first step too
        MetricLog("metrics.jsonl", recipe)


def test_all_with_no_tracker_installed_is_refused(monkeypatch):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    recipe = load_recipe("baseline", ["train.report_to=[all]"])
    _hide(monkeypatch, *LOGGER_TYPE_TO_CLASS, "tensorboardX")
    with pytest.raises(RecipeError, match=r"train\.report_to\[0\] = 'all' .* and none is"):
        check_requirements(recipe)


def test_flat_config_gives_trackers_scalar_hyper_parameters():
    recipe = load_recipe("llrd", ["train.report_to=[tensorboard]", "data.label_names=[neg, pos]"])
    flat = rundir.flat_config(recipe.to_dict())
    assert flat["train.lr"] == recipe.train.lr and flat["techniques.0.name"] == "llrd"
    assert flat["train.report_to"] == '["tensorboard"]' and flat["data.label_names"] == '["neg", "pos"]'
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


# --------------------------------------------------------------------------- the metric log


def test_every_record_gets_a_unix_time_to_the_millisecond(tmp_path):
    before = time.time()
    log = MetricLog(tmp_path / "metrics.jsonl")
    log.tags = {"stage": "teacher"}
    for step in (1, 2, 3):
        log.write({"type": "train", "step": step, "loss": 1.0 / step})
    log.close()
    after = time.time()
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["stage"] == "teacher" for r in records)
    times = [r["time"] for r in records]
    assert times == sorted(times) and before - 0.001 <= times[0] and times[-1] <= after + 0.001
    assert all(isinstance(t, float) and round(t, 3) == t for t in times)


def test_metric_log_forwards_records_at_a_run_wide_step_and_finishes_its_trackers(tmp_path, fake_tracker):
    recipe = load_recipe("baseline", ["train.report_to=[fake]"])
    log = MetricLog(tmp_path / "metrics.jsonl", recipe, seed=7)
    assert fake_tracker.made == []  # started at the first record, not before
    for fit in range(2):  # two fits (a teacher, a student), each counting its steps from 1
        log.tags = {"iteration": fit}
        for step in (1, 2, 3):
            log.write({"type": "train", "step": step, "epoch": 1, "loss": 0.5, "lr": 1e-3, "grad_norm": None})
        log.write({"type": "eval", "split": "dev", "step": 3, "epoch": 1, "accuracy": 0.75, "n": 16})
    log.close()
    log.close()
    (tracker,) = fake_tracker.made
    assert tracker.run_name == rundir.TRACKER_PROJECT and tracker.finished == 1
    assert tracker.config["train.lr"] == recipe.train.lr and tracker.config["seed"] == 7
    assert [step for step, _ in tracker.logged] == [1, 2, 3, 3, 4, 5, 6, 6]  # never back
    assert tracker.logged[0][1] == {"train/loss": 0.5, "train/lr": 1e-3}  # no None, no epoch, no tags
    assert tracker.logged[3][1] == {"dev/accuracy": 0.75}
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 3] * 2  # the log keeps each fit's own step


def test_a_metric_log_without_trackers_or_on_another_rank_starts_none(tmp_path, fake_tracker):
    recipe = load_recipe("baseline", ["train.report_to=[fake]"])
    for log in (MetricLog(None, recipe), MetricLog(tmp_path / "metrics.jsonl", load_recipe("baseline"))):
        log.write({"type": "train", "step": 1, "loss": 0.5})
        log.close()
    other = MetricLog(tmp_path / "other.jsonl", recipe)
    other.enabled = False  # not the main process
    other.write({"type": "train", "step": 1, "loss": 0.5})
    other.close()
    assert fake_tracker.made == [] and not (tmp_path / "other.jsonl").exists()


# --------------------------------------------------------------------------- runs


def test_a_run_logs_steps_and_evaluations_to_tensorboard(toy_task, tmp_path, tiny_backbone):
    tiny_backbone()
    recipe = load_recipe("baseline", ["train.epochs=2", "train.lr=1e-3", "train.report_to=[tensorboard]"])
    out = tmp_path / "run"
    result = run_recipe(recipe, toy_task, out, seed=1)
    records = _records(out)
    train = [r for r in records if r["type"] == "train"]
    dev = [r for r in records if r.get("split") == "dev"]
    times = [r["time"] for r in records]
    assert all(isinstance(t, float) for t in times) and times == sorted(times)
    scalars = _scalars(out)
    assert {"train/loss", "train/lr", "train/grad_norm", "dev/accuracy", "dev/loss", "test/accuracy"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm"):
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([r[key] for r in train], rel=1e-6)
    assert scalars["dev/accuracy"] == [(4, pytest.approx(dev[0]["accuracy"])), (8, pytest.approx(dev[1]["accuracy"]))]
    assert scalars["test/accuracy"] == [(8, pytest.approx(result["test"]["accuracy"]))]
    (hparams,) = (out / rundir.TRACKING / rundir.TRACKER_PROJECT).glob("*/hparams.yml")
    logged = yaml.safe_load(hparams.read_text())
    assert logged["train.report_to"] == '["tensorboard"]' and logged["seed"] == 1 and logged["model.backbone"]


def test_a_failing_run_closes_its_trackers(toy_task, tmp_path, tiny_backbone, monkeypatch, fake_tracker):
    from plmtune.assemble import Prepared

    tiny_backbone()

    def broken(*args, **kwargs):
        raise RuntimeError("test split unreadable")

    monkeypatch.setattr(Prepared, "metrics", broken)
    recipe = load_recipe("baseline", ["train.max_steps=2", "train.report_to=[fake]"])
    with pytest.raises(RuntimeError, match="unreadable"):
        run_recipe(recipe, toy_task, tmp_path / "run", seed=1)
    (tracker,) = fake_tracker.made
    assert tracker.finished == 1 and [step for step, _ in tracker.logged] == [1, 2, 2]  # steps, then dev
    assert not (tmp_path / "run").exists()  # a failed run leaves no folder it created


def test_self_distillation_rounds_continue_the_step_and_a_resume_picks_it_up(toy_task, tmp_path, tiny_backbone,
                                                                          monkeypatch):
    from plmtune.assemble import Prepared

    tiny_backbone()
    recipe = load_recipe("self_distill", ["train.epochs=2", "train.lr=1e-3", "self_distillation.rounds=2",
                                          "train.report_to=[tensorboard]"])
    run_recipe(recipe, toy_task, tmp_path / "whole", seed=1)
    whole = _scalars(tmp_path / "whole")
    assert [s for s, _ in whole["train/loss"]] == list(range(1, 25))  # 3 fits of 8 steps, one x-axis
    assert [s for s, _ in whole["dev/accuracy"]] == [4, 8, 12, 16, 20, 24]
    rounds = [r["round"] for r in _records(tmp_path / "whole") if r["type"] == "train"]
    assert rounds == [0] * 8 + [1] * 8 + [2] * 8

    real_fit, calls = Prepared.fit, []

    def crash_after_round_two(*args, **kwargs):  # round 2 trains and logs, then the process dies
        calls.append(1)
        fitted = real_fit(*args, **kwargs)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return fitted

    monkeypatch.setattr(Prepared, "fit", crash_after_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, toy_task, tmp_path / "run", seed=1)
    calls.clear()
    run_recipe(recipe, toy_task, tmp_path / "run", seed=1, resume=True)
    assert len(calls) == 1  # round 2 again, logged from step 17 on, over what the killed run logged
    resumed = _scalars(tmp_path / "run")
    assert [s for s, _ in resumed["train/loss"]] == list(range(1, 25))
    assert resumed["train/loss"] == [(s, pytest.approx(v)) for s, v in whole["train/loss"]]


# --------------------------------------------------------------------------- the run folder


def test_tracking_is_a_run_output_replaced_by_a_rerun_and_restored_when_it_fails(tmp_path):
    out = tmp_path / "run"
    with rundir.run_folder(out):
        (out / "tracking" / "plmtune").mkdir(parents=True)
        (out / "tracking" / "plmtune" / "old").write_text("old")
        (out / "result.json").write_text("{}")
    with pytest.raises(RuntimeError), rundir.run_folder(out, overwrite=True):
        assert not (out / "tracking").exists()  # set aside with the other outputs
        (out / "tracking").mkdir()
        (out / "tracking" / "new").write_text("new")
        raise RuntimeError("the re-run fails")
    assert [p.name for p in (out / "tracking").iterdir()] == ["plmtune"]  # the old one is back
    with rundir.run_folder(out, overwrite=True):
        (out / "tracking").mkdir()
        (out / "tracking" / "new").write_text("new")
        (out / "result.json").write_text("{}")
    assert [p.name for p in (out / "tracking").iterdir()] == ["new"]
    assert not (out / rundir.ASIDE).exists()
