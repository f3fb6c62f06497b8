"""The distillation stage on a tiny BERT: its loss, the pool, the teacher cache, both teacher kinds, saving, errors."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import plmtune.classifier
import plmtune.run
from plmtune import load
from plmtune.cli import main
from plmtune.engine.checkpoint import load_tree
from plmtune.errors import PlmtuneError, RecipeError
from plmtune.loading import load_recipe
from plmtune.run import run_recipe
from plmtune.stages.distillation import (
    DistillationLoss,
    distillation_loss,
    student_rows,
)

POOL = [f"{'nice fine' if i % 2 == 0 else 'poor dull'} {noun}" for i, noun in
        enumerate(["film", "meal", "phone", "book", "song", "hotel", "car", "game", "show", "chair", "lamp", "desk"])]


def _with_pool(task, texts=POOL):
    (task / "unlabeled.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return task


def _recipe(teacher, cache, *extra):
    return load_recipe("baseline", ["train.epochs=2", "train.lr=1e-3", f"distillation.teacher={teacher}",
                                    "distillation.unlabeled_cap=8", f"distillation.cache={cache}", *extra])


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Counts of plmtune.load and of nested run_recipe calls (the stage reaches both through StageServices)."""
    monkeypatch.setenv("PLMTUNE_CACHE", str(tmp_path / "default-cache"))
    calls = {"load": [], "run": []}
    real_load, real_run = plmtune.classifier.load, plmtune.run.run_recipe

    def load_counted(path):
        calls["load"].append(path)
        return real_load(path)

    def run_counted(*args, **kwargs):
        calls["run"].append((args, kwargs))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(plmtune.classifier, "load", load_counted)
    monkeypatch.setattr(plmtune.run, "run_recipe", run_counted)
    return calls


# --------------------------------------------------------------------------- the loss


def test_the_loss_equals_its_definition_on_a_hand_made_batch():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -0.5], [1.5, 1.5, -2.0]], requires_grad=True)
    soft = torch.tensor([[0.7, 0.1, 0.2], [0.2, 0.5, 0.3], [0.0, 0.4, 0.6]])
    labels = torch.tensor([0, 2, 1])
    gold, kd = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    t, alpha = 2.0, 0.3
    expected = []
    for z, p, y, g, k in zip(logits.tolist(), soft.tolist(), labels.tolist(), gold.tolist(), kd.tolist()):
        ce = -math.log(math.exp(z[y]) / sum(math.exp(v) for v in z))
        q = [math.exp(v / t) / sum(math.exp(u / t) for u in z) for v in z]
        kl = sum(pc * math.log(pc / qc) for pc, qc in zip(p, q) if pc > 0)
        expected.append(alpha * g * ce + (1 - alpha) * k * t * t * kl)
    ce = F.cross_entropy(logits, labels, reduction="none")
    got = distillation_loss(logits, ce, soft, gold, kd, t, alpha)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    # KL, not cross-entropy to the soft labels: zero where the student matches the teacher at T
    matched = distillation_loss(torch.log(soft[:2]) * t, torch.zeros(2), soft[:2], torch.zeros(2), torch.ones(2),
                                t, 0.0)
    assert matched.abs().max() < 1e-5
    cfg = _recipe("baseline", "unused", "distillation.temperature=2.0", "distillation.alpha=0.3").stage("distillation")
    outputs = {"logits": logits, "per_example_loss": ce}
    batch = {"soft_labels": soft, "gold": gold, "kd": kd, "labels": labels}
    assert DistillationLoss(cfg).adjust_loss(ce.mean(), outputs, batch, None).item() == pytest.approx(
        sum(expected) / 3, rel=1e-5)


def test_pool_rows_get_the_kl_term_only():
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.4]], requires_grad=True)
    soft, gold, kd = torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0.0, 0.0]), torch.ones(2)
    grads = []
    for labels in (torch.tensor([0, 0]), torch.tensor([1, 1])):  # whatever label a pool row carries
        ce = F.cross_entropy(logits, labels, reduction="none")
        loss = distillation_loss(logits, ce, soft, gold, kd, 3.0, 0.4)
        kl = F.kl_div(F.log_softmax(logits / 3.0, -1), soft, reduction="none").sum(-1) * 9.0
        assert torch.allclose(loss, 0.6 * kl)
        grads.append(torch.autograd.grad(loss.sum(), logits)[0])
    assert torch.equal(grads[0], grads[1])


