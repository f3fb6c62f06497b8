"""A plain transformers.Trainer script that uses plmtune's techniques through plmtune.hf.

    python examples/hf_trainer.py --data few/sst2/16-13 --out runs/hf-example

Trains BertForSequenceClassification on the bundled all-MiniLM-L6-v2 with NoisyTune, LLRD,
ChildTuning-D and R-Drop, then prints the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from plmtune.hf import TechniqueCallback, TechniqueTrainer, prepare
    from plmtune.models import resolve_backbone

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    def rows(split):
        return [json.loads(line) for line in (Path(args.data) / f"{split}.jsonl").read_text().splitlines()]

    path = resolve_backbone("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def dataset(split):
        data = rows(split)
        enc = tokenizer([r["text"] for r in data], truncation=True, max_length=128)
        return Dataset.from_dict({**enc, "labels": [r["label"] for r in data]})

    train, test = dataset("train"), dataset("test")
    steps = args.epochs * int(np.ceil(len(train) / 8))
    bridge = prepare(model, ["noisytune", {"name": "llrd", "decay": 0.9},
                             {"name": "child_tuning", "mode": "D", "reserve_p": 0.3}, {"name": "rdrop", "alpha": 1.0}],
                     lr=5e-5, weight_decay=0.01, total_steps=steps, warmup_steps=steps // 10, seed=args.seed)
    training = TrainingArguments(output_dir=args.out, per_device_train_batch_size=8, num_train_epochs=args.epochs,
                                 max_grad_norm=1.0, save_strategy="no", report_to=[], seed=args.seed,
                                 use_cpu=True, disable_tqdm=True, logging_steps=4)
    trainer = TechniqueTrainer(model=bridge.model, args=training, train_dataset=train, bridge=bridge,
                               processing_class=tokenizer, optimizers=(bridge.optimizer, bridge.scheduler),
                               callbacks=[TechniqueCallback(bridge)])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"training loss first {losses[0]:.4f} last {losses[-1]:.4f}")
    predictions = trainer.predict(test)
    accuracy = float((predictions.predictions.argmax(-1) == np.array(test["labels"])).mean())
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
