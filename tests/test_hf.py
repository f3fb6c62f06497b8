"""The Hugging Face Trainer bridge, on a tiny BertForSequenceClassification built from a config."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from plmtune.hf import TechniqueCallback, TechniqueTrainer, prepare
from plmtune.techniques.rdrop import symmetric_kl


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.ids = torch.randint(5, 100, (n, 8), generator=g)
        self.ids[:, 1] = 50 + self.labels  # a learnable cue

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _model(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def test_trainer_runs_the_techniques(tmp_path):
    model = _model()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    bridge = prepare(model, [{"name": "llrd", "decay": 0.5}, {"name": "child_tuning", "mode": "D", "reserve_p": 0.2},
                             {"name": "rdrop", "alpha": 1.0}, {"name": "ema", "decay": 0.9}],
                     lr=1e-3, weight_decay=0.01, total_steps=8, warmup_steps=1, seed=0)
    lrs = {g["group_name"]: g["initial_lr"] for g in bridge.optimizer.param_groups}
    assert lrs["layer3"] == pytest.approx(1e-3) and lrs["layer1"] == pytest.approx(1e-3 * 0.25)  # 'bert.' prefix
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=8, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0, max_grad_norm=1.0)
    trainer = TechniqueTrainer(model=bridge.model, args=args, train_dataset=Rows(), bridge=bridge,
                               optimizers=(bridge.optimizer, bridge.scheduler), callbacks=[TechniqueCallback(bridge)])
    trainer.train()
    child = bridge.techniques[1]
    assert child.fisher_masks, "the Fisher pass ran at train begin"
    ema = bridge.techniques[3]
    assert ema.updates == 8
    for name, param in model.named_parameters():
        mask = child.fisher_masks.get(id(param))
        if mask is not None:
            # EMA's shadow replaced the weights at the end; masked entries are the pretrained ones in both
            assert torch.equal(param.detach()[mask == 0], pretrained[name][mask == 0]), name
    assert not torch.equal(model.classifier.weight, pretrained["classifier.weight"])


def test_rdrop_changes_the_trainer_loss():
    model = _model()
    model.train()
    bridge = prepare(model, [{"name": "rdrop", "alpha": 10.0}], lr=1e-3, weight_decay=0.0, total_steps=1)
    trainer = TechniqueTrainer(model=model, args=TrainingArguments(output_dir="/tmp/plmtune-hf-test", use_cpu=True,
                                                                   report_to=[]), bridge=bridge)
    batch = {k: torch.stack([Rows()[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}
    torch.manual_seed(0)
    first, second = model(**batch), model(**batch)  # the two dropout passes R-Drop will see
    expected = 0.5 * (first.loss + second.loss) + 10.0 * symmetric_kl(first.logits, second.logits)
    torch.manual_seed(0)
    adjusted = trainer.compute_loss(model, batch)
    assert adjusted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert symmetric_kl(first.logits, second.logits).item() > 0


@pytest.mark.slow
def test_the_example_trainer_script_trains_the_real_model_with_techniques(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO, shared_dataset
    from plmtune.fewshot import make_fewshot

    (data,) = make_fewshot(shared_dataset("sst2"), tmp_path / "few", 16, [13])
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "hf_trainer.py"), "--data", str(data),
                           "--out", str(tmp_path / "run"), "--epochs", "6"], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, last = map(float, re.search(r"training loss first ([0-9.]+) last ([0-9.]+)", proc.stdout).groups())
    assert last < first  # it trains (this technique mix is no better than vanilla on SST-2: BENCHMARKS.md)
    assert 0.0 <= float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1)) <= 1.0
