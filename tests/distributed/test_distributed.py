"""Two CPU processes (torchrun, gloo): identical randomness on every rank, and the same result
as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # a fresh port per launch: the previous launch's may still be closing
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, timeout=600):
    # One thread per process: two 2-thread processes on a 2-core machine slow each other ~10x.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_noise_masks_and_fisher_agree_on_both_ranks(tmp_path):
    proc = _torchrun(HERE / "check_ranks.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["noise"] == r1["noise"] != 0
    assert r0["f_masks"] == r1["f_masks"] and r0["f_masks"][0] != r0["f_masks"][1]
    assert r0["d_mask"] == r1["d_mask"]
    # Summed across ranks = one process over all the data (up to float summation order).
    assert r0["fisher_sum"] == pytest.approx(r0["single_process_fisher_sum"], rel=1e-5)
    assert r0["d_mask"] == r0["single_process_d_mask"]


def test_one_backward_meta_reweighting_syncs_the_weighted_gradient_across_ranks(tmp_path):
    proc = _torchrun(HERE / "check_reweight.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["weights"] != r1["weights"]  # each rank weighs its own pseudo-labelled batch
    assert r0["weights_equal"] and r1["weights_equal"]  # the same weights with and without DDP
    assert r0["grad_digest"] == pytest.approx(r1["grad_digest"], rel=1e-6)  # DDP averaged the gradients
    assert r0["worst_vs_reference"] < 1e-6 and r1["worst_vs_reference"] < 1e-6


def test_two_processes_match_one_process_with_the_same_global_batch(toy_task, tmp_path):
    common = ["--data", toy_task, "--seed", "3", "--save-model", "--set", "train.epochs=2",
              "--set", "model.dropout=0.0", "--set", "model.encoder_dropout=0.0",
              "--set", "techniques=[{name: noisytune}, {name: child_tuning, mode: F}]"]
    two = _torchrun("-m", "plmtune", "run", "baseline", "--out", tmp_path / "two", "--set", "train.batch_size=4",
                    *common)
    assert two.returncode == 0, two.stderr[-3000:]
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    one = subprocess.run([sys.executable, "-m", "plmtune", "run", "baseline", "--out", str(tmp_path / "one"),
                          "--set", "train.batch_size=8", *map(str, common)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert a["steps"] == b["steps"] == 8
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    assert a["dev"]["loss"] == pytest.approx(b["dev"]["loss"], rel=1e-3)
    from safetensors.torch import load_file

    def weights(run):  # a mean-pooled model: the encoder in encoder/, the head beside it (plmtune.saved)
        folder = tmp_path / run / "model"
        return {**load_file(folder / "encoder" / "model.safetensors"), **load_file(folder / "head.safetensors")}

    wa, wb = weights("one"), weights("two")
    assert set(wa) == set(wb) and "classifier.weight" in wa
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-4, f"largest weight difference {worst}"
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["type"] == "train" for x in lines) == 8  # one writer, no duplicate lines


def test_pretraining_heldout_loss_is_one_number_on_every_rank(tmp_path):
    proc = _torchrun(HERE / "check_pretrain.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["value"] == r1["value"]  # each rank read half the batches
    assert r0["value"] == pytest.approx(r0["whole"], rel=1e-6)  # and it is the whole set's


def test_pretraining_in_two_processes_agrees_on_the_stop_rule_and_writes_one_backbone(toy_task, tmp_path, tokenizer):
    from plmtune.models import tiny_bert

    backbone = tmp_path / "tiny"  # a saved tiny random BERT with the real tokenizer, used by path
    tiny_bert(vocab_size=30522, seed=0).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    # Each rank measures the held-out loss on its own shard; unless the ranks agree on it, one stops
    # (patience 1, an evaluation every step) while the other waits in the next all-reduce for ever.
    proc = _torchrun("-m", "plmtune", "pretrain", "tapt", "--data", toy_task, "--out", tmp_path / "pt",
                     "--set", f"model.backbone={backbone}", "--set", "pretrain.max_steps=40",
                     "--set", "pretrain.eval_every=1", "--set", "pretrain.patience=1", "--set", "pretrain.batch_size=4",
                     "--set", "pretrain.heldout=0.3", "--set", "pretrain.lr=5e-2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "pt" / "pretrain.json").read_text())
    assert record["stopped"] == "patience" and record["steps"] < 40  # the rule fired, on both ranks at once
    assert sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["model", "pretrain.json"]  # no leftovers
    from plmtune.models import load_backbone

    _, encoder = load_backbone(str(tmp_path / "pt" / "model"))
    assert encoder.config.num_hidden_layers == 2