def test_student_rows_mark_gold_pool_and_unlabelled_copies():
    class Prepared:
        ctx = type("Ctx", (), {"num_labels": 2})
        splits = {"train": [{"text": "a", "label": 1, "source": "train.jsonl:1"},
                            {"text": "a!", "label": 1, "source": "train.jsonl:1#eda0"}],
                  "unlabeled": [{"text": "b", "source": "unlabeled.jsonl:4"}]}

    entry = {"train": {"sources": ["train.jsonl:1"], "logits": torch.tensor([[0.0, 2.0]])},
             "pool": {"sources": ["unlabeled.jsonl:4"], "logits": torch.tensor([[2.0, 0.0]])}}
    rows, missing = student_rows(Prepared(), entry, 2.0)
    assert missing == 1
    assert [(r["gold"], r["kd"], r["label"]) for r in rows] == [(1.0, 1.0, 1), (1.0, 0.0, 1), (0.0, 1.0, 0)]
    assert rows[0]["soft_labels"] == pytest.approx(torch.softmax(torch.tensor([0.0, 1.0]), -1).tolist())
    assert rows[1]["soft_labels"] == [0.0, 0.0]


# --------------------------------------------------------------------------- teachers and the cache


def test_a_folder_teacher_labels_once_and_a_second_student_reuses_its_cache(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()
    task, cache = _with_pool(task), tmp_path / "cache"
    first = run_recipe(_recipe(teacher, cache), task, tmp_path / "a", seed=1)
    info = first["distillation"]
    assert info["cache"]["hit"] is False and len(counted["load"]) == 1 and not counted["run"]
    assert info["teacher"]["kind"] == "folder" and info["rows"] == {
        "train": 32, "pool": 8, "pool_dropped_as_dev_or_test": 0, "without_teacher": 0}
    reference = load(teacher).evaluate(task)  # the teacher's own test metrics, as plmtune.load measures them
    assert info["teacher"]["test"]["accuracy"] == reference["accuracy"]
    assert info["teacher"]["test"]["loss"] == pytest.approx(reference["loss"], abs=1e-5)
    counted["load"].clear()
    # another student (another learning rate) of the same teacher on the same data: no teacher loaded at all
    second = run_recipe(_recipe(teacher, cache, "train.lr=5e-4"), task, tmp_path / "b", seed=1)
    assert second["distillation"]["cache"] == {**info["cache"], "hit": True} and counted["load"] == []
    assert second["distillation"]["teacher"]["test"] == info["teacher"]["test"]
    assert second["distillation"]["seconds"]["teacher_when_labelled"] == info["seconds"]["teacher_when_labelled"]
    # a copy of the teacher folder is the same teacher
    shutil.copytree(teacher, tmp_path / "copy")
    copy = run_recipe(_recipe(tmp_path / "copy", cache), task, tmp_path / "c", seed=1)
    assert copy["distillation"]["cache"]["hit"] is True and counted["load"] == []
    # the data changed (one more pool row): missed
    _with_pool(task, POOL + ["nice fine radio"])
    changed = run_recipe(_recipe(teacher, cache, "distillation.unlabeled_cap=100"), task, tmp_path / "d", seed=1)
    assert changed["distillation"]["cache"]["hit"] is False and len(counted["load"]) == 1
    again = run_recipe(_recipe(teacher, cache, "distillation.unlabeled_cap=100"), task, tmp_path / "e", seed=1)
    assert again["distillation"]["cache"]["hit"] is True and len(counted["load"]) == 1
    # the teacher changed (other weights in the folder at the same path): missed
    _perturb_head(teacher)
    perturbed = run_recipe(_recipe(teacher, cache, "distillation.unlabeled_cap=100"), task, tmp_path / "f", seed=1)
    assert perturbed["distillation"]["cache"]["hit"] is False and len(counted["load"]) == 2


def _perturb_head(folder):
    from safetensors.torch import load_file, save_file

    head = load_file(folder / "head.safetensors")
    head = {k: v + 0.5 if k.endswith("weight") else v for k, v in head.items()}
    save_file(head, folder / "head.safetensors")


def test_a_cache_hit_trains_the_same_student_as_the_miss(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()
    task, cache = _with_pool(task), tmp_path / "cache"
    miss = run_recipe(_recipe(teacher, cache), task, tmp_path / "a", seed=3)
    hit = run_recipe(_recipe(teacher, cache), task, tmp_path / "b", seed=3)
    assert (miss["distillation"]["cache"]["hit"], hit["distillation"]["cache"]["hit"]) == (False, True)
    assert hit["test"] == miss["test"] and hit["dev"] == miss["dev"]
    entry = load_tree(miss["distillation"]["cache"]["file"])  # tensors and JSON (save_tree), never a pickle
    assert entry["format"] == "plmtune-teacher-labels" and tuple(entry["pool"]["logits"].shape) == (8, 2)


def test_a_recipe_teacher_runs_through_run_recipe_into_the_run_folder(toy_task, tmp_path, tiny_backbone, counted):
    tiny_backbone()
    task, cache = _with_pool(toy_task), tmp_path / "cache"
    recipe = _recipe("baseline", cache, "distillation.teacher_backbone=mpnet")
    result = run_recipe(recipe, task, tmp_path / "a", seed=2)
    (args, kwargs), = counted["run"]
    assert args[2] == tmp_path / "a" / "distillation" / "teacher" and kwargs["save_model"] is True
    assert args[0].model.backbone == "mpnet" and args[0].stage("distillation") is None and kwargs["seed"] == 2
    teacher_result = json.loads((tmp_path / "a" / "distillation" / "teacher" / "result.json").read_text())
    info = result["distillation"]
    assert info["teacher"]["test"] == teacher_result["test"] and info["teacher"]["kind"] == "recipe"
    assert info["teacher"]["backbone"] == "mpnet" and info["cache"]["hit"] is False
    assert counted["load"] == [tmp_path / "a" / "distillation" / "teacher" / "model"]
    assert result["test"]["n"] == 16 and result["distillation"]["student"]["test"] == result["test"]
    # a second student of the same teacher recipe, backbone and seed: nothing trained or loaded for the teacher
    other = run_recipe(_recipe("baseline", cache, "distillation.teacher_backbone=mpnet", "train.lr=5e-4"),
                       task, tmp_path / "b", seed=2)
    assert other["distillation"]["cache"]["hit"] is True and len(counted["run"]) == 1 and len(counted["load"]) == 1
    assert not (tmp_path / "b" / "distillation" / "teacher").exists()
    # another teacher seed is another teacher
    third = run_recipe(recipe, task, tmp_path / "c", seed=3)
    assert third["distillation"]["cache"]["hit"] is False and len(counted["run"]) == 2


def test_save_model_writes_a_student_that_reloads_with_the_tested_metrics(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()
    result = run_recipe(_recipe(teacher, tmp_path / "cache"), _with_pool(task), tmp_path / "run", seed=4,
                        save_model=True)
    assert result["model"]["path"] == str(tmp_path / "run" / "model")
    metrics = load(tmp_path / "run" / "model").evaluate(task)
    assert metrics["accuracy"] == result["test"]["accuracy"]
    assert metrics["loss"] == pytest.approx(result["test"]["loss"], abs=1e-5)


def test_the_pool_never_includes_dev_or_test_text(saved_toy_model, tmp_path, counted, monkeypatch):
    from plmtune.stages import distillation

    teacher, task = saved_toy_model()
    held_out = {json.loads(x)["text"] for s in ("dev", "test") for x in (task / f"{s}.jsonl").read_text().splitlines()}
    _with_pool(task, POOL[:4] + sorted(held_out) + POOL[4:])
    trained = []
    real = distillation.student_rows

    def keep(*args):
        rows, missing = real(*args)
        trained.extend(rows)
        return rows, missing

    monkeypatch.setattr(distillation, "student_rows", keep)
    result = run_recipe(_recipe(teacher, tmp_path / "cache", "distillation.unlabeled_cap=1000"), task,
                        tmp_path / "run", seed=5)
    assert result["distillation"]["rows"]["pool"] == len(POOL)
    assert result["distillation"]["rows"]["pool_dropped_as_dev_or_test"] == len(held_out)
    pool_texts = {r["text"] for r in trained if r["gold"] == 0.0}
    assert pool_texts == set(POOL) and not pool_texts & held_out
    entry = load_tree(result["distillation"]["cache"]["file"])
    lines = (task / "unlabeled.jsonl").read_text().splitlines()
    labelled = {json.loads(lines[int(s.rsplit(":", 1)[1]) - 1])["text"] for s in entry["pool"]["sources"]}
    assert labelled == set(POOL)


def test_unlabeled_cap_zero_distils_on_the_train_rows_only(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()  # no unlabeled.jsonl at all
    result = run_recipe(_recipe(teacher, tmp_path / "cache", "distillation.unlabeled_cap=0"), task,
                        tmp_path / "run", seed=1)
    assert result["distillation"]["rows"]["pool"] == 0 and result["distillation"]["rows"]["train"] == 32


# --------------------------------------------------------------------------- resume


def test_resume_reuses_the_labelling_and_a_finished_recipe_teacher(toy_task, tmp_path, tiny_backbone, counted,
                                                                   monkeypatch):
    from plmtune.assemble import Prepared

    tiny_backbone()
    task, cache, out = _with_pool(toy_task), tmp_path / "cache", tmp_path / "run"
    recipe = _recipe("baseline", cache)
    real_fit, fits = Prepared.fit, []

    def crash_in_the_student(self, log, *args, **kwargs):
        fits.append(log.tags)
        if log.tags.get("stage") == "student":
            raise KeyboardInterrupt("simulated kill")
        return real_fit(self, log, *args, **kwargs)

    monkeypatch.setattr(Prepared, "fit", crash_in_the_student)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, task, out, seed=2)
    assert not (out / "result.json").exists() and (out / "distillation" / "teacher" / "result.json").is_file()
    monkeypatch.setattr(Prepared, "fit", real_fit)
    counted["run"].clear()
    counted["load"].clear()
    resumed = run_recipe(recipe, task, out, seed=2, resume=True)
    assert resumed["distillation"]["cache"]["hit"] is True and counted == {"load": [], "run": []}
    # without the cache, --resume still reuses the teacher the interrupted run finished (loads it, trains nothing)
    (out / "result.json").unlink()
    for item in cache.iterdir():
        item.unlink()
    again = run_recipe(recipe, task, out, seed=2, resume=True)
    assert again["distillation"]["cache"]["hit"] is False and counted["run"] == [] and len(counted["load"]) == 1
    assert again["distillation"]["teacher"]["test"] == resumed["distillation"]["teacher"]["test"]


def test_resume_refuses_a_changed_teacher(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()
    task, out = _with_pool(task), tmp_path / "run"
    run_recipe(_recipe(teacher, tmp_path / "cache"), task, out, seed=1)
    (out / "result.json").unlink()
    _perturb_head(teacher)
    with pytest.raises(PlmtuneError, match=r"labels.json: field 'key'.*changed since"):
        run_recipe(_recipe(teacher, tmp_path / "cache"), task, out, seed=1, resume=True)


# --------------------------------------------------------------------------- errors


def _three_class_teacher(saved_toy_model, tmp_path, write_jsonl):
    folder = tmp_path / "three"
    rows = [{"text": f"word{i}", "label": i % 3} for i in range(9)]
    write_jsonl("train.jsonl", rows, folder)
    model, _ = saved_toy_model(task=folder, name="three-model")
    return model


@pytest.mark.parametrize("case", ["missing path", "not a saved model", "other classes", "backbone on a folder",
                                  "unknown recipe", "missing field"])
def test_a_bad_teacher_is_one_paragraph_naming_the_field(case, saved_toy_model, tmp_path, capsys, write_jsonl,
                                                         counted):
    teacher, task = saved_toy_model()
    _with_pool(task)
    (tmp_path / "plain").mkdir()
    given, pattern = {
        "missing path": (tmp_path / "nowhere" / "model", r"distillation.teacher: .*nowhere/model does not exist"),
        "not a saved model": (tmp_path / "plain", r"distillation.teacher: .*plain is a folder but not a saved model"),
        "other classes": (None, (r"three-model/plmtune.json: field 'label_names' is \['0', '1', '2'\].*"
                                 r"distillation.teacher must be a model of the task's classes")),
        "backbone on a folder": (teacher, r"distillation.teacher_backbone is 'mpnet'.*saved model"),
        "unknown recipe": ("baselin", r"distillation.teacher: 'baselin' is neither a saved-model folder"),
        "missing field": ("", r"field 'teacher' is required"),
    }[case]
    if case == "other classes":
        given = _three_class_teacher(saved_toy_model, tmp_path, write_jsonl)
    sets = [f"distillation.teacher={given}", f"distillation.cache={tmp_path / 'cache'}", "train.epochs=1"]
    if case == "backbone on a folder":
        sets.append("distillation.teacher_backbone=mpnet")
    out = tmp_path / "out"
    code = main(["run", "baseline", "--data", str(task), "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing half-written
    assert counted["load"] == [] and all(args[2] == str(out) for args, _ in counted["run"])  # the CLI's run only


def test_techniques_with_their_own_loss_term_are_refused(saved_toy_model, tmp_path, counted):
    teacher, task = saved_toy_model()
    recipe = load_recipe("rdrop", ["train.epochs=1", f"distillation.teacher={teacher}"])
    with pytest.raises(RecipeError, match=r"techniques\[0\]: 'rdrop' adds its own loss term"):
        run_recipe(recipe, _with_pool(task), tmp_path / "run", seed=1)
    assert not (tmp_path / "run").exists()


def test_config_is_validated_like_other_stage_configs():
    with pytest.raises(RecipeError, match=r"distillation.alpha = 2.0 is out of range; allowed: \[0, 1\]"):
        load_recipe("baseline", ["distillation.teacher=baseline", "distillation.alpha=2.0"])
    with pytest.raises(RecipeError, match=r"distillation.temperature = 0.0 is out of range"):
        load_recipe("baseline", ["distillation.teacher=baseline", "distillation.temperature=0.0"])
    with pytest.raises(RecipeError, match=r"Unknown key 'distillation.temperture'.*Did you mean 'temperature'"):
        load_recipe("baseline", ["distillation.teacher=baseline", "distillation.temperture=2"])
    with pytest.raises(RecipeError, match="at most one stage"):
        load_recipe("self_distill", ["distillation.teacher=baseline"])
