"""The setfit_distill peer: SetFit's own Trainer and DistillationTrainer on tiny bodies (steps capped at 5)."""

from __future__ import annotations

import json


def test_setfit_distill_trains_a_teacher_body_then_distils_the_student_body_on_the_pool(tmp_path, tokenizer,
                                                                                          toy_task, monkeypatch):
    import setfit

    from plmtune.bench import peers
    from plmtune.models import tiny_bert

    bodies = {}
    for name, seed in (("teacher", 0), ("student", 1)):
        tiny_bert(vocab_size=30522, num_layers=1, seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        bodies[name] = str(tmp_path / name)
    test_texts = [json.loads(x)["text"] for x in (toy_task / "test.jsonl").read_text().splitlines()]
    pool = [f"nice {i}" for i in range(6)] + test_texts[:2]  # two test texts: never distilled on
    (toy_task / "unlabeled.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pool))

    seen = {"loaded": [], "args": [], "distill": None}
    real_args, real_load = setfit.TrainingArguments, setfit.SetFitModel.from_pretrained
    real_init = setfit.DistillationTrainer.__init__

    def args(**kwargs):  # SetFit's own arguments, with every training capped at 5 steps to stay fast
        seen["args"].append(dict(kwargs))
        return real_args(**{**kwargs, "max_steps": min(kwargs.get("max_steps", 5), 5)})

    def load(path, *a, **k):
        seen["loaded"].append(path)
        return real_load(path, *a, **k)

    def init(self, teacher_model, student_model=None, args=None, train_dataset=None, **kwargs):
        seen["distill"] = {"teacher": teacher_model, "student": student_model, "texts": list(train_dataset["text"])}
        real_init(self, teacher_model=teacher_model, student_model=student_model, args=args,
                  train_dataset=train_dataset, **kwargs)

    monkeypatch.setattr(setfit, "TrainingArguments", args)
    monkeypatch.setattr(setfit.SetFitModel, "from_pretrained", load)
    monkeypatch.setattr(setfit.DistillationTrainer, "__init__", init)
    result = peers.run_peer("setfit_distill", toy_task, 3, bodies["student"], bodies["teacher"])

    assert seen["loaded"] == [bodies["teacher"], bodies["student"]]
    teacher_args, distill_args = seen["args"]
    assert "max_steps" not in teacher_args  # the teacher trains as the setfit peer does (SetFit's defaults)
    assert (distill_args["max_steps"], distill_args["batch_size"]) == (peers.DISTILL_STEPS, peers.DISTILL_BATCH)
    train_texts = [json.loads(x)["text"] for x in (toy_task / "train.jsonl").read_text().splitlines()]
    assert seen["distill"]["texts"][:32] == train_texts
    assert sorted(seen["distill"]["texts"][32:]) == sorted(pool[:6])
    assert seen["distill"]["teacher"] is not seen["distill"]["student"]
    info = result["distillation"]
    assert info["rows"] == {"train": 32, "pool": 6, "pool_dropped_as_dev_or_test": 2}
    assert info["teacher"]["test"]["n"] == 16 and result["test"]["n"] == 16
    assert result["recipe"] == {"name": "setfit_distill", "peer": "setfit_distill", "backbone": bodies["student"],
                                "teacher_backbone": bodies["teacher"]}
    assert result["parameters"]["total"] == sum(p.numel() for p in seen["distill"]["student"].model_body.parameters())


def test_setfit_distill_is_a_known_peer_of_the_cli_and_the_bench():
    from plmtune.bench.peers import PEERS
    from plmtune.cli import build_parser

    assert "setfit_distill" in PEERS
    args = build_parser().parse_args(["peer", "setfit_distill", "--data", "d", "--out", "o"])
    assert (args.backbone, args.teacher_backbone) == ("minilm", "mpnet")
